"""The OpenAI-compatible HTTP API (FastAPI): models, chat completions, completions, LoRA hot-loading, health and
metrics. See docs/serve.md.

Every request goes: auth → body size → JSON → pydantic body (400 naming the field) → model lookup (404) →
render with the model's chat template → limits (400 context/max_tokens, 429 rate) → one ``GenRequest`` per choice
on the model's worker → answer (JSON, or server-sent events) → trace. Errors are OpenAI-shaped at every step; no
request can produce a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentrft import bounded
from agentrft.rollout.parse import parse_turn
from agentrft.rollout.render import TemplateError
from agentrft.serve.approvals import ApprovalHold
from agentrft.serve.config import ServeConfig
from agentrft.serve.errors import APIError, validation_message
from agentrft.serve.limits import Metrics, TokenRateLimiter
from agentrft.serve.models import ModelManager, Target
from agentrft.serve.response_format import AnswerCheck
from agentrft.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraRequest,
    NamedToolChoice,
    UnloadLoraRequest,
)
from agentrft.serve.streaming import ToolCallStream
from agentrft.serve.worker import GenRequest, sampling_params

log = logging.getLogger("agentrft.serve")

CHECKPOINT_HEADER = "X-Agentrft-Checkpoint"
TRACE_HEADER = "X-Trace-Id"
MAX_PROMPTS = 256  # prompts in one /v1/completions request


class TraceWriter:
    """Writes traces to the store on one background thread, so a request never waits on the database."""

    def __init__(self, store: Any):
        self.store = store
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="agentrft-traces")
        self._pending: list[Any] = []
        self._lock = threading.Lock()
        self.errors = 0

    def add(self, trace: dict) -> None:
        fut = self.pool.submit(self._write, trace)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [fut]

    def _write(self, trace: dict) -> None:
        try:
            self.store.record_traces([trace])
        except Exception:  # noqa: BLE001 - a trace that cannot be written is logged and counted, never fatal
            self.errors += 1
            log.exception("could not record trace %s", trace.get("request_id"))

    def flush(self, timeout: float = 30.0) -> None:
        with self._lock:
            pending = list(self._pending)
        for f in pending:
            f.result(timeout=timeout)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class ServerState:
    def __init__(self, cfg: ServeConfig, manager: ModelManager | None = None, store: Any = None):
        self.cfg = cfg
        self.metrics = Metrics()
        if store is None and cfg.store:
            from agentrft.store import RunStore

            store = RunStore(cfg.store)
        self.store = store
        self.manager = manager or ModelManager(cfg, metrics=self.metrics, store=store)
        self.limiter = TokenRateLimiter(cfg.rate_limit_tpm) if cfg.rate_limit_tpm else None
        self.traces = TraceWriter(store) if (store is not None and cfg.record_traces) else None
        self.approvals = ApprovalHold(store, cfg)  # tool calls held for a person's decision (issue 17)
        self.deploy: Any = None  # deployments (serve/deployments.py), set by create_app when there is a store
        m = self.metrics
        m.gauges["agentrft_queue_depth"] = lambda: sum(w.queue_depth() for w in self.manager.workers())
        m.gauges["agentrft_active_sequences"] = lambda: sum(w.active() for w in self.manager.workers())
        m.gauges["agentrft_loaded_adapters"] = lambda: len(self.manager.lru)
        m.gauges["agentrft_loaded_models"] = lambda: len(self.manager.workers())
        m.gauges["agentrft_loaded_weights_bytes"] = lambda: self.manager.loaded_bytes()

    def close(self) -> None:
        if self.deploy is not None:
            self.deploy.close()
        if self.traces is not None:
            self.traces.close()
        self.manager.close()


# ---------------------------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig, *, state: ServerState | None = None) -> FastAPI:
    st = state or ServerState(cfg)
    app = FastAPI(title="agentrft serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = st

    # ---- errors: always OpenAI-shaped ----------------------------------------------------------------------
    def _count_error(request: Request, status: int) -> None:
        ep = {"/v1/chat/completions": "chat.completions", "/v1/completions": "completions"}.get(request.url.path)
        if ep is not None:
            st.metrics.request(ep, "", status)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        _count_error(request, e.status)
        _trace_error(request, e)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def _trace_error(request: Request, e: APIError) -> None:
        """A refused request whose body was readable is a trace too (status and message), so production traffic
        in the store includes what was refused."""
        body = getattr(request.state, "chat_body", None)
        if body is None or st.traces is None:
            return
        tid = (request.headers.get(TRACE_HEADER) or "").strip()[:200] or f"trace_{uuid.uuid4().hex}"
        is_chat = isinstance(body, ChatCompletionRequest)
        msgs = [m.model_dump(exclude_none=True) for m in body.messages] if is_chat else []
        record(**deploy_fields(request), request_id=f"req_{uuid.uuid4().hex}", trace_id=tid,
               endpoint="chat.completions" if is_chat else "completions", model=body.model, checkpoint_id="",
               status=e.status, error=e.message[:2000], messages=msgs,
               tools=[t.model_dump(exclude_none=True) for t in body.tools] if is_chat and body.tools else None,
               params={}, choices=[], tool_calls=[], prompt_tokens=0, completion_tokens=0, latency_s=0.0,
               user=body.user, metadata=body.metadata or {})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(list(e.errors()))
        return JSONResponse(APIError(422, msg, param=param).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        msg = {404: f"no route {request.method} {request.url.path}",
               405: f"method {request.method} not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal error ({type(e).__name__})", type="server_error").body(),
                            status_code=500)

    # ---- auth and body size, before anything reads the body ----------------------------------------------
    @app.middleware("http")
    async def _guard(request: Request, call_next: Any) -> Response:
        # the dashboard under /ui checks the same token itself (a Bearer header, or the cookie its ?token= login sets
        # for browsers, which send no Authorization header)
        if cfg.token and request.url.path != "/health" and not _is_ui(request.url.path):
            auth = request.headers.get("authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), cfg.token.encode()):
                e = APIError(401, "Incorrect API key provided" if auth else "Missing bearer token (Authorization: "
                             "Bearer <token>)", code="invalid_api_key")
                _count_error(request, 401)
                return JSONResponse(e.body(), status_code=401)
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > cfg.max_body_bytes
            except ValueError:
                return JSONResponse(APIError(400, "bad Content-Length").body(), status_code=400)
            if too_big:
                e = APIError(413, f"request body of {length} bytes exceeds the limit of {cfg.max_body_bytes} bytes",
                             code="request_too_large")
                _count_error(request, 413)
                return JSONResponse(e.body(), status_code=413)
        return await call_next(request)

    async def body_as(request: Request, model: type[BaseModel]) -> Any:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise APIError(413, f"request body exceeds the limit of {cfg.max_body_bytes} bytes",
                               code="request_too_large")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:  # bounded: 5,000 levels of '[' was a RecursionError and a 500 with a traceback in the log
            data = bounded.loads_json(raw)
        except bounded.BoundsError as e:
            raise APIError(400, f"the body is {e}", code="invalid_json") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object")
        try:
            obj = model.model_validate(data)
            if isinstance(obj, (ChatCompletionRequest, CompletionRequest)):
                request.state.chat_body = obj  # for the trace of a request refused after this point
            return obj
        except ValidationError as e:
            msg, param = validation_message(e.errors(include_url=False))
            raise APIError(400, msg, param=param) from None

    async def resolve(model_id: str) -> Target:
        return await asyncio.to_thread(st.manager.resolve, model_id)

    # ---- simple endpoints -----------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": st.manager.base_id}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(st.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models() -> dict:
        data = await asyncio.to_thread(st.manager.list_models)
        return {"object": "list", "data": data + (st.deploy.models() if st.deploy is not None else [])}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        data = await asyncio.to_thread(st.manager.list_models)
        for m in data + (st.deploy.models() if st.deploy is not None else []):
            if m["id"] == model_id:
                return m
        raise APIError(404, f"The model '{model_id}' does not exist", param="model", code="model_not_found")

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> PlainTextResponse:
        req: LoadLoraRequest = await body_as(request, LoadLoraRequest)
        with st.manager.lock:
            if req.lora_name in st.manager.adapter_paths:
                raise APIError(400, f"The lora adapter '{req.lora_name}' has already been loaded", param="lora_name")
        st.manager.register_adapter(req.lora_name, req.lora_path)
        try:  # load now, so a broken adapter fails here rather than on first use
            (await resolve(req.lora_name)).done()
        except APIError:
            st.manager.unregister_adapter(req.lora_name)
            raise
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> PlainTextResponse:
        req: UnloadLoraRequest = await body_as(request, UnloadLoraRequest)
        if not await asyncio.to_thread(st.manager.unregister_adapter, req.lora_name):
            raise APIError(404, f"The lora adapter '{req.lora_name}' cannot be found", param="lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    # ---- shared request plumbing ----------------------------------------------------------------------------
    def client_key(request: Request) -> str:
        route = getattr(request.state, "deploy_route", None)
        if route is not None and route.arm == "shadow":  # the server's own shadow request: its own token budget,
            return f"shadow:{route.deployment}"        # never the client's
        auth = request.headers.get("authorization")
        return auth or (request.client.host if request.client else "?")

    def check_limits(request: Request, target: Target, prompt_lens: list[int], max_tokens: int | None,
                     n: int) -> tuple[int, int]:
        """``(max new tokens per choice, tokens reserved)`` for ``n`` choices of each prompt; raises 400/429."""
        if n > cfg.max_n:
            raise APIError(400, f"n={n} exceeds this server's limit of {cfg.max_n}", param="n")
        if len(prompt_lens) > MAX_PROMPTS:
            raise APIError(400, f"{len(prompt_lens)} prompts in one request; at most {MAX_PROMPTS}", param="prompt")
        ctx = target.worker.context
        longest = max(prompt_lens)
        if longest >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens; the prompt has {longest}",
                           param="messages", code="context_length_exceeded")
        if max_tokens is not None and max_tokens > cfg.max_tokens_cap:
            raise APIError(400, f"max_tokens is too large: {max_tokens}; this server allows at most "
                           f"{cfg.max_tokens_cap}", param="max_tokens", code="max_tokens_too_large")
        if max_tokens is not None and longest + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens; the prompt has {longest} and "
                           f"max_tokens asks for {max_tokens} more", param="max_tokens", code="context_length_exceeded")
        mt = max_tokens if max_tokens is not None else min(cfg.default_max_tokens, ctx - longest)
        reserve = sum(prompt_lens) + mt * n * len(prompt_lens)
        if st.limiter is not None:
            wait = st.limiter.reserve(client_key(request), reserve)
            if wait is not None:
                st.metrics.rate_limited += 1
                retry = "60" if wait == float("inf") else str(max(1, int(wait + 0.999)))
                raise APIError(429, f"Rate limit reached: this request needs {reserve} tokens of the "
                               f"{cfg.rate_limit_tpm} tokens per minute allowed; retry in {retry} s",
                               code="rate_limit_exceeded", headers={"Retry-After": retry})
        return mt, reserve

    def trace_ids(request: Request) -> tuple[str, str]:
        tid = (request.headers.get(TRACE_HEADER) or "").strip()[:200]
        return tid or f"trace_{uuid.uuid4().hex}", f"req_{uuid.uuid4().hex}"

    def seeds(seed: int | None, n: int) -> list[int]:
        if seed is None:
            return [secrets.randbits(63) for _ in range(n)]
        return [seed + i for i in range(n)]  # choice 0 is exactly the agent loop's manual_seed(seed)

    async def run_or_refund(request: Request, target: Target, reqs: list[GenRequest], reserved: int) -> None:
        """``run_all``; when it fails or is cancelled nothing was answered, so the rate-limit reservation goes back."""
        try:
            await run_all(request, target, reqs)
        except BaseException:
            if st.limiter is not None:
                st.limiter.refund(client_key(request), reserved)
            raise

    async def run_all(request: Request, target: Target, reqs: list[GenRequest]) -> None:
        """Submit and wait for every choice; a client that disconnects cancels them (frees their slots)."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        left = [len(reqs)]

        def on_update(r: GenRequest) -> None:
            if r.done.is_set():
                def dec() -> None:
                    left[0] -= 1
                    if left[0] == 0:
                        done.set()
                loop.call_soon_threadsafe(dec)

        for r in reqs:
            r.on_update = on_update
            target.worker.submit(r)
        try:
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        for r in reqs:
                            r.cancelled.set()
                        raise APIError(499, "client disconnected")
        except asyncio.CancelledError:
            for r in reqs:
                r.cancelled.set()
            raise
        failed = next((r for r in reqs if r.error is not None), None)
        if failed is not None:
            raise APIError(503, f"generation failed: {failed.error}", code="generation_failed")

    def output_text(target: Target, r: GenRequest) -> tuple[list[int], str]:
        """The content token ids (without the end-of-turn token) and text (cut at a stop string)."""
        ids = r.ids[:-1] if r.ids and r.finish_reason == "stop" and r.ids[-1] in target.worker.stop_ids else r.ids
        text = target.tokenizer.decode(ids, skip_special_tokens=False)
        if r.stop_text_end is not None:
            text = text[: r.stop_text_end]
        return ids, text

    def headers(target: Target, trace_id: str, request_id: str) -> dict[str, str]:
        return {CHECKPOINT_HEADER: target.checkpoint, TRACE_HEADER: trace_id, "X-Request-Id": request_id}

    def deploy_fields(request: Request) -> dict[str, Any]:
        """``deployment`` and ``arm`` of a request to a deployment's name (serve/deployments.py), else nothing."""
        r = getattr(request.state, "deploy_route", None)
        return {"deployment": r.deployment, "arm": r.arm} if r is not None else {}

    def record(**kw: Any) -> None:
        if st.traces is not None:
            st.traces.add(kw)

    # ---- chat completions -----------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.perf_counter()
        req: ChatCompletionRequest = await body_as(request, ChatCompletionRequest)

        async def run(model_id: str) -> Response:
            target = await resolve(model_id)
            resp = None
            try:
                resp = await _chat(request, req, target, t0)
                return resp
            finally:
                if not isinstance(resp, StreamingResponse):  # (a stream releases its target when it ends)
                    target.done()

        if st.deploy is None:
            return await run(req.model)
        return await st.deploy.serve(request, req.model, req.user, req.model_dump(exclude_unset=True), run)

    async def _chat(request: Request, req: ChatCompletionRequest, target: Target, t0: float) -> Response:
        trace_id, request_id = trace_ids(request)
        messages = [_template_message(m) for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        offered = None if req.tool_choice == "none" else tools
        held_stream = bool(req.stream) and st.approvals.holds(offered)  # generated whole, held, then streamed
        try:
            prompt = await asyncio.to_thread(target.renderer.prompt_ids, messages, offered)
        except TemplateError as e:
            raise APIError(422, f"the model's chat template cannot render these messages: {e}",
                           param="messages") from None
        except Exception as e:  # noqa: BLE001 - jinja raises many kinds (TemplateError, UndefinedError, TypeError)
            raise APIError(422, f"the model's chat template cannot render these messages: {type(e).__name__}: {e}",
                           param="messages") from None
        # tool_choice "required" / a named function: the turn is started with the dialect's call prefix (given to the
        # model as prompt tokens, returned as part of the answer's text), so it can only continue as a call
        forced = ""
        if req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice):
            name = req.tool_choice.function.name if isinstance(req.tool_choice, NamedToolChoice) else None
            forced = target.renderer.dialect.forced_prefix(name)
            prompt = list(prompt) + target.renderer.encode(forced)
        max_tokens = req.max_completion_tokens or req.max_tokens
        mt, reserved = check_limits(request, target, [len(prompt)], max_tokens, req.n)
        params = sampling_params(req.temperature, req.top_p, mt)
        top = (req.top_logprobs or 0) if req.logprobs else 0
        gens = [GenRequest(list(prompt), params, s, target.variant, stop=list(req.stop), top_logprobs=top)
                for s in seeds(req.seed, req.n)]
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        hdrs = headers(target, trace_id, request_id)
        fmt = AnswerCheck.of(req.response_format)
        trace_base = dict(**deploy_fields(request), request_id=request_id, trace_id=trace_id,
                          endpoint="chat.completions", model=req.model,
                          checkpoint_id=target.checkpoint, messages=[m.model_dump(exclude_none=True) for m in req.messages],
                          tools=tools, user=req.user, metadata=req.metadata or {},
                          params={"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, "n": req.n,
                                  "max_tokens": max_tokens, "stop": req.stop, "tool_choice": _dump(req.tool_choice),
                                  "response_format": _dump(req.response_format)})

        def finish(choices: list[dict], calls: list[dict], usage: dict, status: int = 200) -> None:
            st.metrics.request("chat.completions", req.model, status)
            st.metrics.tokens(req.model, usage["prompt_tokens"], usage["completion_tokens"])
            st.metrics.latency("chat.completions", time.perf_counter() - t0)
            if st.limiter is not None:
                st.limiter.refund(client_key(request), reserved - usage["total_tokens"])
            record(**trace_base, status=status, choices=choices, tool_calls=calls,
                   prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                   latency_s=time.perf_counter() - t0)

        if req.stream and not held_stream:
            return StreamingResponse(
                _chat_stream(request, target, req, gens, cid, created, offered is not None, finish, forced, fmt),
                media_type="text/event-stream", headers={**hdrs, "Cache-Control": "no-cache"})

        await run_or_refund(request, target, gens, reserved)
        choices, all_calls = [], []
        for i, r in enumerate(gens):
            ids, text = output_text(target, r)
            msg, calls, malformed = _assistant_message(forced + text, offered is not None, target.renderer.parse)
            if req.parallel_tool_calls is False and len(calls) > 1:  # the client allows one call per turn
                calls = calls[:1]
                msg["tool_calls"] = calls
            if malformed:
                st.metrics.malformed(req.model)
            fr = "tool_calls" if calls else ("length" if r.finish_reason == "length" and r.stop_text_end is None
                                             else "stop")
            choice: dict[str, Any] = {"index": i, "message": msg, "finish_reason": fr,
                                      "logprobs": _chat_logprobs(target, ids, r) if req.logprobs else None}
            _check_format(fmt, choice, req.model, st.metrics)
            choices.append(choice)
            all_calls += calls
        usage = _usage(len(prompt), sum(len(r.ids) for r in gens))
        body = {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "system_fingerprint": target.checkpoint, "choices": choices, "usage": usage}
        body, status = await st.approvals.hold(request, body, choices, trace_id)  # 200, or 202 pending approval
        finish([{"index": c["index"], "message": c["message"], "finish_reason": c["finish_reason"],
                 **{k: c[k] for k in ("approvals", "response_format_errors") if k in c}} for c in choices],
               all_calls, usage)
        if held_stream:
            return st.approvals.as_stream(body, req, hdrs)
        return JSONResponse(body, status_code=status, headers=hdrs)

    async def _chat_stream(request: Request, target: Target, req: ChatCompletionRequest, gens: list[GenRequest],
                           cid: str, created: int, tools_on: bool, finish: Any, forced: str = "",
                           fmt: AnswerCheck | None = None) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        for idx, r in enumerate(gens):
            r.on_update = lambda r, idx=idx: loop.call_soon_threadsafe(q.put_nowait, (idx, len(r.ids), r.done.is_set()))
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": target.checkpoint}

        def chunk(choices: list[dict], usage: Any = None) -> bytes:
            body = {**base, "choices": choices}
            if include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

        streams = [ToolCallStream(tools_on, target.renderer.dialect, 1 if req.parallel_tool_calls is False else None)
                   for _ in gens]
        sent_lp = [0] * len(gens)
        open_ = set(range(len(gens)))
        choices_out: list[dict] = [{} for _ in gens]
        all_calls: list[dict] = []
        try:
            for r in gens:
                target.worker.submit(r)
            for i in range(len(gens)):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            while open_:
                idx, _, _ = await q.get()
                while not q.empty():  # coalesce: handle every choice's latest state once
                    q.get_nowait()
                for i in sorted(open_):
                    r = gens[i]
                    done = r.done.is_set()
                    if r.error is not None:
                        err = APIError(503, f"generation failed: {r.error}", code="generation_failed")
                        yield f"data: {json.dumps(err.body())}\n\n".encode()
                        for x in gens:
                            x.cancelled.set()
                        return
                    snap = list(r.ids)
                    if done:
                        ids, text = output_text(target, r)
                    else:
                        ids = snap
                        text = target.tokenizer.decode(snap, skip_special_tokens=False)
                        if r.stop_text_end is not None:
                            text = text[: r.stop_text_end]
                        text = _hold_stop_prefix(text, r.stop)
                    deltas = streams[i].feed(forced + text, final=done)
                    lp = None
                    if req.logprobs and (deltas or done):
                        upto = len(ids) if done else max(0, len(snap) - 1)
                        lp = {"content": _chat_logprobs(target, ids[:upto], r, start=sent_lp[i])["content"]}
                        sent_lp[i] = max(sent_lp[i], upto)
                    for d in deltas:
                        yield chunk([{"index": i, "delta": d, "logprobs": lp, "finish_reason": None}])
                        lp = None
                    if lp and lp["content"]:
                        yield chunk([{"index": i, "delta": {}, "logprobs": lp, "finish_reason": None}])
                    if done:
                        parsed_calls = streams[i].calls
                        if streams[i].malformed:
                            st.metrics.malformed(req.model)
                        fr = "tool_calls" if parsed_calls else (
                            "length" if r.finish_reason == "length" and r.stop_text_end is None else "stop")
                        msg: dict[str, Any] = {"role": "assistant", "content": streams[i].content or None}
                        if parsed_calls:
                            msg["tool_calls"] = parsed_calls
                        choices_out[i] = {"index": i, "message": msg, "finish_reason": fr}
                        last: dict[str, Any] = {"index": i, "delta": {}, "logprobs": None, "finish_reason": fr}
                        # the format's verdict rides on the choice's last chunk
                        if _check_format(fmt, choices_out[i], req.model, st.metrics):
                            last["response_format_errors"] = choices_out[i]["response_format_errors"]
                        yield chunk([last])
                        all_calls.extend(parsed_calls)
                        open_.discard(i)
            usage = _usage(len(gens[0].prompt), sum(len(r.ids) for r in gens))
            if include_usage:
                yield chunk([], usage)
            yield b"data: [DONE]\n\n"
            finish(choices_out, all_calls, usage)
        finally:
            for r in gens:  # a client that went away mid-stream frees its slots
                if not r.done.is_set():
                    r.cancelled.set()
            target.done()

    # ---- completions (text or token-id prompts; token-exact sampling for trainers) --------------------------
    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        t0 = time.perf_counter()
        req: CompletionRequest = await body_as(request, CompletionRequest)
        if req.stream:
            raise APIError(400, "stream is not supported on /v1/completions by this server", param="stream")
        async def run(model_id: str) -> Response:
            target = await resolve(model_id)
            try:
                return await _completions(request, req, target, t0)
            finally:
                target.done()

        if st.deploy is None:
            return await run(req.model)
        return await st.deploy.serve(request, req.model, req.user, req.model_dump(exclude_unset=True), run)

    async def _completions(request: Request, req: CompletionRequest, target: Target, t0: float) -> Response:
        trace_id, request_id = trace_ids(request)
        vocab = len(target.tokenizer)
        prompts: list[list[int]] = []
        for j, p in enumerate(req.prompts()):
            if isinstance(p, str):
                prompts.append(target.renderer.encode(p))
            else:
                bad = next((t for t in p if not 0 <= t < vocab), None)
                if bad is not None:
                    raise APIError(400, f"prompt token id {bad} is out of range for this model's vocabulary "
                                   f"(0..{vocab - 1})", param="prompt")
                prompts.append(list(p))
            if not prompts[-1]:
                raise APIError(400, f"prompt {j} is empty", param="prompt")
        mt, reserved = check_limits(request, target, [len(p) for p in prompts], req.max_tokens, req.n)
        params = sampling_params(req.temperature, req.top_p, mt)
        top = req.logprobs or 0
        ss = seeds(req.seed, req.n)
        gens = [GenRequest(list(p), params, ss[k], target.variant, stop=list(req.stop), top_logprobs=top,
                           seed_offset=req.seed_offset or 0)
                for p in prompts for k in range(req.n)]
        echoed: list[tuple[list[float], list[list[tuple[int, float]]]]] = []
        if req.echo:  # the prompts' own log-probs (teacher scoring: on-policy distillation), on the worker thread
            w = target.worker
            echoed = [await asyncio.to_thread(w.call, lambda p=p: w.prompt_logprobs(target.variant, p, top))
                      for p in prompts]
        if mt > 0:
            await run_or_refund(request, target, gens, reserved)
        else:
            for r in gens:
                r.finish_reason = "length"
        choices = []
        for i, r in enumerate(gens):
            ids, text = output_text(target, r)
            fr = "length" if r.finish_reason == "length" and r.stop_text_end is None else "stop"
            c: dict[str, Any] = {"index": i, "text": text, "finish_reason": fr, "logprobs": None}
            if req.logprobs is not None:
                c["logprobs"] = _completion_logprobs(target, r)
            if req.echo:
                c["text"] = target.tokenizer.decode(r.prompt, skip_special_tokens=False) + text
                if req.logprobs is not None:
                    c["logprobs"] = _echo_logprobs(target, r.prompt, echoed[i], c["logprobs"], top)
            if req.return_token_ids:
                c["prompt_token_ids"] = r.prompt
                c["token_ids"] = r.ids
            choices.append(c)
        usage = _usage(sum(len(p) for p in prompts), sum(len(r.ids) for r in gens))
        st.metrics.request("completions", req.model, 200)
        st.metrics.tokens(req.model, usage["prompt_tokens"], usage["completion_tokens"])
        st.metrics.latency("completions", time.perf_counter() - t0)
        if st.limiter is not None:
            st.limiter.refund(client_key(request), reserved - usage["total_tokens"])
        record(**deploy_fields(request), request_id=request_id, trace_id=trace_id, endpoint="completions",
               model=req.model,
               checkpoint_id=target.checkpoint, status=200, messages=[{"prompt_token_ids": p} for p in prompts],
               tools=None, user=req.user, metadata=req.metadata or {},
               params={"temperature": req.temperature, "top_p": req.top_p, "seed": req.seed, "n": req.n,
                       "max_tokens": req.max_tokens, "stop": req.stop, "seed_offset": req.seed_offset},
               choices=[{"index": c["index"], "text": c["text"], "finish_reason": c["finish_reason"],
                         "token_ids": gens[c["index"]].ids} for c in choices], tool_calls=[],
               prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
               latency_s=time.perf_counter() - t0)
        body = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": req.model, "system_fingerprint": target.checkpoint, "choices": choices, "usage": usage}
        return JSONResponse(body, headers=headers(target, trace_id, request_id))

    # ---- OpenAI files, fine-tuning jobs, graders and job workers (issue 16: serve/files.py, serve/jobs.py) ---
    from agentrft.serve.jobs import mount_fine_tuning

    mount_fine_tuning(app, st, body_as)

    # ---- user feedback and production approvals (issue 17: serve/feedback.py, serve/approvals.py) -------------
    from agentrft.serve.approvals import mount_approvals
    from agentrft.serve.feedback import mount_feedback

    mount_feedback(app, st, body_as)
    mount_approvals(app, st, body_as)
    # ---- deployments: shadow, canary, full, rollback (issue 17: serve/deployments.py) -------------------------
    from agentrft.serve.deployments import mount_deployments

    mount_deployments(app, st, body_as)
    # ---- full-weight updates for a trainer sampling from this server (serve/weight_updates.py) -------------------
    from agentrft.serve.weight_updates import mount_weight_updates

    mount_weight_updates(app, st, body_as)

    # ---- the dashboard (agentrft ui) over the server's store, behind the server's token -----------------------
    if st.store is not None:
        from agentrft.ui import make_ui_app

        app.mount("/ui", make_ui_app(st.store, token=cfg.token))

    return app


