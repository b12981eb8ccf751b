"""Group-relative advantages (GRPO family).

For one task, G rollouts get rewards r_1..r_G (dropped rollouts are excluded before this point). With
mean r̄ and standard deviation σ over the group:

* ``grpo``    A_i = (r_i − r̄) / (σ + ε)                                  (Shao et al., DeepSeekMath)
* ``dr_grpo`` A_i = r_i − r̄                     no std division: avoids up-weighting near-uniform groups
* ``rloo``    A_i = r_i − (Σ_{j≠i} r_j) / (G − 1) = G/(G−1) · (r_i − r̄)   leave-one-out baseline
* ``gigpo``   the ``grpo`` episode advantage, plus step-level credit per turn (:mod:`agentrft.rl.step_credit`)

A group whose rewards are all equal (σ = 0) carries no learning signal under any of them; it is counted
(``zero_variance``) and skipped rather than trained on with zero advantages.

An estimator of your own: ``hyperparameters.advantage: module:function`` with the signature of the three
above, ``f(rewards) -> advantages`` for a group that has variance (docs/extending.md).

Turn-level credit: a process grader may give per-turn scores s_{i,k}. Those become per-turn advantages
``coef · (s_{i,k} − mean over the group's turns)``, added to the outcome advantage of the tokens of turn k.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable

from agentrft.refs import builtin_or_reference
from agentrft.types import Trajectory

EPS = 1e-6


def _grpo(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    return [(r - mean) / (std + EPS) for r in rewards]


def _dr_grpo(rewards: list[float]) -> list[float]:
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def _rloo(rewards: list[float]) -> list[float]:
    total, g = sum(rewards), len(rewards)
    return [r - (total - r) / (g - 1) for r in rewards]


# gigpo: the episode advantage is grpo's; the step-level part is added per turn (agentrft.rl.step_credit)
ESTIMATORS: dict[str, Callable[[list[float]], list[float]]] = {"grpo": _grpo, "dr_grpo": _dr_grpo, "rloo": _rloo,
                                                               "gigpo": _grpo}


def estimator(kind: str) -> Callable[[list[float]], list[float]]:
    """The estimator ``hyperparameters.advantage`` names: a built-in or ``module:function``."""
    return builtin_or_reference(kind, ESTIMATORS, "hyperparameters.advantage", "advantage estimator")


def group_advantages(rewards: list[float], kind: str | Callable[[list[float]], list[float]]) -> list[float] | None:
    """Advantages for one group, or None when the group has zero variance (or fewer than 2 members)."""
    g = len(rewards)
    if g < 2:
        return None
    mean = sum(rewards) / g
    var = sum((r - mean) ** 2 for r in rewards) / g
    if var <= 1e-12:
        return None
    fn = estimator(kind) if isinstance(kind, str) else kind
    out = [float(a) for a in fn(list(rewards))]
    if len(out) != g:
        raise ValueError(f"advantage estimator returned {len(out)} advantages for a group of {g}")
    return out


def assign_advantages(trajs: list[Trajectory], kind: str | Callable[[list[float]], list[float]]) -> dict[str, int]:
    """Set ``traj.advantage`` for every trajectory of a non-degenerate group; others get None.

    Returns counts: groups, zero_variance groups, trained trajectories.
    """
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        t.advantage = None
        if not t.dropped and t.reward is not None:
            groups[t.group_id].append(t)
    fn = estimator(kind) if isinstance(kind, str) else kind
    zero = 0
    trained = 0
    for members in groups.values():
        adv = group_advantages([float(t.reward) for t in members], fn)  # type: ignore[arg-type]
        if adv is None:
            zero += 1
            continue
        for t, a in zip(members, adv):
            t.advantage = a
            trained += 1
    return {"groups": len(groups), "zero_variance_groups": zero, "trained_trajectories": trained}


def token_advantages(traj: Trajectory, turn_coef: float = 0.0, turn_baseline: float = 0.0) -> list[float]:
    """Per-token advantages over ``traj.token_ids``: the outcome advantage on sampled tokens, plus per-turn
    process credit ``turn_coef · (s_k − turn_baseline)`` on the tokens of turn k when a grade has turn scores."""
    a = float(traj.advantage or 0.0)
    out = [a * m for m in traj.loss_mask]
    if turn_coef:
        scores = next((g.turn_scores for g in traj.grades if g.turn_scores), None)
        if scores:
            for turn, s in zip(traj.turns, scores):
                for i in range(turn.start, turn.end):
                    out[i] += turn_coef * (s - turn_baseline)
    return out


def turn_baselines(trajs: list[Trajectory]) -> dict[str, float]:
    """Mean per-turn process score over each group's turns (the baseline for turn-level credit)."""
    sums: dict[str, list[float]] = defaultdict(list)
    for t in trajs:
        scores = next((g.turn_scores for g in t.grades if g.turn_scores), None)
        if scores:
            sums[t.group_id].extend(scores)
    return {k: sum(v) / len(v) for k, v in sums.items() if v}
