"""The trainer's sampling levers in one place: which rows a step rolls out (the curriculum's pool, else the epoch
order), dynamic sampling's refills of zero-variance groups, and the pool's update from every graded group.

With neither lever configured this is the plain epoch order and changes nothing. Both are off by default
(``curriculum.enabled``, ``dynamic_sampling.enabled``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from agentrft.evals.metrics import passed
from agentrft.rl.curriculum import CurriculumPool
from agentrft.rl.dynamic_sampling import refill
from agentrft.types import Trajectory


class SamplingLevers:
    def __init__(self, cfg: Any, train_rows: list[Any]):
        self.n_rows = len(train_rows)
        cur = cfg.curriculum
        if cur.enabled and cur.weakness_key and not any(cur.weakness_key in (r.item or {}) for r in train_rows):
            fields = sorted({k for r in train_rows[:50] for k in (r.item or {}) if k not in ("messages", "tools")})
            raise ValueError(f"curriculum.weakness_key: no training row has a field {cur.weakness_key!r} "
                             f"(fields: {', '.join(fields) or 'none'})")
        self.pool = CurriculumPool(train_rows, cur, seed=cfg.hyperparameters.seed) if cur.enabled else None
        self.dynamic = cfg.dynamic_sampling if cfg.dynamic_sampling.enabled else None
        self._taken: set[int] = set()

    def take(self, step: int, cursor: Any, batch: int, seed: int) -> list[int]:
        """The step's rows: the pool's draw, else the next ``batch`` of the epoch order."""
        ids = self.pool.take(step, batch) if self.pool else cursor.take(self.n_rows, batch, seed)
        self._taken = set(ids)
        return ids

    def more_rows(self, step: int, cursor: Any, n: int, seed: int) -> list[int]:
        """Up to ``n`` rows this step has not rolled out yet (dynamic sampling's replacements)."""
        if self.pool:
            ids = self.pool.take(step, n, exclude=self._taken)
        else:
            ids = list(dict.fromkeys(i for i in cursor.take(self.n_rows, n, seed) if i not in self._taken))
        self._taken |= set(ids)
        return ids

    def after_rollouts(self, step: int, trajs: list[Trajectory],
                       draw: Callable[[int, int], list[Trajectory]]) -> tuple[list[Trajectory], dict[str, float]]:
        """Refill zero-variance groups (dynamic sampling), then feed every group to the pool; returns the step's
        trajectories and the levers' metrics."""
        metrics: dict[str, float] = {}
        if self.dynamic:
            trajs, m = refill(trajs, self.dynamic, draw)
            metrics.update(m)
        if self.pool:
            groups: dict[str, list[Trajectory]] = defaultdict(list)
            for t in trajs:
                if not t.dropped and t.reward is not None:
                    groups[t.group_id].append(t)
            for members in groups.values():
                self.pool.observe(step, members[0].row_index, [float(t.reward) for t in members],  # type: ignore[arg-type]
                                  [passed(t) for t in members])
            metrics.update(self.pool.summary(step + 1))
        return trajs, metrics

    def observe_eval(self, rows: list[Any], trajs: list[Trajectory]) -> None:
        """The eval's fail rate per validation row, for the curriculum's weaknesses."""
        if not self.pool or not self.pool.cfg.weakness_key:
            return
        by_row: dict[int, list[bool]] = defaultdict(list)
        for t in trajs:
            if not t.dropped:
                by_row[t.row_index].append(passed(t))
        kept = [r for r in rows if by_row.get(r.index)]
        self.pool.observe_eval(kept, [1.0 - sum(by_row[r.index]) / len(by_row[r.index]) for r in kept])

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": self.pool.state_dict()} if self.pool else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.pool and state.get("curriculum"):
            self.pool.load_state_dict(state["curriculum"])
