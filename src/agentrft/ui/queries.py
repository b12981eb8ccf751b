"""The dashboard's read queries over the run store that ``RunStore`` has no method for: the trajectory browser's
filtered, keyset-paged listing, and one validation item across a run's evals.

Paging is by keyset, never by offset: the listing is ordered by ``(run_id, step, trace_id)`` descending (newest step
first), which walks the index ``ix_traj_run_step_trace``; a page ends with a cursor (the last row's key) and the next
page starts strictly below it. A page costs the same at the first and the thousandth page of 100k trajectories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from sqlalchemy import String, cast, exists, func, select, tuple_
from sqlalchemy.orm import Session

from agentrft.store import RunStore
from agentrft.store.schema import GradeRow, ToolCallRow, TrajectoryRow

OUTCOMES = ("completed", "tool_budget", "max_turns", "context_limit", "dropped")
PAGE_SIZES = (25, 50, 100, 200)
COUNT_CAP = 10_000  # the listing says "more than 10,000 matching" beyond this


class FilterError(ValueError):
    """A malformed filter value; the message names the parameter."""


@dataclass
class TrajFilter:
    run: str | None = None
    step: int | None = None
    split: str | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    outcome: str | None = None
    tool: str | None = None
    grader_error: str | None = None  # "any" or one flag name (e.g. "other_error")
    after: tuple[str, int, str] | None = None  # keyset cursor: (run_id, step, trace_id) of the last row shown
    limit: int = 50
    raw: dict[str, str] = field(default_factory=dict)  # the non-empty parameters as given (for links)

    @classmethod
    def parse(cls, q: Mapping[str, str]) -> "TrajFilter":
        """From query parameters; empty values mean "no filter". Raises :class:`FilterError` naming the bad one."""
        raw = {k: str(v).strip() for k, v in q.items() if str(v).strip() != "" and k != "after"}
        f = cls(raw=raw)
        f.run = raw.get("run")
        f.step = _int(raw, "step")
        f.split = raw.get("split")
        if f.split is not None and not (f.split in ("train", "valid") or f.split.startswith("eval:")):
            raise FilterError(f"split: {f.split!r} is not 'train', 'valid' or 'eval:<name>'")
        f.reward_min, f.reward_max = _float(raw, "reward_min"), _float(raw, "reward_max")
        if f.reward_min is not None and f.reward_max is not None and f.reward_min > f.reward_max:
            raise FilterError(f"reward_min ({f.reward_min}) is above reward_max ({f.reward_max})")
        f.outcome = raw.get("outcome")
        if f.outcome is not None and f.outcome not in OUTCOMES:
            raise FilterError(f"outcome: {f.outcome!r} is not one of {', '.join(OUTCOMES)}")
        f.tool = raw.get("tool")
        f.grader_error = raw.get("grader_error")
        if f.grader_error is not None and not f.grader_error.replace("_", "").isalnum():
            raise FilterError(f"grader_error: {f.grader_error!r} is not 'any' or an error flag name")
        limit = _int(raw, "limit")
        if limit is not None:
            if not 1 <= limit <= max(PAGE_SIZES):
                raise FilterError(f"limit: {limit} is not between 1 and {max(PAGE_SIZES)}")
            f.limit = limit
        after = str(q.get("after") or "").strip()
        if after:
            parts = after.split("|", 2)
            try:
                f.after = (parts[0], int(parts[1]), parts[2])
            except (IndexError, ValueError):
                raise FilterError(f"after: {after!r} is not a page cursor (run|step|trace_id)") from None
        return f


def _int(raw: dict[str, str], key: str) -> int | None:
    if key not in raw:
        return None
    try:
        return int(raw[key])
    except ValueError:
        raise FilterError(f"{key}: {raw[key]!r} is not an integer") from None


def _float(raw: dict[str, str], key: str) -> float | None:
    if key not in raw:
        return None
    try:
        v = float(raw[key])
    except ValueError:
        raise FilterError(f"{key}: {raw[key]!r} is not a number") from None
    if not math.isfinite(v):
        raise FilterError(f"{key}: {raw[key]!r} is not a finite number")
    return v


def _conditions(f: TrajFilter, *, page: bool = False) -> list[Any]:
    """The filter as SQL conditions. ``page``: for the listing, the reward bound is written ``reward + 0`` so that
    SQLite's planner (no statistics) walks the keyset index and stops at the page's last row, instead of taking the
    reward index and sorting every match (10k rows for a 10% band) to return 50; the count keeps the index."""
    T = TrajectoryRow
    reward = (T.reward + 0) if page else T.reward
    conds: list[Any] = []
    if f.run is not None:
        conds.append(T.run_id == f.run)
    if f.step is not None:
        conds.append(T.step == f.step)
    if f.split is not None:
        conds.append(T.split == f.split)
    if f.reward_min is not None:
        conds.append(reward >= f.reward_min)
    if f.reward_max is not None:
        conds.append(reward <= f.reward_max)
    if f.outcome is not None:
        conds.append(T.outcome == f.outcome)
    if f.tool is not None:
        conds.append(exists().where(ToolCallRow.trace_id == T.trace_id, ToolCallRow.name == f.tool))
    if f.grader_error is not None:
        # error flags are stored as the true ones only ({} when none), so "any" is "not the empty object"
        text = cast(GradeRow.errors, String)
        cond = (text.notin_(["{}", ""]) if f.grader_error == "any"
                else text.like(f'%"{f.grader_error.replace("_", chr(92) + "_")}"%', escape=chr(92)))
        conds.append(exists().where(GradeRow.trace_id == T.trace_id, cond))
    return conds


_LIST_COLUMNS = (TrajectoryRow.trace_id, TrajectoryRow.run_id, TrajectoryRow.step, TrajectoryRow.split,
                 TrajectoryRow.row_index, TrajectoryRow.sample_index, TrajectoryRow.outcome, TrajectoryRow.reward,
                 TrajectoryRow.num_turns, TrajectoryRow.num_tool_calls, TrajectoryRow.tool_errors,
                 TrajectoryRow.latency_s, TrajectoryRow.checkpoint_id)


def list_trajectories(store: RunStore, f: TrajFilter, *, count: bool = True) -> dict[str, Any]:
    """One page: ``{"rows", "next" (cursor or None), "total" (matching rows up to COUNT_CAP + 1, None when not
    counted)}``.
    Rows carry the listing's columns plus ``tools`` (distinct tool names called) and ``grader_errors`` (flags)."""
    T = TrajectoryRow
    conds = _conditions(f)
    q = select(*_LIST_COLUMNS).where(*_conditions(f, page=True))
    if f.after is not None:
        q = q.where(tuple_(T.run_id, T.step, T.trace_id) < tuple_(*f.after))
    q = q.order_by(T.run_id.desc(), T.step.desc(), T.trace_id.desc()).limit(f.limit + 1)
    with Session(store.engine) as s, s.begin():
        rows = [dict(r._mapping) for r in s.execute(q)]
        more = len(rows) > f.limit
        rows = rows[: f.limit]
        ids = [r["trace_id"] for r in rows]
        tools: dict[str, list[str]] = {}
        errs: dict[str, set[str]] = {}
        if ids:
            for tid, name in s.execute(select(ToolCallRow.trace_id, ToolCallRow.name)
                                       .where(ToolCallRow.trace_id.in_(ids)).order_by(ToolCallRow.seq)):
                if name not in tools.setdefault(tid, []):
                    tools[tid].append(name)
            for tid, e in s.execute(select(GradeRow.trace_id, GradeRow.errors).where(GradeRow.trace_id.in_(ids))):
                errs.setdefault(tid, set()).update(k for k, v in (e or {}).items() if v)
        total = None
        if count:  # counting stops at COUNT_CAP + 1 matches: a count of all 100k costs more than the page itself
            sub = select(T.trace_id).where(*conds).limit(COUNT_CAP + 1).subquery()
            total = s.scalar(select(func.count()).select_from(sub))
    for r in rows:
        r["tools"] = tools.get(r["trace_id"], [])
        r["grader_errors"] = sorted(errs.get(r["trace_id"], ()))
    last = rows[-1] if rows and more else None
    return {"rows": rows, "next": f"{last['run_id']}|{last['step']}|{last['trace_id']}" if last else None,
            "total": total}


