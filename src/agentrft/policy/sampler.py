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

import inspect
import time
from dataclasses import dataclass
from functools import partial
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
    # K/V buffers of a closed slot engine up to this size are kept for the next one: allocating and zeroing them
    # took ~5 ms of a 0.25 s GRPO step at 1M params (page faults on fresh memory), and rollouts come every step.
    # Larger caches are freed, so a big model's learner update does not run with its rollout cache still held.
    KEEP_KV_BYTES = 256 << 20

    def __init__(self, model: Any, *, stop_ids: set[int], pad_id: int):
        self.model = model
        self.stop_ids = set(stop_ids)
        self.pad_id = int(pad_id)
        self.tokens_generated = 0
        self.forward_passes = 0
        self.spare_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None  # see SlotEngine.close
        self.spare_packed: list[Any] | None = None  # the last engine's packed weights (buffers to refill)

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


def sample_tokens(logits: torch.Tensor, params: SamplingParams, u: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by inverse CDF: ``x = min{i : cdf_i ≥ u·cdf_V}`` over the (nucleus-truncated)
    temperature-scaled distribution, and its log-prob under the untruncated one. ``u`` holds one uniform draw per
    row, taken by the caller from that row's own generator."""
    z = logits.float()
    if params.temperature != 1.0:
        z = z / params.temperature
    logp = torch.log_softmax(z, dim=-1)
    probs = logp.exp()
    if params.top_p < 1.0:
        probs = _nucleus(probs, params.top_p)
    cdf = probs.cumsum_(-1)
    target = cdf[:, -1:] * torch.tensor(u, dtype=cdf.dtype, device=cdf.device).unsqueeze(-1)
    tok = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)  # = #{i : cdf_i < target}
    return tok, logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero out the tail beyond cumulative mass ``top_p`` (always keeping the top token), renormalise."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    drop = (cum - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(-1, keepdim=True)


# ---- continuous batching with a persistent per-trajectory KV cache ------------------------------------------------
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


class _PackedLayer:
    """One decoder layer's projections as the decode path multiplies them: transposed, contiguous and fused
    (q|k|v in one matrix, gate|up in another), LoRA adapters folded in. ``x @ Wᵀ`` through ``F.linear`` hands BLAS a
    transposed operand; with the few rows of a decode step that ran 1.2–1.7× slower than ``x @ Wt`` with ``Wt``
    stored [in, out] (e.g. 16×320·320×960: 108 vs 68 µs here). Built per engine (the weights change between
    rollout phases, never during one) into buffers the sampler keeps."""

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

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor | None]], reuse: _PackedLayer | None):
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

        # built only by SlotEngine._pack_layers, under its no_grad (copies of trainable weights, no graph)
        self.qkv = pack([q, k, v], reuse and reuse.qkv)
        self.o = pack([o], reuse and reuse.o)
        self.gu = pack([g, u], reuse and reuse.gu)
        self.down = pack([d], reuse and reuse.down)
        self.qkv_b, self.o_b = bias([qb, kb, vb], [q, k, v]), bias([ob], [o])
        self.gu_b, self.down_b = bias([gb, ub], [g, u]), bias([db], [d])
        self.n_inter = g.shape[0]


def _mm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x @ w
    return y if b is None else y.add_(b)


