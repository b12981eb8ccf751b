"""The in-process rollout engine: continuous batching over a slot KV cache (``slots``), the per-architecture decode
forward (``forward``) and the packed decode weights (``packing``)."""

from agentrft.policy.engine.slots import SlotEngine

__all__ = ["SlotEngine"]
