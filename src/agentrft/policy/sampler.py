"""The Sampler interface: what the agent loop needs from whatever writes the next assistant turns.

A sampler continues many trajectories given as token ids and returns, per trajectory, the sampled ids (ending with
a stop token, or cut at the row's limit) with the log-prob of each — the token-exact contract the learner relies
on: it trains on exactly these ids and uses these log-probs as the behaviour policy's. ``version`` names the
weights that sampled (a checkpoint id, an adapter version on a remote server); the agent loop stamps it on every
trajectory.

Two ways to drive one, and a sampler may offer both:

* ``generate(prompts, params, generators, limits)`` — one batch of turns, each from its whole prefix;
* ``slot_engine(params, slots=N)`` — a :class:`DecodeEngine` for continuous batching: each trajectory keeps a slot
  for its whole life, ``feed`` appends only what is new since its last turn (the last sampled token plus the
  rendered tool results), ``step`` advances every slot that is generating and returns the turns that ended. None
  when this sampler cannot (the loop then uses ``generate``).

Stop ids are the backend's, given when it is built (the chat renderer's ``stop_ids``: ``RolloutStack.attach``
passes them), so the loop and the learner agree on where a turn ends.

Seeds: each trajectory passes its own ``torch.Generator``; a sampler draws exactly one uniform from it per sampled
token, so a trajectory's tokens depend only on its seed and its context, never on its batch-mates.

Backends: :class:`agentrft.policy.transformers_sampler.TransformersSampler` (in-process: HF forward for
``generate``, :mod:`agentrft.policy.engine` for slots). A remote backend (an OpenAI/vLLM-compatible server's
token-id completions) implements the same two methods.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from agentrft.policy.sampling import Generation, SamplingParams


@runtime_checkable
class DecodeEngine(Protocol):
    S: int  # slots

    def feed(self, slot: int, ids: list[int], gen: torch.Generator, limit: int) -> None:
        """Append ``ids`` to the slot's sequence and start a new assistant turn of at most ``limit`` tokens."""

    def step(self) -> list[tuple[int, Generation]]:
        """Advance every generating slot by one token; return ``(slot, turn)`` for each turn that ended."""

    def release(self, slot: int) -> None:
        """Forget the slot's sequence (its trajectory finished); the slot can be fed a new one."""

    def busy(self) -> bool:
        """Whether any slot is generating."""

    def close(self) -> None:
        """Done with the engine (buffers may be handed back to the sampler for its next engine)."""


@runtime_checkable
class Sampler(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams, generators: list[torch.Generator],
                 limits: list[int] | None = None) -> list[Generation]:
        """The next turn of each prompt; ``limits[i]`` caps row i's new tokens below ``params.max_new_tokens``."""


@runtime_checkable
class ContinuousSampler(Sampler, Protocol):
    version: str | None

    def slot_engine(self, params: SamplingParams, *, slots: int) -> DecodeEngine | None:
        """A continuous-batching engine, or None where this sampler has none for its model."""


def sampler_version(sampler: object) -> str | None:
    """The weights version a sampler reports (None for samplers that keep none, e.g. scripted test samplers)."""
    return getattr(sampler, "version", None)


__all__ = ["ContinuousSampler", "DecodeEngine", "Generation", "Sampler", "SamplingParams", "sampler_version"]