def _is_ui(path: str) -> bool:
    return path == "/ui" or path.startswith("/ui/")


# ---------------------------------------------------------------------------------------------------------------
def _dump(x: Any) -> Any:
    return x.model_dump(exclude_none=True) if isinstance(x, BaseModel) else x


def _hold_stop_prefix(text: str, stops: list[str]) -> str:
    """``text`` without a trailing part that may be the start of a stop string (not to be streamed yet: if the stop
    string completes, the answer ends before it)."""
    cut = 0
    for st in stops:
        for k in range(min(len(st) - 1, len(text)), 0, -1):
            if st.startswith(text[-k:]):
                cut = max(cut, k)
                break
    return text[: len(text) - cut] if cut else text


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _template_message(m: Any) -> dict[str, Any]:
    """An API message as the chat template gets it: text content; tool calls with their JSON-string arguments as
    the client sent them (the renderer hands templates of other dialects the parsed objects)."""
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [{"id": c.id, "type": "function",
                              "function": {"name": c.function.name, "arguments": _args(c.function.arguments)}}
                             for c in m.tool_calls]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out


def _args(raw: str) -> str:
    """The client's arguments text, which must be a JSON object (400 otherwise)."""
    try:
        v = bounded.loads_json(raw or "{}")
    except bounded.BoundsError as e:
        raise APIError(400, f"tool call arguments are {e}", param="messages") from None
    except json.JSONDecodeError:
        raise APIError(400, f"tool call arguments are not valid JSON: {raw[:100]!r}", param="messages") from None
    if not isinstance(v, dict):
        raise APIError(400, "tool call arguments must be a JSON object", param="messages")
    return raw or "{}"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _check_format(fmt: AnswerCheck | None, choice: dict[str, Any], model: str, metrics: Metrics) -> bool:
    """Add ``response_format_errors`` to a finished choice that should be JSON (a tool-call turn is not an answer
    the format applies to) and count a violation; True when the choice was checked."""
    if fmt is None or choice["message"].get("tool_calls"):
        return False
    errs = fmt.errors(choice["message"].get("content"))
    choice["response_format_errors"] = errs
    if errs:
        metrics.response_format_violation(model)
    return True


