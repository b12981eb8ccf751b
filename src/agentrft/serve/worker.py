"""One scheduler thread per loaded set of weights, owning the continuous-batching engines that serve them.

A :class:`Worker` holds one model (a base, or a full fine-tuned checkpoint) and, for a base, any LoRA adapters loaded
over it. Each *variant* (``""`` = the weights as loaded, else an adapter name) has its own ``SlotEngine`` — the
rollout engine, so what was evaluated is what is served — because the engine folds the active adapter into its
packed weights when it is built. The worker's thread is the only code that touches the model: it admits queued
requests into free slots, activates a variant and runs one ``step()`` of its engine, hands new tokens to the
requests' callbacks, frees the slots of finished or cancelled requests, and loads/unloads adapters between steps.

Requests with different temperature/top_p share one engine (``SlotEngine.feed(..., params=)`` samples each slot
with its own params; ``sample_tokens`` is row-wise, so a request's tokens do not depend on its neighbours').
``temperature=0`` is greedy: nucleus ``top_p → 0`` keeps only the most likely token; the log-probs reported are
then those of the untempered distribution (T=1), as OpenAI reports them.

Each request has its own ``torch.Generator().manual_seed(seed)`` — exactly how the agent loop seeds a rollout —
so the same prompt and seed give the rollout engine's tokens; ``seed_offset`` starts that stream where a
trajectory's earlier turns left it (:mod:`agentrft.policy.seeding`), so a remote sampler's every turn matches too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from agentrft.policy.sampling import SamplingParams
from agentrft.policy.seeding import seeded_generator
from agentrft.policy.transformers_sampler import TransformersSampler
from agentrft.serve.fallback import GenerateEngine

log = logging.getLogger("agentrft.serve")

GREEDY_TOP_P = 1e-9  # nucleus mass that keeps only the top token


def sampling_params(temperature: float, top_p: float, max_tokens: int) -> SamplingParams:
    if temperature <= 0.0:
        return SamplingParams(temperature=1.0, top_p=GREEDY_TOP_P, max_new_tokens=max_tokens)
    return SamplingParams(temperature=float(temperature), top_p=float(top_p), max_new_tokens=max_tokens)


@dataclass
class GenRequest:
    """One sequence to sample (a chat choice or a completion choice). Outputs are filled by the worker thread."""

    prompt: list[int]
    params: SamplingParams
    seed: int
    variant: str = ""
    seed_offset: int = 0  # draws already taken from the seed's stream (agentrft.policy.seeding)
    stop: list[str] = field(default_factory=list)
    top_logprobs: int = 0
    on_update: Callable[["GenRequest"], None] | None = None  # from the worker thread, after new tokens / at the end
    # outputs
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | cancelled | error
    stop_text_end: int | None = None  # a stop string matched: the text is cut here
    error: BaseException | None = None
    checkpoint: str = ""
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Worker:
    """The scheduler thread of one loaded model. ``submit`` is thread-safe; everything else runs on the thread."""

    def __init__(self, model: Any, tokenizer: Any, *, stop_ids: set[int], pad_id: int, slots: int,
                 checkpoint: str, name: str = "worker", metrics: Any = None):
        self.model = model.eval()
        self.tok = tokenizer
        self.stop_ids = set(stop_ids)
        self.pad_id = int(pad_id)
        self.slots = int(slots)
        self.checkpoint = checkpoint  # the id responses report for variant ""
        self.metrics = metrics
        self.peft: Any = None  # a PeftModel over ``model`` once an adapter is loaded
        self.adapters: dict[str, str] = {}  # variant name → checkpoint id it reports
        self._active: str | None = None
        self.engines: dict[str, Any] = {}
        self.slot_req: dict[str, dict[int, GenRequest]] = {}
        self.waiting: dict[str, deque[GenRequest]] = {}
        self._queue: deque[GenRequest] = deque()
        self._ops: deque[tuple[Callable[[], Any], Any]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.paused = False  # POST /pause: no new admissions; in-flight sequences finish (serve/weight_updates.py)
        self.context = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 4096)
        self.sampler = TransformersSampler(model, stop_ids=self.stop_ids, pad_id=self.pad_id)
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.thread = threading.Thread(target=self._run, name=f"agentrft-serve-{name}", daemon=True)
        self.thread.start()

    # ---- from any thread -------------------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> None:
        with self._cond:
            if self._stopping:
                raise RuntimeError("the worker is stopping")
            self._queue.append(req)
            self._cond.notify()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the worker thread between steps (model mutations: loading adapters); returns its result."""
        box: dict[str, Any] = {}
        ev = threading.Event()
        with self._cond:
            self._ops.append((fn, (box, ev)))
            self._cond.notify()
        if not ev.wait(timeout):
            raise TimeoutError("the model worker did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue) + sum(len(q) for q in self.waiting.values())

    def active(self) -> int:
        return sum(len(d) for d in self.slot_req.values())

    def variant_idle(self, variant: str) -> bool:
        """No request of ``variant`` queued, waiting or decoding (its adapter may be unloaded)."""
        with self._cond:
            if any(r.variant == variant for r in self._queue):
                return False
            return not self.waiting.get(variant) and not self.slot_req.get(variant)

    def idle(self) -> bool:
        return self.queue_depth() == 0 and self.active() == 0

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self.paused = paused
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.thread.join(timeout=30)

    # ---- adapters (called through ``call``) ------------------------------------------------------------------
    def load_adapter(self, name: str, path: str, checkpoint: str) -> None:
        from peft import PeftModel

        if name in self.adapters:
            return
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.model, path, adapter_name=name, is_trainable=False)
            self.peft.eval()
        else:
            self.peft.load_adapter(path, adapter_name=name, is_trainable=False)
        self.adapters[name] = checkpoint
        self._active = None

    def unload_adapter(self, name: str) -> None:
        if name not in self.adapters:
            return
        for req in list(self.slot_req.get(name, {}).values()) + list(self.waiting.get(name, ())):
            self._fail(req, RuntimeError(f"adapter {name!r} was unloaded"))
        self.slot_req.pop(name, None)
        self.waiting.pop(name, None)
        eng = self.engines.pop(name, None)
        if eng is not None:
            eng.close()
        others = [a for a in self.adapters if a != name]
        if others:
            self.peft.set_adapter(others[0])
        self.peft.delete_adapter(name)
        del self.adapters[name]
        self._active = None

    # ---- the thread ------------------------------------------------------------------------------------------
    def _activate(self, variant: str) -> Any:
        """Make ``variant``'s weights the model's (adapter on/off); returns the module to call for a forward."""
        if self.peft is None:
            return self.model
        if self._active != variant:
            lora = self.peft.base_model
            if variant == "":
                lora.disable_adapter_layers()
            else:
                lora.enable_adapter_layers()
                self.peft.set_adapter(variant)
            self._active = variant
        return self.peft

    def _engine(self, variant: str) -> Any:
        eng = self.engines.get(variant)
        if eng is None:
            self._activate(variant)
            # one engine-wide default; every request feeds its own params
            params = SamplingParams(max_new_tokens=self.context)
            eng = self.sampler.slot_engine(params, slots=self.slots)
            if eng is None:  # an architecture the engine does not cover: batched HF generate
                eng = GenerateEngine(self.sampler, params=params, slots=self.slots)
            # (built while the variant is active: its packed weights fold in that adapter, or none)
            self.engines[variant] = eng
            self.slot_req[variant] = {}
        return eng

    def _fail(self, req: GenRequest, err: BaseException) -> None:
        req.error, req.finish_reason = err, "error"
        self._finish(req)

    def _finish(self, req: GenRequest) -> None:
        req.done.set()
        if req.on_update is not None:
            try:
                req.on_update(req)
            except Exception:  # noqa: BLE001 - a callback must not kill the scheduler
                log.exception("request callback failed")

    def _run(self) -> None:
        while True:
            with self._cond:
                while (not self._stopping and not self._queue and not self._ops and self.active() == 0
                       and (self.paused or not any(self.waiting.values()))):
                    self._cond.wait()
                if self._stopping:
                    break
                new = list(self._queue)
                self._queue.clear()
                ops = list(self._ops)
                self._ops.clear()
            for fn, (box, ev) in ops:
                try:
                    box["value"] = fn()
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    box["error"] = e
                ev.set()
            for req in new:
                if req.variant and req.variant not in self.adapters:
                    self._fail(req, LookupError(f"adapter {req.variant!r} is not loaded"))
                    continue
                self.waiting.setdefault(req.variant, deque()).append(req)
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001 - fail the requests in flight, keep serving
                log.exception("engine step failed")
                for variant in list(self.slot_req):
                    for slot, req in list(self.slot_req[variant].items()):
                        self._fail(req, e)
                        self.engines[variant].release(slot)
                    self.slot_req[variant] = {}
                for q in self.waiting.values():  # (e.g. the engine could not be built: nothing would admit them)
                    while q:
                        self._fail(q.popleft(), e)
        for variant, reqs in self.slot_req.items():
            for req in reqs.values():
                self._fail(req, RuntimeError("server shutting down"))
        for q in self.waiting.values():
            for req in q:
                self._fail(req, RuntimeError("server shutting down"))
        for eng in self.engines.values():
            eng.close()

    def _tick(self) -> None:
        for variant in list(self.waiting) if not self.paused else []:
            q = self.waiting[variant]
            while q and q[0].cancelled.is_set():
                req = q.popleft()
                req.finish_reason = "cancelled"
                self._finish(req)
            if not q:
                continue
            eng = self._engine(variant)
            busy = self.slot_req[variant]
            free = [s for s in range(eng.S) if s not in busy]
            while free and q:
                req = q.popleft()
                if req.cancelled.is_set():
                    req.finish_reason = "cancelled"
                    self._finish(req)
                    continue
                slot = free.pop(0)
                eng.release(slot)
                req.checkpoint = self.adapters.get(variant, self.checkpoint) if variant else self.checkpoint
                req.started_at = time.perf_counter()
                limit = min(req.params.max_new_tokens, self.context - len(req.prompt))
                eng.feed(slot, req.prompt, seeded_generator(req.seed, req.seed_offset), limit, params=req.params)
                busy[slot] = req
        for variant, busy in self.slot_req.items():
            if not busy:
                continue
            eng = self.engines[variant]
            for slot, req in list(busy.items()):  # client gone: free its slot now
                if req.cancelled.is_set():
                    eng.release(slot)
                    del busy[slot]
                    req.finish_reason = "cancelled"
                    self._finish(req)
            if not busy:
                continue
            self._activate(variant)
            finished = {slot: g for slot, g in eng.step()}
            n_new = 0
            for slot, req in list(busy.items()):
                g = finished.get(slot)
                ids = g.ids if g is not None else eng.out_ids[slot]
                lps = g.logprobs if g is not None else eng.out_lp[slot]
                n_new += len(ids) - len(req.ids)
                req.ids, req.logprobs = list(ids), list(lps)
                if g is None and req.stop and self._stop_hit(req):
                    g_reason = "stop"
                elif g is not None:
                    g_reason = g.finish_reason
                    if req.stop:
                        self._stop_hit(req)
                else:
                    if req.on_update is not None:
                        req.on_update(req)
                    continue
                eng.release(slot)
                del busy[slot]
                req.finish_reason = g_reason
                if req.top_logprobs:
                    req.top = self._top_logprobs(variant, req)
                self._finish(req)
            if self.metrics is not None:
                self.metrics.tokens_generated(n_new)
        self._close_idle_adapter_engines()

    def _close_idle_adapter_engines(self) -> None:
        """An adapter's engine holds a KV cache of ``slots`` sequences and a packed copy of the projections (for a
        10M model at 32 slots ~200 MB): close it when the adapter has nothing in flight, so memory grows with the
        adapters in use, not the adapters loaded. Its buffers go to the sampler's spares and are reused by the next
        engine built (the base's engine stays)."""
        for variant in [v for v in self.engines if v]:
            if not self.slot_req.get(variant) and not self.waiting.get(variant):
                self.engines.pop(variant).close()
                self.slot_req.pop(variant, None)

    def _stop_hit(self, req: GenRequest) -> bool:
        ids = req.ids[:-1] if req.ids and req.ids[-1] in self.stop_ids else req.ids
        text = self.tok.decode(ids, skip_special_tokens=False)
        hits = [i for i in (text.find(s) for s in req.stop) if i >= 0]
        if not hits:
            return False
        req.stop_text_end = min(hits)
        return True

    @torch.no_grad()
    def prompt_logprobs(self, variant: str, prompt: list[int], top: int = 0
                        ) -> tuple[list[float], list[list[tuple[int, float]]]]:
        """Teacher-forced log-probs of ``prompt[1:]`` under ``variant``'s weights (T = 1, untempered, as OpenAI and
        vLLM report prompt log-probs): ``log p(prompt[k] | prompt[:k])`` for k ≥ 1, and the ``top`` most likely
        tokens at each of those positions. Call it on the worker thread (:meth:`call`): it runs the model."""
        if len(prompt) < 2:
            return [], []
        model = self._activate(variant)
        ids = torch.tensor([prompt], dtype=torch.long)
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        chosen = lp.gather(-1, torch.tensor(prompt[1:], dtype=torch.long)[:, None])[:, 0].tolist()
        tops: list[list[tuple[int, float]]] = []
        if top:
            v, i = lp.topk(min(top, lp.shape[-1]), dim=-1)
            tops = [list(zip(ii.tolist(), vv.tolist())) for ii, vv in zip(i, v)]
        return chosen, tops

    @torch.no_grad()
    def _top_logprobs(self, variant: str, req: GenRequest) -> list[list[tuple[int, float]]]:
        """The ``top_logprobs`` most likely tokens at each sampled position, teacher-forced over prompt + output
        (the engine keeps only the sampled token's log-prob)."""
        if not req.ids:
            return []
        model = self._activate(variant)
        ids = torch.tensor([req.prompt + req.ids[:-1]], dtype=torch.long)
        logits = model(input_ids=ids).logits[0, len(req.prompt) - 1 :].float()
        if req.params.top_p > GREEDY_TOP_P:
            logits = logits / req.params.temperature
        lp = torch.log_softmax(logits, dim=-1)
        v, i = lp.topk(min(req.top_logprobs, lp.shape[-1]), dim=-1)
        return [list(zip(ii.tolist(), vv.tolist())) for ii, vv in zip(i, v)]
