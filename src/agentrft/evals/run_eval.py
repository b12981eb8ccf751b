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


def run_eval(cfg: RunConfig, *, model: str, data: str | Path, samples: int | None = None, console: Any = None,
             progress: bool = True) -> tuple[str, dict[str, Any]]:
    session = EvalSession(cfg, model)
    try:
        rows = load_dataset(data, known_tools=session.router.names or None)
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
