"""DAPO-style dynamic sampling (Yu et al., 2025): a group whose rewards are all equal gives GRPO no gradient, so
the step replaces it with a group of a new row, within a budget.

With B = ``batch_size`` groups rolled out and Z of them zero-variance, a round draws n = min(Z_left, budget_left)
new rows (``draw(n, round)`` rolls out and grades their groups), Z_left becomes the count still missing (new
zero-variance groups do not count as replacements), and rounds stop when Z_left = 0, the budget
(``max_extra_groups`` groups per step) is spent, or after ``max_rounds``. The step never trains on more than B
groups with signal, and every rollout, replaced or not, is recorded; the extra trajectories are counted so that
comparisons can be made at an equal number of trajectories.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from agentrft.types import Trajectory


def signal_groups(trajs: list[Trajectory]) -> tuple[int, int]:
    """(groups, groups whose kept, graded rewards are not all equal and number ≥ 2)."""
    rewards: dict[str, list[float]] = defaultdict(list)
    seen: set[str] = set()
    for t in trajs:
        seen.add(t.group_id)
        if not t.dropped and t.reward is not None:
            rewards[t.group_id].append(float(t.reward))
    n_sig = sum(1 for rs in rewards.values() if len(rs) >= 2 and max(rs) - min(rs) > 1e-12)
    return len(seen), n_sig


def refill(trajs: list[Trajectory], cfg: Any, draw: Callable[[int, int], list[Trajectory]]
           ) -> tuple[list[Trajectory], dict[str, float]]:
    """The step's trajectories with zero-variance groups replaced as far as the budget allows, and counts:
    extra groups and trajectories rolled out, rounds, groups with signal at the end."""
    groups, with_signal = signal_groups(trajs)
    missing = groups - with_signal
    budget, extra_groups, extra_trajs, rounds = cfg.max_extra_groups, 0, 0, 0
    out = list(trajs)
    while missing > 0 and budget > 0 and rounds < cfg.max_rounds:
        n = min(missing, budget)
        new = draw(n, rounds)
        rounds += 1
        if not new:
            break  # no rows left to draw
        g, s = signal_groups(new)
        out += new
        extra_groups += g
        extra_trajs += len(new)
        budget -= g
        missing -= s
    _, with_signal = signal_groups(out)
    return out, {"dynamic_sampling/extra_groups": float(extra_groups),
                 "dynamic_sampling/extra_trajectories": float(extra_trajs),
                 "dynamic_sampling/rounds": float(rounds),
                 "dynamic_sampling/signal_groups": float(with_signal)}