def _whole(store: RunStore, s: Session, where: list[Any], key: Any) -> list[dict]:
    """Trajectory dicts (with tool calls and grades, as ``RunStore.trajectories`` returns them) in one session,
    sorted by ``key`` here: with an ORDER BY on step, SQLite's planner (no statistics) walks the keyset index over the
    whole run to avoid a sort, instead of the (run, split, row) index that finds the few rows."""
    rows = sorted(s.scalars(select(TrajectoryRow).where(*where)), key=key)
    return store._nest(s, rows)  # the store's own row → dict conversion, batched


def item_across_evals(store: RunStore, run_id: str, row_index: int, split: str = "valid") -> dict[int, list[dict]]:
    """``{step: [trajectory dicts with tool_calls and grades]}`` for one dataset row in every eval of the run."""
    T = TrajectoryRow
    with Session(store.engine) as s, s.begin():
        trajs = _whole(store, s, [T.run_id == run_id, T.split == split, T.row_index == row_index],
                       key=lambda r: (r.step, r.sample_index, r.trace_id))
    out: dict[int, list[dict]] = {}
    for t in trajs:
        out.setdefault(t["step"], []).append(t)
    return out


def audit_sample(store: RunStore, run_id: str, *, n: int, steps: list[int] | None = None, seed: int = 0,
                 split: str = "valid") -> dict[int, list[dict]]:
    """The draw of :func:`agentrft.evals.audit.sample_for_audit` (same steps, same seeded indices into the same
    order), reading only the ``n`` drawn trajectories of each step instead of all of them."""
    import random

    T = TrajectoryRow
    if steps is None:
        steps = sorted({c["step"] for c in store.checkpoints(run_id)}) or sorted(
            {m["step"] for m in store.step_metrics(run_id, split=split)})
    out: dict[int, list[dict]] = {}
    with Session(store.engine) as s, s.begin():
        for st in steps:
            ids = list(s.scalars(select(T.trace_id).where(T.run_id == run_id, T.step == st, T.split == split)
                                 .order_by(T.step, T.split, T.row_index, T.sample_index, T.trace_id)))
            pick = sorted(random.Random(seed * 1_000_003 + st).sample(range(len(ids)), min(n, len(ids))))
            chosen = [ids[i] for i in pick]
            got = {t["trace_id"]: t for t in _whole(store, s, [T.trace_id.in_(chosen)], key=lambda r: r.trace_id)}
            out[st] = [got[i] for i in chosen]
    return out


