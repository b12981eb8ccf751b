"""The transformers sampler: next assistant turns for many trajectories at once, from the model in this process.

``generate`` takes B token-id prompts of different lengths, left-pads them into one batch, pre-fills a KV cache and
decodes token by token until every row has produced a stop token or reached its limit. Sampling is
:func:`agentrft.policy.sampling.sample_tokens`, the same draw the slot engine makes.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from agentrft.policy.engine import SlotEngine
from agentrft.policy.sampling import Generation, SamplingParams, sample_tokens


class TransformersSampler:
    """The in-process sampler over a transformers model (the learner's own model object, so no weight sync):
    ``generate`` runs HF forwards with a DynamicCache; ``slot_engine`` hands out the continuous-batching
    :class:`~agentrft.policy.engine.SlotEngine` for the architectures it covers."""

    # K/V buffers of a closed slot engine up to this size are kept for the next one (rollouts come every step, and
    # allocating and zeroing fresh memory is measurable at small model sizes: docs/benchmarks.md). Larger caches
    # are freed, so a big model's learner update does not run with its rollout cache still held.
    KEEP_KV_BYTES = 256 << 20

    def __init__(self, model: Any, *, stop_ids: set[int], pad_id: int):
        self.model = model
        self.stop_ids = set(stop_ids)
        self.pad_id = int(pad_id)
        self.tokens_generated = 0
        self.forward_passes = 0
        self.spare_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # see SlotEngine.close
        self.spare_packed: list[Any] | None = None  # the last engine's packed weights (buffers to refill)
        self.version: str | None = None  # the weights' name, set by whoever owns them (trainer, evaluator)

    def slot_engine(self, params: SamplingParams, *, slots: int) -> SlotEngine | None:
        """A continuous-batching engine over this sampler's model (None for architectures it does not cover;
        the agent loop then uses ``generate``)."""
        if not SlotEngine.supports(self.model):
            return None
        return SlotEngine(self.model, stop_ids=self.stop_ids, pad_id=self.pad_id, params=params, slots=slots,
                          owner=self)

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
                # one draw per live row only: a finished row's generator must not advance, or its next turn
                # would depend on how long the other rows of this batch ran
                u = [float(torch.rand(1, generator=g)) if not done[i] else 0.5 for i, g in enumerate(generators)]
                tok, tok_lp = sample_tokens(out.logits[:, -1, :], params, u)
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
