"""The clipped policy-gradient loss of the GRPO family, with optional KL to a reference policy.

Notation, per sampled token t of trajectory i: new log-prob ℓ_t (current policy, with gradient), sampling
log-prob ℓ°_t (recorded by the sampler), reference log-prob ℓʳ_t, advantage A_t, loss mask m_t ∈ {0,1}.

Token level (PPO/GRPO, aggregated over all tokens of the step as in DAPO):

    ρ_t = exp(ℓ_t − ℓ°_t)
    L_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)
    L   = Σ_t m_t L_t / N_tokens

Sequence level (GSPO): one ratio per trajectory, the geometric mean of its token ratios,

    s_i = exp( Σ_t m_t (ℓ_t − ℓ°_t) / Σ_t m_t ),   Â_i = mean of A_t over its sampled tokens
    L   = Σ_i −min(s_i Â_i, clip(s_i, 1 − ε_low, 1 + ε_high) Â_i) / N_sequences

KL to the reference (k3 estimator, unbiased and ≥ 0):  k_t = exp(ℓʳ_t − ℓ_t) − (ℓʳ_t − ℓ_t) − 1, added as
``kl_coef · Σ_t m_t k_t / N_tokens``.

``N_tokens``/``N_sequences`` are totals over the whole optimizer step (all micro-batches), so gradient
accumulation over micro-batches gives exactly the gradient of the full-batch loss.

The learner minimises whatever :class:`~agentrft.policy.learner.PolicyLoss` it is handed; ``hyperparameters.loss``
picks one here by name (``token``, ``sequence``; ``segment_dpo`` and ``mixed`` are the token loss over
advantages that carry segment preferences, :mod:`agentrft.rl.segment_dpo`) or names a factory of your own as ``module:function`` taking the
hyperparameters and returning a PolicyLoss (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from agentrft.refs import builtin_or_reference


def clipped_policy_loss(
    new_lp: torch.Tensor,  # [B, T]
    old_lp: torch.Tensor,  # [B, T]
    adv: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T] float
    *,
    eps_low: float,
    eps_high: float,
    level: str,
    norm: float,
    ref_lp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_norm: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return (loss to backpropagate for this micro-batch, statistics summed over it)."""
    stats: dict[str, float] = {}
    if level == "token":
        log_ratio = (new_lp - old_lp) * mask
        ratio = torch.exp(log_ratio)
        unclipped = ratio * adv
        clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
        per_tok = -torch.minimum(unclipped, clipped)
        loss = (per_tok * mask).sum() / norm
        was_clipped = ((clipped < unclipped).detach().float() * mask).sum()
        stats["clipped"] = float(was_clipped)
        stats["ratio_sum"] = float((ratio.detach() * mask).sum())
        stats["units"] = float(mask.sum())
    elif level == "sequence":
        n = mask.sum(-1).clamp(min=1.0)
        seq_lr = ((new_lp - old_lp) * mask).sum(-1) / n
        s = torch.exp(seq_lr)
        a = (adv * mask).sum(-1) / n
        has = (mask.sum(-1) > 0).float()
        unclipped = s * a
        clipped = torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high) * a
        per_seq = -torch.minimum(unclipped, clipped) * has
        loss = per_seq.sum() / norm
        stats["clipped"] = float(((clipped < unclipped).detach().float() * has).sum())
        stats["ratio_sum"] = float((s.detach() * has).sum())
        stats["units"] = float(has.sum())
    else:
        raise ValueError(f"unknown loss level {level!r} (token, sequence)")
    if ref_lp is not None:
        d = ref_lp - new_lp
        k3 = (torch.exp(d) - d - 1.0) * mask
        if kl_coef:
            loss = loss + kl_coef * k3.sum() / (kl_norm or norm)
        stats["kl_sum"] = float(k3.detach().sum())
    stats["pg_loss_sum"] = float(loss.detach()) * norm
    return loss, stats


@dataclass(frozen=True)
class ClippedPolicyLoss:
    """:func:`clipped_policy_loss` as the learner's PolicyLoss: token-level normalised by the step's sampled tokens,
    sequence-level by its sequences; the KL term always by tokens."""

    eps_low: float = 0.2
    eps_high: float = 0.28
    level: str = "token"

    def __call__(self, new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                 n_tokens: float, n_seqs: int, ref_lp: torch.Tensor | None, kl_coef: float
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        norm = n_tokens if self.level == "token" else float(n_seqs)
        return clipped_policy_loss(new_lp, old_lp, adv, mask, eps_low=self.eps_low, eps_high=self.eps_high,
                                   level=self.level, norm=norm, ref_lp=ref_lp, kl_coef=kl_coef, kl_norm=n_tokens)


LOSSES: dict[str, Callable[[Any], Any]] = {
    "token": lambda hp: ClippedPolicyLoss(hp.clip_eps_low, hp.clip_eps_high, "token"),
    "sequence": lambda hp: ClippedPolicyLoss(hp.clip_eps_low, hp.clip_eps_high, "sequence"),
    # segment DPO (alone or mixed with GRPO) is the token-level surrogate over advantages that carry the pairs'
    # preferences: its gradient at the sampling point is the DPO gradient (agentrft.rl.segment_dpo)
    "segment_dpo": lambda hp: ClippedPolicyLoss(hp.clip_eps_low, hp.clip_eps_high, "token"),
    "mixed": lambda hp: ClippedPolicyLoss(hp.clip_eps_low, hp.clip_eps_high, "token"),
}


def build_loss(hp: Any) -> Any:
    """The PolicyLoss ``hyperparameters.loss`` names: a built-in (``LOSSES``) or ``module:function(hp)``."""
    return builtin_or_reference(hp.loss, LOSSES, "hyperparameters.loss", "loss")(hp)
