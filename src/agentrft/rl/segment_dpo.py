"""Preference optimisation over multi-step segments: DPO on the turns where two trajectories of a group part ways.

Pairs. In one task's group, trajectories c and r with rewards r_c − r_r ≥ ``min_reward_gap`` that took their first
k turns identically (same calls, arguments and observations: :func:`agentrft.rl.turn_keys.shared_prefix`) and
differ at turn k form the pair p = (c, r, k). Their segments σ_c, σ_r are turns k .. k + L − 1 (L =
``segment_turns``, default: to the end); the shared prefix is context, not preference. A pair where one trajectory
has no turn k (it ended inside the shared prefix) has an empty segment and is not used. Each group keeps at most
``max_pairs_per_group`` pairs: the longest shared prefix first (the most specific credit), then the largest gap.

Loss. With log π(σ) = Σ_{t∈σ} ℓ_t over the segment's sampled tokens and the sampling policy π° (the weights that
sampled this step, log-probs ℓ°_t recorded per token) as the reference,

    h_p = β · [ Σ_{t∈σ_c} (ℓ_t − ℓ°_t) − Σ_{t∈σ_r} (ℓ_t − ℓ°_t) ]
    L_DPO = (1/P) Σ_p −log σ(h_p),       ∇L_DPO = −(β/P) Σ_p σ(−h_p) · [ Σ_{σ_c} ∇ℓ_t − Σ_{σ_r} ∇ℓ_t ]

At the sampling point (ℓ = ℓ°: every pair's first update) h_p = 0 and σ(−h_p) = 1/2. The learner minimises the
token-level clipped surrogate L = −(1/N) Σ_t m_t min(ρ_t A_t, clip(ρ_t) A_t) over the step's N sampled tokens
(:mod:`agentrft.rl.loss`), whose gradient at ρ = 1 is −(1/N) Σ_t m_t A_t ∇ℓ_t. So per-token advantages

    A^DPO_t = Σ_{p : t ∈ σ_c(p)} (β/2)(N/P)  −  Σ_{p : t ∈ σ_r(p)} (β/2)(N/P)

make that gradient exactly ∇L_DPO at h = 0. Past the first update the clip bounds how far a pair's segment
log-ratio moves (a trust region in place of the sigmoid's saturation).

``loss: segment_dpo`` trains on A^DPO alone (only the pairs' trajectories); ``loss: mixed`` on
A_t = A^GRPO_t + λ · A^DPO_t (λ = ``segment_dpo.mix_coef``) over every trajectory GRPO trains.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from agentrft.rl.turn_keys import shared_prefix
from agentrft.types import Trajectory


@dataclass(frozen=True)
class SegmentPair:
    chosen: Trajectory
    rejected: Trajectory
    turn: int  # the divergence turn k (= the shared prefix's length)

    @property
    def gap(self) -> float:
        return float(self.chosen.reward or 0.0) - float(self.rejected.reward or 0.0)


def segment_pairs(trajs: list[Trajectory], *, min_reward_gap: float = 0.1,
                  max_pairs_per_group: int = 8) -> list[SegmentPair]:
    """Every group's pairs, ``max_pairs_per_group`` at most each (see the module docstring)."""
    groups: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if not t.dropped and t.reward is not None:
            groups[t.group_id].append(t)
    out: list[SegmentPair] = []
    for members in groups.values():
        members = sorted(members, key=lambda t: (t.sample_index, t.trace_id))
        cands: list[SegmentPair] = []
        for a in members:
            for b in members:
                if float(a.reward) - float(b.reward) < min_reward_gap - 1e-12:  # type: ignore[arg-type]
                    continue
                k = shared_prefix(a, b)
                if k < len(a.turns) and k < len(b.turns):
                    cands.append(SegmentPair(a, b, k))
        cands.sort(key=lambda p: (-p.turn, -p.gap))  # stable: ties keep sample order
        out += cands[:max_pairs_per_group]
    return out


def _segment_span(traj: Trajectory, turn: int, segment_turns: int | None) -> range:
    last = len(traj.turns) if segment_turns is None else min(len(traj.turns), turn + segment_turns)
    return range(traj.turns[turn].start, traj.turns[last - 1].end)


def dpo_token_advantages(pairs: list[SegmentPair], n_tokens: float, *, beta: float,
                         segment_turns: int | None = None) -> dict[str, list[float]]:
    """A^DPO per token for every trajectory in a pair, by trace id (``n_tokens``: N, the sampled tokens of the
    step's trained trajectories)."""
    out: dict[str, list[float]] = {}
    if not pairs:
        return out
    w = 0.5 * beta * n_tokens / len(pairs)
    for p in pairs:
        for traj, sign in ((p.chosen, 1.0), (p.rejected, -1.0)):
            adv = out.setdefault(traj.trace_id, [0.0] * len(traj.token_ids))
            for i in _segment_span(traj, p.turn, segment_turns):
                adv[i] += sign * w * traj.loss_mask[i]
    return out


def combine(grpo_advs: dict[str, list[float]], trajs_by_id: dict[str, Trajectory], pairs: list[SegmentPair], *,
            mode: str, beta: float, mix_coef: float = 1.0, segment_turns: int | None = None
            ) -> dict[str, list[float]]:
    """The per-token advantages the learner trains on, by trace id: ``segment_dpo`` — A^DPO over the pairs'
    trajectories; ``mixed`` — A^GRPO + λ·A^DPO over the GRPO-trained ones and the pairs'."""
    if mode not in ("segment_dpo", "mixed"):
        raise ValueError(f"unknown segment-DPO mode {mode!r} (segment_dpo, mixed)")
    ids = {p.chosen.trace_id for p in pairs} | {p.rejected.trace_id for p in pairs}
    if mode == "mixed":
        ids |= set(grpo_advs)
    n_tokens = float(sum(sum(trajs_by_id[i].loss_mask) for i in ids)) or 1.0
    dpo = dpo_token_advantages(pairs, n_tokens, beta=beta, segment_turns=segment_turns)
    out: dict[str, list[float]] = {}
    for tid in ids:
        n = len(trajs_by_id[tid].token_ids)
        d = dpo.get(tid, [0.0] * n)
        if mode == "segment_dpo":
            out[tid] = d
        else:
            g = grpo_advs.get(tid, [0.0] * n)
            out[tid] = [a + mix_coef * b for a, b in zip(g, d)]
    return out
