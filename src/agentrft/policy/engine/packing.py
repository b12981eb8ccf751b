"""Weight packing for the decode forward: each decoder layer's projections copied once per engine into the layout
the few-row matmuls of a decode step run fastest on, with LoRA adapters folded into the weights."""

from __future__ import annotations

from typing import Any

import torch


def _linear_weight(mod: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(W, b)`` with ``mod(x) == x·Wᵀ + b`` in eval mode: a plain ``nn.Linear``, or a peft LoRA ``Linear`` over one
    (``W`` = base weight + the active adapters' ``B·A·scaling``). None for anything else (DoRA and other variants,
    quantized layers, …): the engine then calls the module itself."""
    if type(mod) is torch.nn.Linear:
        return mod.weight, mod.bias
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover
        return None
    if type(mod) is not LoraLinear or type(mod.base_layer) is not torch.nn.Linear:
        return None
    base = mod.base_layer
    if mod.merged or mod.disable_adapters:  # merged: the base weight already includes them; disabled: base only
        return None if (mod.merged and mod.disable_adapters) else (base.weight, base.bias)
    w = base.weight
    for a in mod.active_adapters:
        if a not in mod.lora_A:
            continue
        if mod.use_dora.get(a) or (getattr(mod, "lora_variant", None) or {}).get(a) is not None:
            return None
        w = w + mod.get_delta_weight(a)
    return w, base.bias


class PackedLayer:
    """One decoder layer's projections as the decode path multiplies them: transposed, contiguous and fused
    (q|k|v in one matrix, gate|up in another), LoRA adapters folded in. Why: ``x @ Wᵀ`` through ``F.linear`` hands
    BLAS a transposed operand, and with the few rows of a decode step that is markedly slower than ``x @ Wt`` with
    ``Wt`` stored [in, out] (measured in docs/benchmarks.md). Built per engine (the weights change between rollout
    phases, never during one) into buffers the sampler keeps."""

    __slots__ = ("qkv", "qkv_b", "o", "o_b", "gu", "gu_b", "down", "down_b", "n_inter")

    @staticmethod
    def modules(layer: Any) -> list[Any] | None:
        """q, k, v, o, gate, up, down of a layer whose MLP is ``down(act_fn(gate(x)) · up(x))``, else None."""
        attn, mlp = layer.self_attn, getattr(layer, "mlp", None)
        if not hasattr(mlp, "act_fn"):
            return None
        return [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + \
            [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]

    @staticmethod
    def parts(mods: list[Any]) -> list[tuple[torch.Tensor, torch.Tensor | None]] | None:
        """Each module's ``(W, b)`` (``_linear_weight``; LoRA deltas computed here), or None if any has none."""
        out = [_linear_weight(m) for m in mods]
        return None if any(w is None for w in out) else out  # type: ignore[return-value]

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor | None]], reuse: PackedLayer | None):
        (q, qb), (k, kb), (v, vb), (o, ob), (g, gb), (u, ub), (d, db) = parts

        def pack(ws: list[torch.Tensor], old: torch.Tensor | None) -> torch.Tensor:
            n_in, n_out = ws[0].shape[1], sum(w.shape[0] for w in ws)
            buf = old if old is not None and old.shape == (n_in, n_out) and old.dtype == ws[0].dtype else \
                torch.empty((n_in, n_out), dtype=ws[0].dtype, device=ws[0].device)
            at = 0
            for w in ws:
                buf[:, at : at + w.shape[0]].copy_(w.t())
                at += w.shape[0]
            return buf

        def bias(bs: list[torch.Tensor | None], ws: list[torch.Tensor]) -> torch.Tensor | None:
            if all(b is None for b in bs):
                return None
            return torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for b, w in zip(bs, ws)])

        # built only by pack_layers, under its no_grad (copies of trainable weights, no graph)
        self.qkv = pack([q, k, v], reuse and reuse.qkv)
        self.o = pack([o], reuse and reuse.o)
        self.gu = pack([g, u], reuse and reuse.gu)
        self.down = pack([d], reuse and reuse.down)
        self.qkv_b, self.o_b = bias([qb, kb, vb], [q, k, v]), bias([ob], [o])
        self.gu_b, self.down_b = bias([gb, ub], [g, u]), bias([db], [d])
        self.n_inter = g.shape[0]


def mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w
    return y if b is None else y.add_(b)


@torch.no_grad()
def pack_layers(layers: list[Any], spare: list[Any] | None, max_bytes: int) -> list[PackedLayer | None]:
    """Each layer's projections packed for decoding, or None for a layer whose modules are not plain/LoRA linears
    (it then runs its own modules); all None past ``max_bytes`` of (base) weights. ``spare``: a previous engine's
    packed layers, whose buffers are refilled when the shapes match."""
    spare = spare or []
    mods_all = [PackedLayer.modules(layer) for layer in layers]
    # the size from the base weights' shapes, before any LoRA delta is computed: a model past the budget costs
    # nothing here
    size = sum(w.numel() * w.element_size() for mods in mods_all if mods for m in mods
               if isinstance(w := getattr(m, "weight", None), torch.Tensor))
    if size > max_bytes:
        return [None] * len(layers)
    out: list[PackedLayer | None] = []
    for i, mods in enumerate(mods_all):
        parts = PackedLayer.parts(mods) if mods is not None else None
        out.append(PackedLayer(parts, spare[i] if i < len(spare) else None) if parts is not None else None)
    return out
