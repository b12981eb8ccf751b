"""Truncated importance sampling for off-policy batches (``rollout.tis_cap: C``), as a rewrite of the batch.

Per sampled token t: ``ℓᵇ_t`` the behaviour log-prob (recorded by the sampler, possibly several updates old, possibly
another engine's numerics), ``ℓᵖ_t`` the learner's log-prob before this step's update (the *proximal* policy,
recomputed by the async-safety monitor's forward), ``ℓ_t`` the current one (with gradient), ``A_t`` the advantage.
The decoupled clipped objective with truncated importance weights is

    w_t = min(exp(ℓᵖ_t − ℓᵇ_t), C)                       (no gradient)
    ρ_t = exp(ℓ_t − ℓᵖ_t)
    L_t = −w_t · min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)

The clip now bounds how far *this update* moves from the proximal policy (trust region around weights we have),
while ``w_t`` corrects for the tokens having been drawn from the behaviour policy, truncated at C so a token the
sampler found unlikely but the learner likes cannot dominate the step (bias traded for bounded variance).

Because ``w_t ≥ 0``, ``w_t · min(ρA, clip(ρ)A) = min(ρ (w_t A), clip(ρ) (w_t A))``: the objective is exactly the
learner's ordinary token loss (agentrft.rl.loss) run on the same tokens with ``ℓᵖ`` as the "old" log-probs and
``w_t A_t`` as the advantages. :func:`decoupled_batch` makes that rewrite (copies; the recorded trajectories keep the
sampler's log-probs), so neither the loss nor the learner changes. Exact for the token-level loss only (the config
refuses ``tis_cap`` with ``loss: sequence``, whose ratio is per sequence).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def tis_weights(behaviour: list[float], proximal: list[float], mask: list[int], cap: float) -> list[float]:
    """``w_t = min(exp(ℓᵖ_t − ℓᵇ_t), cap)`` on sampled tokens (``mask`` 1), 1.0 elsewhere (unused there)."""
    return [min(math.exp(p - b), cap) if m else 1.0 for b, p, m in zip(behaviour, proximal, mask)]


def decoupled_batch(trajs: list[Any], token_advs: list[list[float]], proximal: dict[str, list[float]],
                    cap: float) -> tuple[list[Any], list[list[float]], dict[str, float]]:
    """``(trajectories with ℓᵖ as their log-probs, advantages w·A, stats)`` for :meth:`Learner.rl_step`.
    ``proximal``: trace id → the learner's log-prob of each token before the update (aligned with ``token_ids``).
    Stats: ``tis_weight_mean`` and ``tis_truncated_fraction`` over sampled tokens."""
    out_t, out_a = [], []
    n = s = cut = 0.0
    for t, adv in zip(trajs, token_advs):
        prox = proximal.get(t.trace_id, t.logprobs)  # no sampled tokens (never scored): nothing to weight
        w = tis_weights(t.logprobs, prox, t.loss_mask, cap)
        out_t.append(dataclasses.replace(t, logprobs=[p if m else lp for p, lp, m in zip(prox, t.logprobs,
                                                                                     t.loss_mask)]))
        out_a.append([a * wi for a, wi in zip(adv, w)])
        for b, p, wi, m in zip(t.logprobs, prox, w, t.loss_mask):
            if m:
                n += 1
                s += wi
                cut += float(math.exp(p - b) > cap)
    return out_t, out_a, {"tis_weight_mean": s / n if n else 1.0, "tis_truncated_fraction": cut / n if n else 0.0}


__all__ = ["decoupled_batch", "tis_weights"]
