"""Where a trajectory's random stream stands: a seed and an offset, so another process can continue it exactly.

Every sampler here draws exactly one uniform per sampled token from the trajectory's own ``torch.Generator``
(``torch.Generator().manual_seed(seed)``, seeded by the agent loop). A trajectory's turn k therefore starts at

    offset_k = number of tokens sampled in turns 0..k-1

in the stream of ``seed``, and the pair ``(seed, offset_k)`` is all a remote engine needs to draw the very uniforms
the in-process sampler would have drawn — this is the ``seed`` + ``seed_offset`` extension that ``agentrft serve``'s
``/v1/completions`` honours (docs/serve.md). Engines without it (vLLM) get a per-turn seed mixed from both
(:func:`mixed_seed`): reproducible for a given seed, but not the in-process sampler's tokens.

Skipping ``offset`` draws is done with the same one-at-a-time draws the samplers make (``torch.rand(1)``), never one
``torch.rand(offset)`` call, so the stream is the samplers' stream by construction.
"""

from __future__ import annotations

import torch

MAX_SEED = 2**63


def advance(gen: torch.Generator, n: int) -> torch.Generator:
    """Draw and drop ``n`` uniforms from ``gen``, one at a time as the samplers draw them; returns ``gen``."""
    for _ in range(int(n)):
        torch.rand(1, generator=gen)
    return gen


def seeded_generator(seed: int, offset: int = 0) -> torch.Generator:
    """A generator at position ``offset`` of the stream of ``seed``."""
    return advance(torch.Generator().manual_seed(int(seed) % MAX_SEED), offset)


def mixed_seed(seed: int, offset: int) -> int:
    """One seed per (seed, offset) for engines that take a seed only: a splitmix64 step of ``seed ⊕ offset·φ``, so
    consecutive turns of one trajectory get unrelated streams (sending ``seed`` alone would replay turn 0's draws)."""
    x = (int(seed) ^ (int(offset) * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) % MAX_SEED


__all__ = ["advance", "mixed_seed", "seeded_generator"]
