"""``agentrft eval``: evaluate one model (baseline or checkpoint) on one dataset with a run config's tools and
grader, record everything in the store as an eval run, and return the agent metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrft.config import RunConfig
from agentrft.data import load_dataset
from agentrft.evals.evaluate import evaluate
from agentrft.graders.base import build_grader
from agentrft.heap import long_lived_objects_frozen
from agentrft.policy.learner import load_model_and_tokenizer
from agentrft.policy.sampler import SamplingParams, TransformersSampler
from agentrft.progress import TrainProgress
from agentrft.rollout.agent import AgentLoop, RolloutLimits
from agentrft.rollout.render import ChatRenderer
from agentrft.store import RunStore
from agentrft.tools.router import build_router


class EvalSession:
    """A loaded model + tools + grader, reusable across datasets (``compare`` evaluates many)."""

    def __init__(self, cfg: RunConfig, model: str):
        hp = cfg.hyperparameters
        self.cfg = cfg
        self.router = build_router(cfg.tools, timeout_s=hp.tool_timeout_s, max_workers=hp.tool_workers,
                                   approval=cfg.approval.policy)
        self.grader = build_grader(cfg.grader)
        self.holdouts = {n: build_grader({"name": n, **s}) for n, s in cfg.holdout_graders.items()}
        path = cfg.path(model)
        self.model_ref = str(path) if path is not None and path.exists() else model
        self.model, self.tokenizer = load_model_and_tokenizer(self.model_ref)
        self.renderer = ChatRenderer(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.renderer.eos_id
        self.sampler = TransformersSampler(self.model, stop_ids=self.renderer.stop_ids, pad_id=pad)
        self.loop = AgentLoop(self.sampler, self.renderer, self.router,
                              limits=RolloutLimits(hp.max_turns, hp.max_episode_steps, hp.max_context_tokens),
                              max_batch=hp.max_batch_trajectories, checkpoint_id=self.model_ref)
        self.params = SamplingParams(hp.eval_temperature or hp.temperature, hp.top_p, hp.max_new_tokens)

    def evaluate(self, rows: list[Any], *, samples: int, split: str, data_dir: str, progress: bool = True,
                 console: Any = None):
        with long_lived_objects_frozen(), TrainProgress(0, enabled=progress, console=console) as prog:
            prog.start_rollouts(len(rows) * samples, f"eval {split}")
            return evaluate(self.loop, rows, self.grader, samples=samples, params=self.params,
                            seed=self.cfg.hyperparameters.seed, split=split, holdouts=self.holdouts,
                            response_format=self.cfg.response_format, data_dir=data_dir, on_done=prog.rollout_done)

    def close(self) -> None:
        self.router.close()


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