def eval_rows(store: RunStore, run_id: str, split: str = "valid") -> list[int]:
    """The dataset rows evaluated in a run (for the before/after picker)."""
    with Session(store.engine) as s, s.begin():
        q = select(TrajectoryRow.row_index).where(TrajectoryRow.run_id == run_id, TrajectoryRow.split == split)
        q = q.distinct().order_by(TrajectoryRow.row_index)
        return list(s.scalars(q))


def latest_verdicts(store: RunStore, trace_ids: list[str]) -> dict[str, dict]:
    """``{trace_id: the latest audit verdict}`` for these trajectories (audits are few; no join over the run)."""
    from agentrft.store.schema import Audit

    out: dict[str, dict] = {}
    with Session(store.engine) as s, s.begin():
        for i in range(0, len(trace_ids), 500):
            for a in s.scalars(select(Audit).where(Audit.trace_id.in_(trace_ids[i:i + 500])).order_by(Audit.id)):
                out[a.trace_id] = {"verdict": a.verdict, "reviewer": a.reviewer, "note": a.note,
                                   "created_at": a.created_at.isoformat() if a.created_at else ""}
    return out


def alerts_of(step_rows: list[dict]) -> list[dict]:
    """Monitor alerts as recorded with the steps (``metrics["alerts"]``, see agentrft.evals.monitors), flattened."""
    out = []
    for r in step_rows:
        for a in r.get("alerts") or []:
            if isinstance(a, dict):
                out.append({"step": r["step"], "split": r["split"], "signal": a.get("signal", "?"),
                            "message": a.get("message", ""), "value": a.get("value")})
    return out


