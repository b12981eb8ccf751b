"""Grading trajectories and evaluating a policy on a dataset (used by training evals and ``agentrft eval``)."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Callable

from agentrft.evals.metrics import agent_metrics
from agentrft.graders.base import Grader, sample_from_trajectory
from agentrft.policy.sampler import SamplingParams
from agentrft.rollout.agent import AgentLoop, RolloutTask
from agentrft.types import Trajectory


def grade_trajectories(
    trajs: list[Trajectory],
    rows: dict[int, Any],
    grader: Grader,
    *,
    holdouts: dict[str, Grader] | None = None,
    response_format: dict[str, Any] | None = None,
    workers: int = 8,
) -> None:
    """Grade every non-dropped trajectory in place: ``grades[0]`` is the reward grader's verdict (its score is
    the reward), then one grade per holdout grader (never part of the reward). Graders run on threads because
    model, endpoint and sandboxed graders wait on I/O."""
    holdouts = holdouts or {}

    def one(t: Trajectory) -> None:
        item = rows[t.row_index].item
        sample = sample_from_trajectory(t, response_format)
        g = grader.grade(sample, item, trace_id=t.trace_id)
        grades = [g]
        for name, h in holdouts.items():
            hg = h.grade(sample, item, trace_id=t.trace_id)
            hg.metadata["holdout"] = True
            grades.append(hg)
        t.grades = grades
        if g.metadata.get("drop_rollout"):  # e.g. an endpoint grader that never answered: contract says drop
            t.outcome = "dropped"
            t.drop_reason = f"grader {g.grader_name!r}: " + str(g.metadata.get("error") or "unresponsive")
            t.reward = None
            return
        t.reward = float(g.score)

    todo = [t for t in trajs if not t.dropped]
    if workers <= 1 or len(todo) <= 1:
        for t in todo:
            one(t)
        return
    with cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grade") as ex:
        list(ex.map(one, todo))


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
    grade_trajectories(trajs, {r.index: r for r in rows}, grader, holdouts=holdouts, response_format=response_format)
    return trajs, agent_metrics(trajs)


def eval_seed(seed: int, row: int, sample: int) -> int:
    return (seed * 1_000_003 + row * 7919 + sample * 104_729 + 17) % (2**62)
