"""``agentrft eval``: evaluate one model (baseline or checkpoint) on one dataset with a run config's tools and
grader, record everything in the store as an eval run, and return the agent metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrft.config import RunConfig
from agentrft.data import load_dataset
from agentrft.evals.evaluate import evaluate
from agentrft.heap import long_lived_objects_frozen
from agentrft.progress import TrainProgress
from agentrft.rollout.stack import RolloutStack
from agentrft.store import RunStore


class EvalSession:
    """A loaded model + tools + grader, reusable across datasets (``compare`` evaluates many)."""

    def __init__(self, cfg: RunConfig, model: str):
        self.cfg = cfg
        self.stack = RolloutStack.for_model(cfg, model)
        self.router, self.grader, self.holdouts = self.stack.router, self.stack.grader, self.stack.holdouts
        self.model_ref = self.stack.policy.ref  # type: ignore[union-attr]
        self.loop, self.params = self.stack.loop, self.stack.eval_params

    def evaluate(self, rows: list[Any], *, samples: int, split: str, data_dir: str, progress: bool = True,
                 console: Any = None):
        with long_lived_objects_frozen(), TrainProgress(0, enabled=progress, console=console) as prog:
            prog.start_rollouts(len(rows) * samples, f"eval {split}")
            return evaluate(self.loop, rows, self.grader, samples=samples, params=self.params,
                            seed=self.cfg.hyperparameters.seed, split=split, holdouts=self.holdouts,
                            response_format=self.cfg.response_format, data_dir=data_dir, on_done=prog.rollout_done)

    def close(self) -> None:
        self.stack.close()


def resolve_eval_model(cfg: RunConfig, model: str) -> str:
    """What ``eval --model`` names: ``baseline`` (the config's model), a path, a run of the config's store (``RUN``
    = its best checkpoint, ``RUN:best|latest|step-N``), or else a HF id as given. A run that has no such checkpoint
    is a ModelLoadError naming what it has."""
    from agentrft.evals.compare import find_checkpoint
    from agentrft.rollout.stack import ModelLoadError
    from agentrft.store import StoreError

    path = cfg.path(model)
    if model == "baseline":
        return cfg.model_path
    if path is not None and path.exists():
        return model
    run, _, which = model.partition(":")
    try:
        store = RunStore(cfg.store_url, mode="read")
    except StoreError:
        return model  # no store yet: not a run reference
    try:
        info = store.get_run(run)
        if info is None:
            return model
        try:
            return find_checkpoint(store, info["id"], which or "best")["path"]
        except ValueError as e:
            raise ModelLoadError(f"--model {model!r}: {e}") from None
    finally:
        store.close()


def run_eval(cfg: RunConfig, *, model: str, data: str | Path, samples: int | None = None, console: Any = None,
             progress: bool = True, max_rows: int | None = None) -> tuple[str, dict[str, Any]]:
    """Evaluate ``model`` on the first ``max_rows`` rows of ``data`` (default ``eval_rows``, else all)."""
    session = EvalSession(cfg, resolve_eval_model(cfg, model))
    try:
        rows = load_dataset(data, known_tools=session.router.names or None)
        limit = max_rows or cfg.hyperparameters.eval_rows
        rows = rows[:limit] if limit else rows
        n = samples or cfg.hyperparameters.eval_samples
        split = f"eval:{Path(data).stem}"
        trajs, metrics = session.evaluate(list(rows), samples=n, split=split, data_dir=str(Path(data).parent),
                                          progress=progress, console=console)
        store = RunStore(cfg.store_url)
        run_id = store.create_run(f"eval {Path(session.model_ref).name} on {Path(data).name}", cfg.model_dump(),
                                  base_model=session.model_ref, output_dir=str(cfg.output_path))
        store.set_status(run_id, "running")
        store.record_step(run_id, 0, split, metrics, trajs)
        store.set_status(run_id, "succeeded")
    finally:
        session.close()
    return run_id, metrics
