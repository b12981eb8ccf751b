"""Grading many rollouts at once: what the training loop calls once per step.

``grade_trajectories(grader, trajectories, items)`` returns one :class:`~agentrft.types.Grade` per trajectory,
in order. Graders that wait on I/O (``python`` sandbox, model judges, endpoints, a ``multi`` or ``process``
containing one — ``grader.io_bound``) are run from ``max_workers`` threads (default 8), so the sandbox pool's
workers and the judge's connections are all busy; deterministic graders run inline (threads would only add
overhead under the GIL). Like ``Grader.grade``, nothing raises for a bad sample: each Grade carries its flags.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Sequence

from agentrft.graders.base import Grade, Grader, sample_from_trajectory
from agentrft.types import Trajectory


def grade_trajectory(grader: Grader, traj: Trajectory, item: dict[str, Any],
                     response_format: dict[str, Any] | None = None) -> Grade:
    """Grade one rollout: OpenAI's sample view plus ``trajectory``, and the rollout's ``trace_id``."""
    return grader.grade(sample_from_trajectory(traj, response_format), item, trace_id=traj.trace_id)


def grade_trajectories(grader: Grader, trajectories: Sequence[Trajectory], items: Sequence[dict[str, Any]],
                       response_format: dict[str, Any] | None = None, max_workers: int = 8) -> list[Grade]:
    if len(trajectories) != len(items):
        raise ValueError(f"grade_trajectories: {len(trajectories)} trajectories but {len(items)} items")
    if not getattr(grader, "io_bound", False) or max_workers <= 1 or len(trajectories) <= 1:
        return [grade_trajectory(grader, t, it, response_format) for t, it in zip(trajectories, items)]
    with cf.ThreadPoolExecutor(min(max_workers, len(trajectories))) as ex:
        return list(ex.map(lambda p: grade_trajectory(grader, p[0], p[1], response_format), zip(trajectories, items)))
