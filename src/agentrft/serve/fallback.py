"""Serving architectures the continuous-batching engine does not cover (Mistral, Gemma 2, …): an engine-shaped
wrapper over the sampler's batched ``generate``.

``feed``/``step``/``release``/``busy`` behave like ``SlotEngine``'s, but one ``step`` runs every fed sequence to the
end of its turn (static batching: the sequences fed together are decoded together, each with its own generator,
grouped by sampling params), so the worker is busy for a whole generation and streaming clients get the turn in
one piece. Sampling and log-probs are ``generate``'s, the rollouts' fallback path for these architectures.
"""

from __future__ import annotations

from typing import Any

import torch

from agentrft.policy.sampling import Generation, SamplingParams


class GenerateEngine:
    def __init__(self, sampler: Any, *, params: SamplingParams, slots: int):
        self.sampler = sampler
        self.params = params
        self.S = slots
        self.fed: dict[int, tuple[list[int], torch.Generator, int, SamplingParams]] = {}
        self.out_ids: list[list[int]] = [[] for _ in range(slots)]
        self.out_lp: list[list[float]] = [[] for _ in range(slots)]

    def feed(self, slot: int, ids: list[int], gen: torch.Generator, limit: int,
             params: SamplingParams | None = None) -> None:
        p = params or self.params
        self.fed[slot] = (list(ids), gen, max(0, min(p.max_new_tokens, limit)), p)
        self.out_ids[slot], self.out_lp[slot] = [], []

    def release(self, slot: int) -> None:
        self.fed.pop(slot, None)
        self.out_ids[slot], self.out_lp[slot] = [], []

    def busy(self) -> bool:
        return bool(self.fed)

    def step(self) -> list[tuple[int, Generation]]:
        done: list[tuple[int, Generation]] = []
        groups: dict[tuple[float, float], list[int]] = {}
        for slot, (_, _, limit, p) in self.fed.items():
            if limit == 0:
                done.append((slot, Generation([], [], "length", 0.0)))
            else:
                groups.setdefault((p.temperature, p.top_p), []).append(slot)
        for (t, top_p), slots in groups.items():
            feeds = [self.fed[s] for s in slots]
            params = SamplingParams(temperature=t, top_p=top_p, max_new_tokens=max(f[2] for f in feeds))
            gens = self.sampler.generate([f[0] for f in feeds], params, [f[1] for f in feeds],
                                         limits=[f[2] for f in feeds])
            for s, g in zip(slots, gens):
                self.out_ids[s], self.out_lp[s] = g.ids, g.logprobs
                done.append((s, g))
        self.fed.clear()
        return done

    def close(self) -> None:
        self.fed.clear()
