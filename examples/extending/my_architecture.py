"""A model architecture of your own in the rollout engine and the learner: one row of the architecture table.

``decode_engine=True`` claims the engine's decode forward computes this model exactly (pre-norm decoder layers with
``self_attn`` q/k/v/o projections, an MLP ``down(act(gate(x)) · up(x))``, RoPE from ``model.rotary_emb``);
``plain_head=True`` claims the logits are ``lm_head`` over the decoder's last hidden state, so the learner may run
the output layer only where the loss needs it. Claim only what holds — tests/test_decoder_archs.py shows how to
check a row against the HF forward. Here: a Llama variant registered under its own ``model_type``.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from agentrft.policy.architectures import ARCHITECTURES, Architecture


class MyLlamaConfig(LlamaConfig):
    model_type = "my_llama"


class MyLlamaForCausalLM(LlamaForCausalLM):
    config_class = MyLlamaConfig


def register() -> None:
    ARCHITECTURES["my_llama"] = Architecture("my_llama", decode_engine=True, plain_head=True)
