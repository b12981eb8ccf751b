"""The rollout engine's slots: a preallocated KV cache with one slot per live trajectory, continuous batching of
pre-fills and decode steps, and the seeded sampling of each slot's next token."""

from __future__ import annotations

import time
from typing import Any

import torch

from agentrft.policy.engine.forward import DecoderForward
from agentrft.policy.engine.packing import PackedLayer, pack_layers
from agentrft.policy.sampling import Generation, SamplingParams, sample_tokens


class SlotEngine:
    """Decode many trajectories at once, each in its own *slot* of a preallocated KV cache that it keeps across
    turns. Runs the architectures :class:`~agentrft.policy.engine.forward.DecoderForward` supports (the
    ``decode_engine`` rows of :data:`agentrft.policy.architectures.ARCHITECTURES`).

    ``feed(slot, ids, gen, limit)`` appends token ids to the slot's sequence (a prompt, or everything since the
    slot's last turn: the turn's final sampled token plus the rendered tool results) and starts a new assistant
    turn. ``step()`` runs one forward pass over the slots that need one — the pending tokens of newly fed slots
    (pre-fill; only those tokens, the prefix is already cached) or the last sampled token of decoding slots — and
    samples one token per decoding slot; it returns the turns that ended (stop token or the slot's limit).
    A slot waiting on tools costs nothing; a slot that finished is freed with ``release`` and reused.

    Sampling and the recorded log-probs are exactly ``TransformersSampler.generate``'s: ``log softmax(z/T)[x]``
    over the untruncated temperature-scaled distribution, ``x = F'^{-1}(u)`` with ``u`` drawn from the row's own
    generator once per sampled token — so a trajectory's tokens depend only on its seed and its own context.
    The forward (``DecoderForward``) uses the model's own modules, so LoRA adapters apply; the learner's
    teacher-forced log-probs agree to float32 rounding (tests/test_token_exact.py checks ≤ 1e-4).

    The engine keeps the model in eval mode for its life (``eval()``/``train()`` walk every module, too costly per
    step) and ``close`` restores the mode it found.
    """

    # layers' projections are packed (``PackedLayer``) up to this size: packing a large model costs a noticeable
    # share of each rollout phase while its decode steps, dominated by the output layer, ran no faster (Gemma 3
    # 270M, docs/benchmarks.md), so large models keep calling their own modules
    PACK_MAX_BYTES = 256 << 20

    def __init__(self, model: Any, *, stop_ids: set[int], pad_id: int, params: SamplingParams, slots: int,
                 owner: Any = None):
        self.model = model
        self.decoder = DecoderForward(model)
        self.n_layers, self.n_kv, self.head_dim = self.decoder.n_layers, self.decoder.n_kv, self.decoder.head_dim
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
        self.slot_params: list[SamplingParams | None] = [None] * slots  # per-slot override of ``params`` (feed)
        self.out_ids: list[list[int]] = [[] for _ in range(slots)]
        self.out_lp: list[list[float]] = [[] for _ in range(slots)]
        self.t0 = [0.0] * slots
        self.waited = [0] * slots  # steps a fed slot's pre-fill has been deferred
        self.owner = owner  # a TransformersSampler whose counters this engine adds to
        self.was_training = model.training
        if self.was_training:
            model.eval()
        self._take_spare_kv()
        spare = getattr(owner, "spare_packed", None)
        if owner is not None:
            owner.spare_packed = None
        self.packed: list[PackedLayer | None] = pack_layers(self.decoder.layers, spare, self.PACK_MAX_BYTES)

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
        if self.was_training:
            self.model.train()
            self.was_training = False

    supports = staticmethod(DecoderForward.supports)

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

    def feed(self, slot: int, ids: list[int], gen: torch.Generator, limit: int,
             params: SamplingParams | None = None) -> None:
        """``params`` overrides the engine's sampling params for this turn (a server batches requests with different
        temperatures/top_p in one engine); None uses the engine's."""
        p = params or self.params
        self.pending[slot] += list(ids)
        self.decoding[slot] = True
        self.gens[slot] = gen
        self.slot_params[slot] = params
        self.limit[slot] = max(0, min(p.max_new_tokens, limit))
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
        if self.model.training:  # switched back to training while this engine is open: decode in eval mode
            self.model.eval()
            self.was_training = True
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
        tok, tok_lp = self._sample(rows, logits, [float(torch.rand(1, generator=self.gens[s])) for s in rows])
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

    def _sample(self, rows: list[int], logits: torch.Tensor, u: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """``sample_tokens`` per row with that row's params: one call when all rows share them (the rollout case),
        else one per distinct (temperature, top_p) — ``sample_tokens`` is row-wise, so a row's token and log-prob do
        not depend on how rows are grouped."""
        ps = [self.slot_params[s] or self.params for s in rows]
        keys = [(p.temperature, p.top_p) for p in ps]
        if len(set(keys)) == 1:
            return sample_tokens(logits, ps[0], u)
        tok = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        lp = torch.empty(len(rows), dtype=torch.float32, device=logits.device)
        for key in dict.fromkeys(keys):
            idx = [i for i, k in enumerate(keys) if k == key]
            t, l = sample_tokens(logits[idx], ps[idx[0]], [u[i] for i in idx])
            tok[idx], lp[idx] = t, l.float()
        return tok, lp

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

    def _forward(self, rows: list[int]) -> torch.Tensor:
        """Logits of the last pending token of each row; writes the rows' pending tokens' K/V into their slots."""
        if self.owner is not None:
            self.owner.forward_passes += 1
        B = len(rows)
        lens = [len(self.pending[s]) for s in rows]
        T = max(lens)
        start = [self.cached[s] for s in rows]
        self._ensure(max(a + n for a, n in zip(start, lens)))
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        for i, s in enumerate(rows):
            ids[i, : lens[i]] = torch.tensor(self.pending[s], dtype=torch.long)
        logits = self.decoder(ids, rows, start, lens, self.k, self.v, self.packed, self.S)
        for i, s in enumerate(rows):
            self.cached[s] = start[i] + lens[i]
            self.pending[s] = []
        return logits