class SlotEngine:
    """Decode many trajectories at once, each in its own *slot* of a preallocated KV cache that it keeps across
    turns. Covers the decoders in ``SlotEngine.ARCHITECTURES``: Llama, Qwen2, Qwen3 (per-head q/k RMSNorm) and
    Gemma 3 (per-head q/k norms, norms after attention and MLP, sliding-window layers with their own RoPE base,
    ``query_pre_attn_scalar`` scaling, scaled embeddings).

    ``feed(slot, ids, gen, limit)`` appends token ids to the slot's sequence (a prompt, or everything since the
    slot's last turn: the turn's final sampled token plus the rendered tool results) and starts a new assistant
    turn. ``step()`` runs one forward pass over the slots that need one — the pending tokens of newly fed slots
    (pre-fill; only those tokens, the prefix is already cached) or the last sampled token of decoding slots — and
    samples one token per decoding slot; it returns the turns that ended (stop token or the slot's limit).
    A slot waiting on tools costs nothing; a slot that finished is freed with ``release`` and reused.

    Sampling and the recorded log-probs are exactly ``TransformersSampler.generate``'s: ``log softmax(z/T)[x]``
    over the untruncated temperature-scaled distribution, ``x = F'^{-1}(u)`` with ``u`` drawn from the row's own
    generator once per sampled token — so a trajectory's tokens depend only on its seed and its own context.
    The forward is computed with the model's own modules (so LoRA adapters apply) and the same math as the HF
    forward (RMSNorm, RoPE from the model's rotary module, softmax(q·kᵀ/√d + causal mask)·v); the learner's
    teacher-forced log-probs agree to float32 rounding (tests/test_token_exact.py checks ≤ 1e-4).
    """

    ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3_text")  # HF model_type values this engine runs
    # layers' projections are packed (``_PackedLayer``) up to this size: for Gemma 3 270M (400 MB) packing took
    # 0.28 s per rollout phase and its decode steps (~220 ms at 16 slots, mostly the 262k-row output layer) ran
    # no faster, so large models keep calling their own modules
    PACK_MAX_BYTES = 256 << 20

    def __init__(self, model: Any, *, stop_ids: set[int], pad_id: int, params: SamplingParams, slots: int,
                 owner: Any = None):
        from peft import PeftModel

        base = model.get_base_model() if isinstance(model, PeftModel) else model
        self.model, self.base = model, base
        self.core = base.model
        cfg = base.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.stop_ids = set(stop_ids)
        self.pad_id = int(pad_id)
        self.params = params
        self.S = slots
        self.cap = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.cached = [0] * slots          # tokens of the slot's sequence already in the cache
        self.pending: list[list[int]] = [[] for _ in range(slots)]  # fed, not yet in the cache
        self.decoding = [False] * slots
        self.gens: list[torch.Generator | None] = [None] * slots
        self.limit = [0] * slots
        self.out_ids: list[list[int]] = [[] for _ in range(slots)]
        self.out_lp: list[list[float]] = [[] for _ in range(slots)]
        self.t0 = [0.0] * slots
        self.waited = [0] * slots  # steps a fed slot's pre-fill has been deferred
        self.owner = owner  # a TransformersSampler whose counters this engine adds to
        # per-layer architecture facts, read from the model's own modules
        layers = list(self.core.layers)
        self.layer_types = list(getattr(cfg, "layer_types", None) or ["full_attention"] * self.n_layers)
        self.window = [getattr(layer.self_attn, "sliding_window", None) for layer in layers]
        self.rope_by_type = "layer_type" in inspect.signature(self.core.rotary_emb.forward).parameters
        self.gemma_norms = hasattr(layers[0], "pre_feedforward_layernorm")  # norm after attention and after MLP
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self._take_spare_kv()
        self.packed = self._pack_layers(layers)

    def _take_spare_kv(self) -> None:
        """Start from the buffers a previous engine of the same sampler left (``close``) when they fit: same layer
        count, heads, head size, dtype and device, and at least this many slots (views of the first S are used).
        Their contents are stale but finite; every position a query can see is written before it is read."""
        spare = getattr(self.owner, "spare_kv", None)
        if not spare:
            return
        k, v = spare
        p = next(self.model.parameters())
        K = k[0]
        if (len(k) == self.n_layers and K.dim() == 4 and K.shape[0] >= self.S and K.shape[1] == self.n_kv
                and K.shape[3] == self.head_dim and K.dtype == p.dtype and K.device == p.device):
            self.owner.spare_kv = None  # taken: two live engines never share a cache
            self.k, self.v, self.cap = [x[: self.S] for x in k], [x[: self.S] for x in v], K.shape[2]

    @torch.no_grad()
    def _pack_layers(self, layers: list[Any]) -> list[_PackedLayer | None]:
        """Each layer's projections packed for decoding (``_PackedLayer``), or None for a layer whose modules are not
        plain/LoRA linears (it then runs its own modules); all None past ``PACK_MAX_BYTES``. Reuses the buffers of
        the sampler's previous engine."""
        spare = getattr(self.owner, "spare_packed", None) or []
        if self.owner is not None:
            self.owner.spare_packed = None
        mods_all = [_PackedLayer.modules(layer) for layer in layers]
        # the size from the (base) weights' shapes, before any LoRA delta is computed: a model past the budget
        # costs nothing here
        size = sum(w.numel() * w.element_size() for mods in mods_all if mods for m in mods
                   if isinstance(w := getattr(m, "weight", None), torch.Tensor))
        if size > self.PACK_MAX_BYTES:
            return [None] * len(layers)
        out: list[_PackedLayer | None] = []
        for i, mods in enumerate(mods_all):
            parts = _PackedLayer.parts(mods) if mods is not None else None
            out.append(_PackedLayer(parts, spare[i] if i < len(spare) else None) if parts is not None else None)
        return out

    def close(self) -> None:
        """Done with this engine: hand the owning sampler its packed weights (bounded by ``PACK_MAX_BYTES``) and its
        K/V buffers when they are at most ``TransformersSampler.KEEP_KV_BYTES`` (else they are freed), for the next
        engine. The engine is unusable afterwards."""
        if self.owner is not None:
            if self.k and sum(x.untyped_storage().nbytes() for x in self.k + self.v) <= self.owner.KEEP_KV_BYTES:
                self.owner.spare_kv = (self.k, self.v)
            if any(self.packed):
                self.owner.spare_packed = self.packed
        self.k, self.v, self.cap, self.packed = [], [], 0, []

    @staticmethod
    def supports(model: Any) -> bool:
        from peft import PeftModel

        base = model.get_base_model() if isinstance(model, PeftModel) else model
        cfg = getattr(base, "config", None)
        return (getattr(cfg, "model_type", None) in SlotEngine.ARCHITECTURES
                and getattr(cfg, "attn_logit_softcapping", None) is None
                and not getattr(cfg, "use_bidirectional_attention", False)
                and hasattr(base, "model") and hasattr(base.model, "rotary_emb"))

    def _ensure(self, need: int) -> None:
        if need <= self.cap:
            return
        cap = max(256, self.cap)
        while cap < need:
            cap *= 2
        p = next(self.model.parameters())
        # [slot, kv head, position, head dim]: a slot's keys for one head are contiguous rows, so attention reads
        # K[:, :, :L] as a strided view (no copy) and BLAS takes its transpose as is
        shape = (self.S, self.n_kv, cap, self.head_dim)
        newk = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(self.n_layers)]
        newv = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(self.n_layers)]
        for i in range(len(self.k)):
            newk[i][:, :, : self.cap] = self.k[i]
            newv[i][:, :, : self.cap] = self.v[i]
        self.k, self.v, self.cap = newk, newv, cap

    def feed(self, slot: int, ids: list[int], gen: torch.Generator, limit: int) -> None:
        self.pending[slot] += list(ids)
        self.decoding[slot] = True
        self.gens[slot] = gen
        self.limit[slot] = max(0, min(self.params.max_new_tokens, limit))
        self.out_ids[slot], self.out_lp[slot] = [], []
        self.t0[slot] = time.perf_counter()

    def release(self, slot: int) -> None:
        self.cached[slot], self.pending[slot], self.decoding[slot], self.gens[slot] = 0, [], False, None

    def busy(self) -> bool:
        return any(self.decoding)

    @torch.no_grad()
    def step(self) -> list[tuple[int, Generation]]:
        """One step over the slots with pending tokens (pre-fills together, right-padded; decodes together), then
        one sampled token for each of them. Returns ``(slot, Generation)`` for every turn that ended."""
        rows = [s for s in range(self.S) if self.decoding[s] and self.pending[s]]
        if not rows:
            return []
        finished: list[tuple[int, Generation]] = []
        for s in [s for s in rows if self.limit[s] == 0]:  # no room for even one token
            self.decoding[s] = False
            finished.append((s, Generation([], [], "length", 0.0)))
        rows = [s for s in rows if self.decoding[s]]
        if not rows:
            return finished
        # (model.eval()/train() walk every module: only switch when needed — the agent loop puts the model in
        # eval mode once per run)
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            # pre-fill rows (several pending tokens) and decode rows (one) run as separate forwards: padding a
            # decode row to a pre-fill's length would multiply its work by that length
            pre = [s for s in rows if len(self.pending[s]) > 1]
            dec = [s for s in rows if len(self.pending[s]) == 1]
            # a pre-fill forward costs about as much as a decode step for small models, so pre-fills are gathered:
            # they run when there are no decode rows, when they number ≥ 1/4 of the decode rows, or after waiting
            # 4 steps. Waiting changes when a trajectory's tokens are sampled, never which (its own generator).
            if pre and dec and 4 * len(pre) < len(dec) and max(self.waited[s] for s in pre) < 4:
                for s in pre:
                    self.waited[s] += 1
                pre = []
            for s in pre:
                self.waited[s] = 0
            parts = []
            if pre:
                # a group's G rollouts start from the same prompt: pre-fill it once, copy its K/V to the others
                leader = self._prompt_leaders(pre)
                leaders = [s for s in pre if leader[s] == s]
                lead_logits = self._forward(leaders)
                at = {s: i for i, s in enumerate(leaders)}
                for s in pre:
                    if leader[s] != s:
                        self._copy_slot(leader[s], s)
                parts.append(lead_logits[[at[leader[s]] for s in pre]])
            if dec:
                parts.append(self._forward(dec))
            rows = pre + dec
            if not rows:
                return finished
            logits = torch.cat(parts)
        finally:
            if was_training:
                self.model.train()
        tok, tok_lp = sample_tokens(logits, self.params, [float(torch.rand(1, generator=self.gens[s])) for s in rows])
        for i, (t, lp) in enumerate(zip(tok.tolist(), tok_lp.tolist())):
            s = rows[i]
            self.out_ids[s].append(t)
            self.out_lp[s].append(lp)
            self.pending[s] = [t]
            stop = t in self.stop_ids
            if stop or len(self.out_ids[s]) >= self.limit[s]:
                self.decoding[s] = False  # the last token stays pending: it is fed with the next turn's context
                if self.owner is not None:
                    self.owner.tokens_generated += len(self.out_ids[s])
                finished.append((s, Generation(self.out_ids[s], self.out_lp[s], "stop" if stop else "length",
                                               time.perf_counter() - self.t0[s])))
        return finished

    def _prompt_leaders(self, rows: list[int]) -> dict[int, int]:
        """For each row, the first row with the same pending prompt among the fresh slots (nothing cached) — the
        one whose pre-fill it shares; itself when it is the first or has a cached prefix."""
        first: dict[tuple[int, ...], int] = {}
        return {s: first.setdefault(tuple(self.pending[s]), s) if self.cached[s] == 0 else s for s in rows}

    def _copy_slot(self, src: int, dst: int) -> None:
        """Give slot ``dst`` the cached sequence of ``src`` (whose pending tokens were just computed)."""
        n = self.cached[src]
        for K, V in zip(self.k, self.v):
            K[dst, :, :n] = K[src, :, :n]
            V[dst, :, :n] = V[src, :, :n]
        self.cached[dst], self.pending[dst] = n, []

    @staticmethod
    def _mlp(pk: _PackedLayer, act: Any, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) · up(x))`` (Llama, Qwen, Gemma MLPs) on the packed weights."""
        g, u = _mm(x, pk.gu, pk.gu_b).split([pk.n_inter, pk.n_inter], dim=-1)
        return _mm(act(g) * u, pk.down, pk.down_b)

    def _forward(self, rows: list[int]) -> torch.Tensor:
        """Logits of the last pending token of each row; writes the rows' pending tokens' K/V into their slots."""
        from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

        if self.owner is not None:
            self.owner.forward_passes += 1
        B = len(rows)
        lens = [len(self.pending[s]) for s in rows]
        T = max(lens)
        start = [self.cached[s] for s in rows]
        self._ensure(max(a + n for a, n in zip(start, lens)))
        dev = self.k[0].device
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        for i, s in enumerate(rows):
            ids[i, : lens[i]] = torch.tensor(self.pending[s], dtype=torch.long)
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
            masks[w] = torch.zeros((B, 1, T, Lk), dtype=self.k[0].dtype, device=dev).masked_fill_(
                ~allow.unsqueeze(1), float("-inf"))
        G = self.n_heads // self.n_kv
        slot_idx = torch.tensor(rows, dtype=torch.long, device=dev)
        all_rows = B == self.S and rows == list(range(self.S))
        # decode with most slots active: attend over every slot's cache in place (the queries of idle slots are
        # zeros, their outputs dropped) rather than gathering the active slots' K/V — that copy was ~40% of a
        # decode step at 1M params / 32 slots
        wide = T == 1 and not all_rows and 2 * B >= self.S
        if wide:
            masks = {w: torch.zeros((self.S, 1, 1, Lk), dtype=m.dtype, device=dev).index_copy_(0, slot_idx, m)
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
            attn, pk = layer.self_attn, self.packed[li]
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
            K, V = self.k[li], self.v[li]  # [S, Hkv, cap, D]; k, v: [B, Hkv, T, D]
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
            qq = q.new_zeros((self.S, *q.shape[1:])).index_copy_(0, slot_idx, q) if wide else q
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
            mlp = layer.mlp if pk is None else partial(self._mlp, pk, layer.mlp.act_fn)
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
        for i, s in enumerate(rows):
            self.cached[s] = start[i] + lens[i]
            self.pending[s] = []
        return logits