def _assistant_message(text: str, tools_on: bool, parse: Any = parse_turn) -> tuple[dict[str, Any], list[dict], bool]:
    """``(message, tool_calls, malformed)``: tool calls parsed by the rollout parser when tools were offered; a turn
    whose call text does not parse is returned whole as content (and counted by the caller)."""
    if not tools_on:
        return {"role": "assistant", "content": text}, [], False
    parsed = parse(text)
    if parsed.errors:
        return {"role": "assistant", "content": text}, [], True
    if not parsed.calls:
        return {"role": "assistant", "content": parsed.content}, [], False
    calls = [{"id": new_call_id(), "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
             for c in parsed.calls]
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}, calls, False


def _token_entry(tok: Any, tid: int, lp: float) -> dict[str, Any]:
    s = tok.decode([tid], skip_special_tokens=False)
    return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}


def _chat_logprobs(target: Target, ids: list[int], r: GenRequest, start: int = 0) -> dict[str, Any]:
    tok = target.tokenizer
    content = []
    for k in range(start, len(ids)):
        e = _token_entry(tok, ids[k], r.logprobs[k])
        e["top_logprobs"] = [_token_entry(tok, t, lp) for t, lp in (r.top[k] if k < len(r.top) else [])]
        content.append(e)
    return {"content": content}


