"""The per-architecture decode forward of the rollout engine: a decoder's layers run over a batch of slots with
their K/V kept in the engine's preallocated cache, computed with the model's own modules (norms, rotary
embedding, LoRA-wrapped projections) or its packed projections, and the same math as the HF forward.

Covers the rows of :data:`agentrft.policy.architectures.ARCHITECTURES` with ``decode_engine``: Llama, Qwen2, Qwen3
(per-head q/k RMSNorm) and Gemma 3 (per-head q/k norms, norms after attention and MLP, sliding-window layers with
their own RoPE base, ``query_pre_attn_scalar`` scaling, scaled embeddings, final soft-cap). The learner's
teacher-forced log-probs agree with it to float32 rounding (tests/test_token_exact.py, tests/test_decoder_archs.py).
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

import torch

from agentrft.policy.architectures import architecture_of, base_model
from agentrft.policy.engine.packing import PackedLayer
from agentrft.policy.engine.packing import mm as _mm


def _mlp(pk: PackedLayer, act: Any, x: torch.Tensor) -> torch.Tensor:
    """``down(act(gate(x)) · up(x))`` (Llama, Qwen, Gemma MLPs) on the packed weights."""
    g, u = _mm(x, pk.gu, pk.gu_b).split([pk.n_inter, pk.n_inter], dim=-1)
    return _mm(act(g) * u, pk.down, pk.down_b)


class DecoderForward:
    """One model's decode forward, with the architecture facts read once from its config and modules."""

    def __init__(self, model: Any):
        base = base_model(model)
        self.base, self.core = base, base.model
        cfg = base.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        layers = list(self.core.layers)
        self.layers = layers
        self.layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        self.window = [getattr(layer.self_attn, "sliding_window", None) for layer in layers]
        self.rope_by_type = "layer_type" in inspect.signature(self.core.rotary_emb.forward).parameters
        self.gemma_norms = hasattr(layers[0], "pre_feedforward_layernorm")  # norm after attention and after MLP
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    @staticmethod
    def supports(model: Any) -> bool:
        """An architecture of the table with ``decode_engine``, without the variants this forward lacks (attention
        logit soft-capping, bidirectional attention)."""
        arch = architecture_of(model)
        base = base_model(model)
        cfg = getattr(base, "config", None)
        return (arch is not None and arch.decode_engine
                and getattr(cfg, "attn_logit_softcapping", None) is None
                and not getattr(cfg, "use_bidirectional_attention", False)
                and hasattr(base, "model") and hasattr(base.model, "rotary_emb"))

    def __call__(self, ids: torch.Tensor, rows: list[int], start: list[int], lens: list[int],
                 K_all: list[torch.Tensor], V_all: list[torch.Tensor], packed: list[PackedLayer | None],
                 S: int) -> torch.Tensor:
        """Logits of the last real token of each row of ``ids`` [B, T] (right-padded; row i has ``lens[i]`` tokens
        starting at position ``start[i]`` of slot ``rows[i]``); writes those tokens' K/V into the slots' caches
        ``K_all``/``V_all`` ([S, Hkv, cap, D] per layer)."""
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        B, T = ids.shape
        dev = K_all[0].device
        ids = ids.to(dev)
        st = torch.tensor(start, dtype=torch.long, device=dev)
        pos = st.unsqueeze(1) + torch.arange(T, device=dev).unsqueeze(0)  # [B, T] absolute positions
        Lk = max(a + n for a, n in zip(start, lens))
        key_pos = torch.arange(Lk, device=dev)
        # query (b, t) sees keys at positions ≤ its own position (its cached prefix and its pending tokens up to t),
        # and in a sliding-window layer only the last `window` of them (HF: key > query − window).
        # Additive masks, built once per step (a boolean mask would be converted in every layer).
        dist = pos.unsqueeze(-1) - key_pos.view(1, 1, Lk)  # [B, T, Lk]
        padded = (torch.arange(T, device=dev).unsqueeze(0) >= torch.tensor(lens, device=dev).unsqueeze(1))
        masks: dict[int | None, torch.Tensor] = {}
        for w in set(self.window):
            allow = (dist >= 0) if w is None else (dist >= 0) & (dist < w)
            allow |= padded.unsqueeze(-1)  # padding queries (discarded) see everything: no all-masked softmax rows
            masks[w] = torch.zeros((B, 1, T, Lk), dtype=K_all[0].dtype, device=dev).masked_fill_(
                ~allow.unsqueeze(1), float("-inf"))
        G = self.n_heads // self.n_kv
        slot_idx = torch.tensor(rows, dtype=torch.long, device=dev)
        all_rows = B == S and rows == list(range(S))
        # decode with most slots active: attend over every slot's cache in place (the queries of idle slots are
        # zeros, their outputs dropped) rather than gathering the active slots' K/V, a copy that dominated small
        # models' decode steps
        wide = T == 1 and not all_rows and 2 * B >= S
        if wide:
            masks = {w: torch.zeros((S, 1, 1, Lk), dtype=m.dtype, device=dev).index_copy_(0, slot_idx, m)
                     for w, m in masks.items()}
        h = self.core.embed_tokens(ids)  # Gemma's embedding module applies its √hidden scale itself
        if self.rope_by_type:  # Gemma 3: a RoPE base per layer type (local 10k, global 1M)
            rope = {t: self.core.rotary_emb(h, pos, t) for t in set(self.layer_types)}
        else:
            cs = self.core.rotary_emb(h, pos)
            rope = {t: cs for t in set(self.layer_types)}
        valid = [(i, start[i], lens[i]) for i in range(B)]
        nq, nkv = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for li, layer in enumerate(self.core.layers):
            attn, pk = layer.self_attn, packed[li]
            x = layer.input_layernorm(h)
            if pk is not None:
                q, k, v = _mm(x, pk.qkv, pk.qkv_b).split([nq, nkv, nkv], dim=-1)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q = q.view(B, T, self.n_heads, self.head_dim)
            k = k.view(B, T, self.n_kv, self.head_dim)
            v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
            if hasattr(attn, "q_norm"):  # Qwen3 / Gemma 3: RMSNorm over each head's vector
                q, k = attn.q_norm(q), attn.k_norm(k)
            cos, sin = rope[self.layer_types[li]]
            q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            K, V = K_all[li], V_all[li]  # [S, Hkv, cap, D]; k, v: [B, Hkv, T, D]
            if T == 1:
                K[slot_idx, :, st] = k[:, :, 0]
                V[slot_idx, :, st] = v[:, :, 0]
            else:
                for i, a, n in valid:
                    K[rows[i], :, a : a + n] = k[i, :, :n]
                    V[rows[i], :, a : a + n] = v[i, :, :n]
            if all_rows or wide:
                Ks, Vs = K[:, :, :Lk], V[:, :, :Lk]
            else:
                Ks, Vs = K[:, :, :Lk].index_select(0, slot_idx), V[:, :, :Lk].index_select(0, slot_idx)
            qq = q.new_zeros((S, *q.shape[1:])).index_copy_(0, slot_idx, q) if wide else q
            Bq = qq.shape[0]
            # softmax(q·kᵀ·scaling + mask)·v, query heads grouped over their shared KV head: [B, Hkv, G·T, D]
            qg = qq.reshape(Bq, self.n_kv, G * T, self.head_dim)
            att = torch.matmul(qg, Ks.transpose(-1, -2)) * attn.scaling  # [B, Hkv, G·T, Lk]
            att = att.view(Bq, self.n_kv, G, T, Lk) + masks[self.window[li]].unsqueeze(1)
            att = torch.softmax(att, dim=-1).view(Bq, self.n_kv, G * T, Lk)
            o = torch.matmul(att, Vs).view(Bq, self.n_heads, T, self.head_dim)
            if wide:
                o = o.index_select(0, slot_idx)
            o = o.transpose(1, 2).reshape(B, T, nq)
            o = _mm(o, pk.o, pk.o_b) if pk is not None else attn.o_proj(o)
            mlp = layer.mlp if pk is None else partial(_mlp, pk, layer.mlp.act_fn)
            if self.gemma_norms:
                h = h + layer.post_attention_layernorm(o)
                h = h + layer.post_feedforward_layernorm(mlp(layer.pre_feedforward_layernorm(h)))
            else:
                h = h + o
                h = h + mlp(layer.post_attention_layernorm(h))
        last = torch.tensor([n - 1 for n in lens], dtype=torch.long, device=dev)
        h_last = h[torch.arange(B, device=dev), last]
        h_last = self.core.norm(h_last)
        logits = self.base.lm_head(h_last)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
