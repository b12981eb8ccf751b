"""The decoder architectures agentrft knows, keyed by HF ``model_type``: one table that the rollout engine and the
learner both read, so supporting a new architecture is one row here plus whatever the row claims.

* ``decode_engine``: the in-process rollout engine (:mod:`agentrft.policy.engine`) runs its decode forward —
  pre-norm decoder layers with ``self_attn`` (q/k/v/o projections, optional per-head q/k norms), an MLP
  ``down(act(gate(x)) · up(x))``, RoPE from the model's ``rotary_emb``. Others fall back to HF ``generate``.
* ``plain_head``: the causal-LM logits are exactly ``lm_head(decoder(...).last_hidden_state)`` (with Gemma's
  optional final soft-cap), so the learner may run the output layer only at loss positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    model_type: str
    decode_engine: bool
    plain_head: bool


ARCHITECTURES: dict[str, Architecture] = {a.model_type: a for a in (
    Architecture("llama", decode_engine=True, plain_head=True),
    Architecture("qwen2", decode_engine=True, plain_head=True),
    Architecture("qwen3", decode_engine=True, plain_head=True),       # per-head q/k RMSNorm
    Architecture("gemma3_text", decode_engine=True, plain_head=True),  # sandwich norms, sliding windows, soft-cap
    Architecture("mistral", decode_engine=False, plain_head=True),
    Architecture("gemma", decode_engine=False, plain_head=True),
    Architecture("gemma2", decode_engine=False, plain_head=True),
)}


def base_model(model: Any) -> Any:
    """The transformers model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def architecture_of(model: Any) -> Architecture | None:
    """The table's row for ``model`` (peft-wrapped or not), None for an architecture not in the table."""
    cfg = getattr(base_model(model), "config", None)
    return ARCHITECTURES.get(getattr(cfg, "model_type", None))  # type: ignore[arg-type]
