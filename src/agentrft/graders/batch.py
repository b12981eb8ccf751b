"""Grading rollouts: the one path training, evaluation and the readiness check use.

``grade_trajectories(trajs, items, grader, holdouts=...)`` grades every trajectory that was not dropped, in place:
``grades[0]`` is the reward grader's verdict (its score becomes ``reward``), then one grade per holdout grader
(recorded, never part of the reward). A reward grade that asks for the rollout to be dropped (an endpoint grader
that never answered, per the Agent RFT contract) drops it instead of scoring it 0.

Graders that wait on I/O (``python`` sandbox, model judges, endpoints, a ``multi`` or ``process`` containing one —
``grader.io_bound``) are run from ``workers`` threads so the sandbox pool and the judge's connections are all
busy; deterministic graders run inline (threads would only add overhead under the GIL). Nothing raises for a bad
sample: each Grade carries its flags.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Mapping

from agentrft.graders.base import Grade, Grader, sample_from_trajectory
from agentrft.types import Trajectory


def grade_trajectory(grader: Grader, traj: Trajectory, item: dict[str, Any],
                     response_format: dict[str, Any] | None = None) -> Grade:
    """One grader on one rollout: OpenAI's sample view plus ``trajectory``, and the rollout's ``trace_id``."""
    return grader.grade(sample_from_trajectory(traj, response_format), item, trace_id=traj.trace_id)


def grade_trajectories(
    trajs: list[Trajectory],
    items: Mapping[int, dict[str, Any]],
    grader: Grader,
    *,
    holdouts: Mapping[str, Grader] | None = None,
    response_format: dict[str, Any] | None = None,
    workers: int = 8,
) -> None:
    """Grade every non-dropped trajectory in place; ``items`` maps a trajectory's ``row_index`` to its dataset
    item (the reference fields graders template against)."""
    holdouts = holdouts or {}
    todo = [t for t in trajs if not t.dropped]
    missing = sorted({t.row_index for t in todo} - set(items))
    if missing:
        raise ValueError(f"grade_trajectories: no item for row(s) {missing[:5]}")

    # a groupwise reward grader (group_judge) scores each group (one group_id) in one call, before the rest
    pre: dict[str, Grade] = _group_grades(todo, items, grader, response_format, workers) \
        if getattr(grader, "groupwise", False) else {}

    def one(t: Trajectory) -> None:
        item = items[t.row_index]
        sample = sample_from_trajectory(t, response_format)
        g = pre[t.trace_id] if t.trace_id in pre else grader.grade(sample, item, trace_id=t.trace_id)
        grades = [g]
        for h in holdouts.values():
            hg = h.grade(sample, item, trace_id=t.trace_id)
            hg.metadata["holdout"] = True
            grades.append(hg)
        t.grades = grades
        if g.metadata.get("drop_rollout"):
            t.outcome = "dropped"
            t.drop_reason = f"grader {g.grader_name!r}: " + str(g.metadata.get("error") or "unresponsive")
            t.reward = None
            return
        t.reward = float(g.score)

    io_bound = any(getattr(x, "io_bound", False) for x in [grader, *holdouts.values()])
    if not io_bound or workers <= 1 or len(todo) <= 1:
        for t in todo:
            one(t)
        return
    ex = cf.ThreadPoolExecutor(max_workers=min(workers, len(todo)), thread_name_prefix="grade")
    try:
        list(ex.map(one, todo))
    except KeyboardInterrupt:  # Ctrl-C: kill the sandboxed graders still running instead of waiting for them
        from agentrft.graders.sandbox import interrupt_all

        ex.shutdown(wait=False, cancel_futures=True)
        interrupt_all()
        raise
    ex.shutdown(wait=True)


def _group_grades(todo: list[Trajectory], items: Mapping[int, dict[str, Any]], grader: Grader,
                  response_format: dict[str, Any] | None, workers: int) -> dict[str, Grade]:
    """``grader.grade_group(samples, item)`` once per group of ``todo`` (by ``group_id``; a trajectory without one
    is its own group), groups in parallel on ``workers`` threads; a group whose call raises gets ``other_error``
    grades, like any grader that throws."""
    import time

    groups: dict[str, list[Trajectory]] = {}
    for t in todo:
        groups.setdefault(t.group_id or t.trace_id, []).append(t)

    def run(members: list[Trajectory]) -> list[Grade]:
        t0 = time.perf_counter()
        item = items[members[0].row_index]
        try:
            grades = list(grader.grade_group([sample_from_trajectory(t, response_format) for t in members], item))
            if len(grades) != len(members):
                raise ValueError(f"{len(grades)} grades for a group of {len(members)}")
        except Exception as e:  # noqa: BLE001 - a grader that throws is a recorded outcome
            grades = [Grade(grader.name, grader.type, grader.version, 0.0, errors={"other_error": True},
                            metadata={"error": f"{type(e).__name__}: {e}"}) for _ in members]
        dt = (time.perf_counter() - t0) / len(members)
        for g in grades:
            g.execution_time_s = g.execution_time_s or dt
        return grades

    out: dict[str, Grade] = {}
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(groups) or 1)), thread_name_prefix="grade") as ex:
        for members, grades in zip(groups.values(), ex.map(run, groups.values())):
            for t, g in zip(members, grades):
                out[t.trace_id] = g
    return out
