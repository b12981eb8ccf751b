"""An advantage estimator and a policy loss of your own, named in ``hyperparameters``::

    hyperparameters: {advantage: "my_rl:rank_advantages", loss: "my_rl:reinforce"}

An estimator maps one group's rewards (a group with variance: zero-variance groups are skipped before it is
called) to one advantage each. A loss factory takes the hyperparameters and returns a PolicyLoss
(:class:`agentrft.policy.learner.PolicyLoss`): per micro-batch tensors in, (loss, summed statistics) out, normalised
by the step's totals so micro-batches add up to the full-batch loss.
"""

from __future__ import annotations

from typing import Any

import torch


def rank_advantages(rewards: list[float]) -> list[float]:
    """Centred ranks in [-0.5, 0.5] (ties share their mean rank): robust to reward scale and outliers.

    A_i = (rank_i − (G − 1)/2) / (G − 1), rank_i ∈ {0 … G−1}."""
    g = len(rewards)
    order = sorted(range(g), key=lambda i: rewards[i])
    ranks = [0.0] * g
    i = 0
    while i < g:
        j = i
        while j + 1 < g and rewards[order[j + 1]] == rewards[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return [(r - (g - 1) / 2) / (g - 1) for r in ranks]


def reinforce(hp: Any) -> Any:
    """Plain REINFORCE, L = −Σ_t m_t A_t ℓ_t / N_tokens (no ratio, no clipping: on-policy only)."""

    def loss_fn(new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                n_tokens: float, n_seqs: int, ref_lp: torch.Tensor | None, kl_coef: float
                ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = -(adv * new_lp * mask).sum() / n_tokens
        return loss, {"units": float(mask.sum()), "ratio_sum": float(mask.sum()), "clipped": 0.0}

    return loss_fn
