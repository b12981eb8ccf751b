"""Sampling math shared by every in-process sampler: temperature, nucleus (top-p) and seeded inverse-CDF draws.

Per row ``b`` and step ``t`` with logits ``z``:

    p = softmax(z / T)                               (temperature T)
    p' = p restricted to the smallest set of tokens whose mass ≥ top_p, renormalised (nucleus)
    x_t = F'^{-1}(u_b),  u_b ~ U(0,1) from row b's own torch.Generator

Each row has its own generator, so a trajectory's tokens depend only on its seed and its context, not on which
other trajectories happened to share the batch (tool timing changes batch composition between runs).

The log-prob recorded for each sampled token is ``log softmax(z / T)[x_t]`` — the untruncated, temperature-scaled
distribution, which is exactly what the learner recomputes (``Learner`` uses the same T), so the importance ratio
at the first update is 1 up to numerics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128


@dataclass
class Generation:
    """One assistant turn as sampled: its token ids (ending with the stop token when ``finish_reason`` is
    "stop"), the log-prob of each, and the wall time the turn took."""

    ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (ended with a stop token) | "length"
    latency_s: float = 0.0


def sample_tokens(logits: torch.Tensor, params: SamplingParams, u: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse CDF: ``x = min{i : cdf_i ≥ u·cdf_V}`` over the (nucleus-truncated)
    temperature-scaled distribution, and its log-prob under the untruncated one. ``u`` holds one uniform draw per
    row, taken by the caller from that row's own generator."""
    z = logits.float()
    if params.temperature != 1.0:
        z = z / params.temperature
    logp = torch.log_softmax(z, dim=-1)
    probs = logp.exp()
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    cdf = probs.cumsum_(-1)
    target = cdf[:, -1:] * torch.tensor(u, dtype=cdf.dtype, device=cdf.device).unsqueeze(-1)
    tok = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)  # = #{i : cdf_i < target}
    return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero out the tail beyond cumulative mass ``top_p`` (always keeping the top token), renormalise."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    drop = (cum - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)