def _echo_logprobs(target: Target, prompt: list[int], scored: tuple[list[float], list[list[tuple[int, float]]]],
                   sampled: dict[str, Any], top: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` with the prompt first (``echo``): the first prompt token has no log-prob
    (``null``, as OpenAI and vLLM answer), every later one ``log p(token | the tokens before it)``."""
    tok = target.tokenizer
    lps, tops = scored
    tokens = [tok.decode([t], skip_special_tokens=False) for t in prompt]
    offsets, at = [], 0
    for s in tokens + sampled["tokens"]:
        offsets.append(at)
        at += len(s)
    out: dict[str, Any] = {"tokens": tokens + sampled["tokens"],
                           "token_logprobs": [None, *lps] + sampled["token_logprobs"], "text_offset": offsets,
                           "top_logprobs": None}
    if top:
        prompt_top = [None] + [{tok.decode([t], skip_special_tokens=False): lp for t, lp in row} for row in tops]
        out["top_logprobs"] = prompt_top + (sampled["top_logprobs"] or [])
    return out


def _completion_logprobs(target: Target, r: GenRequest) -> dict[str, Any]:
    tok = target.tokenizer
    tokens = [tok.decode([t], skip_special_tokens=False) for t in r.ids]
    offsets, at = [], 0
    for s in tokens:
        offsets.append(at)
        at += len(s)
    top = [{tok.decode([t], skip_special_tokens=False): lp for t, lp in r.top[k]} if k < len(r.top) else None
           for k in range(len(r.ids))] if r.top_logprobs else None
    return {"tokens": tokens, "token_logprobs": list(r.logprobs), "top_logprobs": top, "text_offset": offsets}

