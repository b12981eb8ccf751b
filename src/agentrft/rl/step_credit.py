"""Step-level credit in the manner of GiGPO (Feng et al., 2025, "Group-in-Group Policy Optimization"):
within one task's group, turns that act from the same state are compared with each other.

Notation, for the group of one task: trajectory i has turns k = 0..T_i − 1 and outcome reward r_i; turn k acts from
state s_{i,k} (:func:`agentrft.rl.turn_keys.state_keys`: the initial prompt for k = 0, then the previous turn's
tool calls with their observations, or the whole history of them).

* Discounted step return:  R_{i,k} = γ^(T_i − 1 − k) · r_i  (outcome reward only; with γ < 1 a turn that reaches
  the same reward in fewer remaining turns is worth more).
* Step group of a state s:  S(s) = {(i, k) : s_{i,k} = s}, across the group's trajectories (a state a trajectory
  revisits counts each time).
* Step advantage:  A^S_{i,k} = (R_{i,k} − mean_{S(s)} R) / (std_{S(s)} R + ε)   (normalize: std; population std)
                   A^S_{i,k} =  R_{i,k} − mean_{S(s)} R                      (normalize: none)
  and 0 where S(s) has one member or zero variance.
* Combined per-token advantage for a token of turn k:  A_t = A^E_i + ω · A^S_{i,k}, with A^E_i the episode
  (group) advantage (``grpo``) and ω = ``gigpo.step_coef``.

Groups whose rewards are all equal stay skipped as in plain GRPO (the trainer trains only trajectories with an
episode advantage), so step credit refines the credit inside groups that carry signal.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from agentrft.rl.turn_keys import state_keys
from agentrft.types import Trajectory

EPS = 1e-6


def step_returns(traj: Trajectory, gamma: float) -> list[float]:
    """R_k = γ^(T − 1 − k) · r for each turn k."""
    r, n = float(traj.reward or 0.0), len(traj.turns)
    return [gamma ** (n - 1 - k) * r for k in range(n)]


def step_advantages(trajs: list[Trajectory], *, gamma: float = 0.95, state: str = "last",
                    normalize: str = "std") -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-turn step advantages A^S for every graded, kept trajectory, by trace id; and statistics: step groups,
    step groups with a signal (≥ 2 members and non-zero variance), mean step-group size."""
    if normalize not in ("std", "none"):
        raise ValueError(f"unknown step-advantage normalisation {normalize!r} (std, none)")
    by_group: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if not t.dropped and t.reward is not None:
            by_group[t.group_id].append(t)
    out: dict[str, list[float]] = {}
    n_groups = n_signal = members = 0
    for group in by_group.values():
        cells: dict[Any, list[tuple[str, int, float]]] = defaultdict(list)
        for t in group:
            out[t.trace_id] = [0.0] * len(t.turns)
            for k, (s, ret) in enumerate(zip(state_keys(t, state), step_returns(t, gamma))):
                cells[s].append((t.trace_id, k, ret))
        for cell in cells.values():
            n_groups += 1
            members += len(cell)
            if len(cell) < 2:
                continue
            mean = sum(r for _, _, r in cell) / len(cell)
            std = math.sqrt(sum((r - mean) ** 2 for _, _, r in cell) / len(cell))
            if std <= 1e-9:
                continue
            n_signal += 1
            for tid, k, r in cell:
                out[tid][k] = (r - mean) / (std + EPS) if normalize == "std" else r - mean
    stats = {"step_groups": float(n_groups), "step_groups_with_signal": float(n_signal),
             "step_group_size_mean": members / n_groups if n_groups else 0.0}
    return out, stats


def add_step_credit(token_advs: list[float], traj: Trajectory, turn_advs: list[float], coef: float) -> list[float]:
    """``token_advs`` plus ω · A^S_{i,k} on the sampled tokens of each turn k (a new list)."""
    out = list(token_advs)
    for turn, a in zip(traj.turns, turn_advs):
        if a:
            for i in range(turn.start, min(turn.end, len(out))):
                out[i] += coef * a * traj.loss_mask[i]
    return out
