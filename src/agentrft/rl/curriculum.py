"""The curriculum: which training rows a step samples, from what recent groups say about each row.

Per row i the pool keeps its last ``window`` groups (pass rate p_g and reward standard deviation σ_g of each):

* pass rate p̂_i = mean of p_g, spread σ̂_i = mean of σ_g over the window;
* headroom u_i = max(4 p̂_i (1 − p̂_i), min(1, 2 σ̂_i)) ∈ [0, 1]: 1 where half the samples pass (or rewards spread
  as far as [0, 1] allows), 0 where every sample scores the same — the groups GRPO cannot learn from. A row never
  sampled has u_i = 1 (unknown is worth a look);
* weakness: with ``weakness_key`` (a row field such as ``task``), f_v = the fail rate of the last eval's rows whose
  field has value v; the row's multiplier is 1 + ``weakness_weight`` · f_{v(i)} (1 where the value was not evaluated);
* sampling weight w_i = (``min_weight`` + (1 − ``min_weight``) · u_i) · multiplier.

Retirement: a row whose last ``retire_after`` groups passed every sample with equal rewards is *solved*, failed
every sample with equal rewards *unsolved* (zero-variance groups either way: no signal for GRPO); either leaves the
pool (weight 0). After ``recheck_every`` steps out it is *due*: due rows are sampled
first (at most a quarter of the batch per step, the longest-retired first) for one check group, and go back to
retirement unless that group shows headroom.

A step's batch: the due rows, then rows drawn without replacement with probability proportional to w_i
(Efraimidis–Spirakis keys u^(1/w) from a generator seeded by (seed, step), so a resumed run draws the same rows),
then — when fewer active rows than the batch remain — retired rows, the longest-unseen first. The pool's state
(each row's window and retirement) is saved in the run's checkpoint and restored with it.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Iterable

SOLVED, UNSOLVED = "solved", "unsolved"


@dataclass
class RowRecord:
    groups: deque = field(default_factory=deque)  # (pass rate, reward std) of its recent groups
    retired: str | None = None  # solved | unsolved
    retired_at: int = 0  # the step it retired (or was last checked while retired)
    last_step: int = 0  # the last step that sampled it
    samples: int = 0  # groups observed


def group_stats(rewards: list[float], passes: list[bool]) -> tuple[float, float]:
    """(pass rate, population std of rewards) of one group."""
    n = len(rewards)
    mean = sum(rewards) / n
    return sum(passes) / n, math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)


def headroom(groups: Iterable[tuple[float, float]]) -> float:
    """u = max(4 p̂ (1 − p̂), min(1, 2 σ̂)); 1 for a row with no groups yet."""
    gs = list(groups)
    if not gs:
        return 1.0
    p = sum(g[0] for g in gs) / len(gs)
    s = sum(g[1] for g in gs) / len(gs)
    return max(4.0 * p * (1.0 - p), min(1.0, 2.0 * s))


class CurriculumPool:
    """The row pool of one run (see the module docstring). ``cfg``: a :class:`agentrft.config.CurriculumConfig`."""

    def __init__(self, rows: list[Any], cfg: Any, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self.n = len(rows)
        self.records: dict[int, RowRecord] = defaultdict(RowRecord)
        self.keys: list[Any] = [self._key(r) for r in rows] if cfg.weakness_key else [None] * self.n
        self.weakness: dict[str, float] = {}  # key value -> fail rate at the last eval

    def _key(self, row: Any) -> Any:
        v = (row.item or {}).get(self.cfg.weakness_key) if hasattr(row, "item") else row.get(self.cfg.weakness_key)
        return None if v is None else str(v)

    # ---- observing -----------------------------------------------------------------------------
    def observe(self, step: int, row: int, rewards: list[float], passes: list[bool]) -> None:
        """One group of row ``row`` at ``step``: updates its window and retirement."""
        if not rewards:
            return
        rec = self.records[row]
        rec.groups.append(group_stats(rewards, passes))
        while len(rec.groups) > self.cfg.window:
            rec.groups.popleft()
        rec.last_step, rec.samples = step, rec.samples + 1
        recent = list(rec.groups)[-self.cfg.retire_after:]
        state = None
        if len(recent) >= self.cfg.retire_after:
            if all(p >= 1.0 and s <= 1e-12 for p, s in recent):
                state = SOLVED
            elif all(p <= 0.0 and s <= 1e-12 for p, s in recent):
                state = UNSOLVED
        if state is not None:
            rec.retired, rec.retired_at = state, step  # a check that showed no headroom restarts the wait
        elif rec.retired is not None and headroom([rec.groups[-1]]) > 0:
            rec.retired = None  # the check found headroom: back in the pool

    def observe_eval(self, rows: list[Any], fail_rates: list[float]) -> None:
        """The last eval's rows and each one's fail rate (1 − pass rate over its samples), by ``weakness_key``."""
        if not self.cfg.weakness_key:
            return
        acc: dict[str, list[float]] = defaultdict(list)
        for r, f in zip(rows, fail_rates):
            k = self._key(r)
            if k is not None:
                acc[k].append(f)
        self.weakness = {k: sum(v) / len(v) for k, v in acc.items()}

    # ---- sampling ------------------------------------------------------------------------------
    def weight(self, row: int) -> float:
        rec = self.records.get(row)
        if rec is not None and rec.retired:
            return 0.0
        u = headroom(rec.groups if rec else ())
        w = self.cfg.min_weight + (1.0 - self.cfg.min_weight) * u
        k = self.keys[row]
        if k is not None and k in self.weakness:
            w *= 1.0 + self.cfg.weakness_weight * self.weakness[k]
        return w

    def due(self, step: int) -> list[int]:
        """Retired rows whose wait is over, the longest-retired first."""
        out = [(r.retired_at, i) for i, r in self.records.items()
               if r.retired and step - r.retired_at >= self.cfg.recheck_every]
        return [i for _, i in sorted(out)]

    def take(self, step: int, batch: int, exclude: Iterable[int] = ()) -> list[int]:
        """``batch`` distinct rows for ``step`` (fewer only when the dataset has fewer rows than asked)."""
        rng = random.Random(self.seed * 1_000_003 + step * 7_919 + 17)
        skip = set(exclude)
        out = [i for i in self.due(step) if i not in skip][: max(1, batch // 4)]
        taken = set(out) | skip
        keyed = []
        for i in range(self.n):
            if i in taken:
                continue
            w = self.weight(i)
            if w > 0:
                keyed.append((rng.random() ** (1.0 / w), i))
        keyed.sort(reverse=True)
        out += [i for _, i in keyed[: batch - len(out)]]
        if len(out) < batch:  # the active pool ran short: retired rows, the longest-unseen first
            rest = sorted((self.records[i].last_step, i) for i in range(self.n)
                          if i not in taken and i not in out and self.records.get(i) and self.records[i].retired)
            out += [i for _, i in rest[: batch - len(out)]]
        return out

    # ---- reporting and state -------------------------------------------------------------------
    def summary(self, step: int | None = None) -> dict[str, float]:
        """The pool at a glance: active / retired solved / retired unsolved / never sampled rows, due checks, the
        mean headroom of the sampled active rows."""
        solved = sum(1 for r in self.records.values() if r.retired == SOLVED)
        unsolved = sum(1 for r in self.records.values() if r.retired == UNSOLVED)
        seen_active = [r for r in self.records.values() if not r.retired and r.samples]
        out = {
            "curriculum/active_rows": float(self.n - solved - unsolved),
            "curriculum/retired_solved": float(solved),
            "curriculum/retired_unsolved": float(unsolved),
            "curriculum/unseen_rows": float(self.n - sum(1 for r in self.records.values() if r.samples)),
            "curriculum/headroom_mean": (sum(headroom(r.groups) for r in seen_active) / len(seen_active)
                                         if seen_active else 1.0),
        }
        if step is not None:
            out["curriculum/due_rows"] = float(len(self.due(step)))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"records": {str(i): {"groups": [list(g) for g in r.groups], "retired": r.retired,
                                     "retired_at": r.retired_at, "last_step": r.last_step, "samples": r.samples}
                            for i, r in self.records.items()},
                "weakness": dict(self.weakness)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.records.clear()
        for i, r in (state.get("records") or {}).items():
            self.records[int(i)] = RowRecord(groups=deque(tuple(g) for g in r["groups"]), retired=r["retired"],
                                             retired_at=r["retired_at"], last_step=r["last_step"],
                                             samples=r["samples"])
        self.weakness = dict(state.get("weakness") or {})


def preview(cfg: Any, trajs: list[Any]) -> dict[str, Any]:
    """What the pool would make of one group per item (``agentrft check``'s samples): items whose samples all
    passed / all failed with equal rewards (retired after ``retire_after`` such groups), items with headroom, the
    mean headroom, and the share of the sampling weight that items with headroom would get."""
    from agentrft.evals.metrics import passed

    groups: dict[int, list[Any]] = defaultdict(list)
    for t in trajs:
        if not t.dropped and t.reward is not None:
            groups[t.row_index].append(t)
    stats = {row: group_stats([float(t.reward) for t in members], [passed(t) for t in members])
             for row, members in groups.items()}
    u = {row: headroom([s]) for row, s in stats.items()}
    w = {row: cfg.min_weight + (1.0 - cfg.min_weight) * h for row, h in u.items()}
    total = sum(w.values())
    return {
        "items": len(stats),
        "all_passed": sum(1 for p, s in stats.values() if p >= 1.0 and s <= 1e-12),
        "all_failed": sum(1 for p, s in stats.values() if p <= 0.0 and s <= 1e-12),
        "with_headroom": sum(1 for h in u.values() if h > 0),
        "headroom_mean": sum(u.values()) / len(u) if u else 0.0,
        "weight_share_with_headroom": (sum(w[r] for r in w if u[r] > 0) / total) if total else 0.0,
        "retire_after": cfg.retire_after,
    }
