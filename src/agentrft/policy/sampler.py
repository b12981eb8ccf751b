"""The transformers sampler: next assistant turns for many trajectories at once, with a KV cache.

``generate`` takes B token-id prompts of different lengths, left-pads them into one batch, pre-fills the KV
cache and decodes token by token until every row has produced an end-of-turn token or ``max_new_tokens``.

Sampling, per row ``b`` and step ``t`` with logits ``z``:

    p = softmax(z / T)                               (temperature T)
    p' = p restricted to the smallest set of tokens whose mass ≥ top_p, renormalised (nucleus)
    x_t = F'^{-1}(u_b),  u_b ~ U(0,1) from row b's own torch.Generator

Each row has its own generator, so a trajectory's tokens depend only on its seed and its context, not on which
other trajectories happened to share the batch (tool timing changes batch composition between runs).

The logprob recorded for each sampled token is ``log softmax(z / T)[x_t]`` — the untruncated, temperature-scaled
distribution, which is exactly what the learner recomputes (``Learner`` uses the same T), so the importance ratio
at the first update is 1 up to numerics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128


@dataclass
class Generation:
    ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (ended with a stop token) | "length"
    latency_s: float = 0.0


class TransformersSampler:
    def __init__(self, model: Any, *, stop_ids: set[int], pad_id: int):
        self.model = model
        self.stop_ids = set(stop_ids)
        self.pad_id = int(pad_id)
        self.tokens_generated = 0
        self.forward_passes = 0

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        generators: list[torch.Generator],
        limits: list[int] | None = None,
    ) -> list[Generation]:
        """``limits[i]`` caps row i's new tokens below ``params.max_new_tokens`` (context budget)."""
        from transformers import DynamicCache

        if not prompts:
            return []
        t0 = time.perf_counter()
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        B = len(prompts)
        L = max(len(p) for p in prompts)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[i, L - len(p) :] = 1
        input_ids, attn = input_ids.to(device), attn.to(device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        out_ids: list[list[int]] = [[] for _ in range(B)]
        out_lp: list[list[float]] = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool)
        finish = ["length"] * B
        stop = torch.tensor(sorted(self.stop_ids), dtype=torch.long)
        step_ids, step_pos = input_ids, pos
        limits = [min(params.max_new_tokens, n) for n in (limits or [params.max_new_tokens] * B)]
        try:
            for _ in range(max(limits)):
                out = model(
                    input_ids=step_ids,
                    attention_mask=attn,
                    position_ids=step_pos,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                self.forward_passes += 1
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float() / params.temperature
                logp = torch.log_softmax(logits, dim=-1)
                probs = logp.exp()
                if params.top_p < 1.0:
                    probs = _nucleus(probs, params.top_p)
                # one draw per live row only: a finished row's generator must not advance, or its next turn
                # would depend on how long the other rows of this batch ran
                u = torch.cat([torch.rand(1, generator=g) if not done[i] else torch.full((1,), 0.5)
                               for i, g in enumerate(generators)]).to(probs.device)
                cdf = probs.cumsum(-1)
                tok = (cdf < (u * cdf[:, -1]).unsqueeze(-1)).sum(-1).clamp(max=probs.shape[-1] - 1)
                tok_lp = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
                tok_cpu, lp_cpu = tok.cpu(), tok_lp.cpu()
                for i in range(B):
                    if done[i]:
                        continue
                    t = int(tok_cpu[i])
                    out_ids[i].append(t)
                    out_lp[i].append(float(lp_cpu[i]))
                    if t in self.stop_ids:
                        done[i] = True
                        finish[i] = "stop"
                    elif len(out_ids[i]) >= limits[i]:
                        done[i] = True
                if bool(done.all()):
                    break
                tok = torch.where(done.to(tok.device), torch.full_like(tok, self.pad_id), tok)
                step_ids = tok.unsqueeze(-1)
                step_pos = step_pos[:, -1:] + 1
                attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=attn.device)], dim=-1)
        finally:
            if was_training:
                model.train()
        del stop
        dt = time.perf_counter() - t0
        self.tokens_generated += sum(len(x) for x in out_ids)
        return [Generation(out_ids[i], out_lp[i], finish[i], dt) for i in range(B)]


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero out the tail beyond cumulative mass ``top_p`` (always keeping the top token), renormalise."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    drop = (cum - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)
