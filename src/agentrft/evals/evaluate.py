"""Evaluating a policy on a dataset: rollouts with paired seeds, graded by the one grading path (training's evals,
``agentrft eval``, ``compare``, ``check``)."""

from __future__ import annotations

from typing import Any, Callable

from agentrft.evals.metrics import agent_metrics
from agentrft.graders.base import Grader
from agentrft.graders.batch import grade_trajectories
from agentrft.policy.sampler import SamplingParams
from agentrft.rollout.agent import AgentLoop, RolloutTask
from agentrft.types import Trajectory


def evaluate(
    loop: AgentLoop,
    rows: list[Any],
    grader: Grader,
    *,
    samples: int,
    params: SamplingParams,
    seed: int,
    split: str = "valid",
    holdouts: dict[str, Grader] | None = None,
    response_format: dict[str, Any] | None = None,
    data_dir: str | None = None,
    on_done: Callable[[Trajectory], None] | None = None,
) -> tuple[list[Trajectory], dict[str, Any]]:
    """Roll out ``samples`` trajectories per row and grade them. Seeds depend only on (seed, row, sample), so
    two checkpoints evaluated with the same seed face the same randomness (paired comparison)."""
    tasks = [
        RolloutTask(
            row=r,
            seed=eval_seed(seed, r.index, k),
            split=split,
            group_id=f"{split}-{r.index}",
            sample_index=k,
            data_dir=data_dir,
        )
        for r in rows
        for k in range(samples)
    ]
    trajs = loop.run(tasks, params, on_done=on_done)
    grade_trajectories(trajs, {r.index: r.item for r in rows}, grader, holdouts=holdouts,
                       response_format=response_format)
    return trajs, agent_metrics(trajs)


def eval_seed(seed: int, row: int, sample: int) -> int:
    return (seed * 1_000_003 + row * 7919 + sample * 104_729 + 17) % (2**62)
