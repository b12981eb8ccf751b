"""Serve Python tools over HTTP with the Agent RFT tool-call contract (``agentrft tools serve ENV``).

Endpoints of :func:`make_tool_server`:

* ``POST /`` and ``POST /tools/{name}`` — a ``function_call`` payload in, a ``function_call_output`` out.
  Answers follow the contract's meaning of status codes, so any Agent RFT client gets the right behaviour:
  200 a result; 4xx something the *model* did or can fix (unknown tool 404, arguments not JSON or not
  fitting the signature 400, the tool raised 422 — the body's ``output`` is what the model sees);
  5xx only for failures of the server itself (which the client retries, then drops the rollout).
* ``GET /health`` (no auth), ``GET /tools`` (the function schemas), ``GET /traces`` (live trace ids),
  ``DELETE /traces/{trace_id}`` (end a rollout's state now), and ``POST /grade`` when a grader is given
  (the endpoint-grader contract: ``{"sample","item","trace_id"}`` → ``{"score"}``, graded from the state the
  rollout left behind).

Per-rollout state: the first call with a ``trace_id`` creates a :class:`ToolContext` (its ``item`` is the
payload's ``item``); every later call of that trace shares its ``state`` dict and cleanup callbacks. A context
is closed (``ctx.close()``, which runs the tools' ``on_close`` cleanup, e.g. deleting a copy-on-write SQLite
file) on ``DELETE /traces/{id}`` or when it has been idle longer than ``ttl_s`` (checked by a sweeper every
``ttl_s/4`` seconds, at most every 5 s). The TTL must outlast grading: the endpoint grader reads the state after
the rollout's last tool call.

Security: the server binds 127.0.0.1 by default; any other host needs a bearer token (``serve`` refuses to start
otherwise). With a token, every endpoint except ``/health`` requires ``Authorization: Bearer <token>``
(compared in constant time).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from agentrft.bounded import BoundsError, loads_json
from agentrft.tools.registry import PythonTool, ToolContext

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
MAX_REQUEST_BYTES = 1_000_000
MAX_JSON_DEPTH = 64  # nesting of a request body (and of a call's arguments)


class TraceStore:
    """ToolContexts by trace_id with an idle TTL. Thread-safe (tools run in FastAPI's thread pool)."""

    def __init__(self, ttl_s: float, data_dir: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = float(ttl_s)
        self.data_dir = data_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._ctx: dict[str, tuple[ToolContext, float]] = {}
        self.closed = 0
        self.cleanup_errors: list[str] = []

    def get(self, trace_id: str, item: dict[str, Any]) -> ToolContext:
        with self._lock:
            entry = self._ctx.get(trace_id)
            ctx = entry[0] if entry else ToolContext(trace_id, item, data_dir=self.data_dir)
            self._ctx[trace_id] = (ctx, self._clock())
            return ctx

    def peek(self, trace_id: str) -> ToolContext | None:
        with self._lock:
            entry = self._ctx.get(trace_id)
            return entry[0] if entry else None

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._ctx)

    def close(self, trace_id: str) -> list[str] | None:
        """Close one trace now; None if unknown, else the cleanup errors (empty when clean)."""
        with self._lock:
            entry = self._ctx.pop(trace_id, None)
        if entry is None:
            return None
        return self._finish(entry[0])

    def sweep(self) -> int:
        """Close every context idle for longer than the TTL; returns how many were closed."""
        now = self._clock()
        with self._lock:
            stale = [t for t, (_, last) in self._ctx.items() if now - last > self.ttl_s]
            entries = [self._ctx.pop(t) for t in stale]
        for ctx, _ in entries:
            self._finish(ctx)
        return len(entries)

    def close_all(self) -> None:
        with self._lock:
            entries, self._ctx = list(self._ctx.values()), {}
        for ctx, _ in entries:
            self._finish(ctx)

    def _finish(self, ctx: ToolContext) -> list[str]:
        errors = ctx.close()
        with self._lock:
            self.closed += 1
            self.cleanup_errors.extend(f"{ctx.trace_id}: {e}" for e in errors)
        return errors


def _output(call_id: Any, text: str) -> dict[str, Any]:
    # only a string call_id is echoed: anything else the client sent may not even be encodable as JSON
    return {"type": "function_call_output", "call_id": call_id if isinstance(call_id, str) else None, "output": text}


def make_tool_server(
    tools: list[PythonTool],
    *,
    token: str | None = None,
    ttl_s: float = 900.0,
    data_dir: str | None = None,
    grader: Callable[[dict[str, Any], dict[str, Any], ToolContext | None], float] | None = None,
    title: str = "agentrft tools",
    max_workers: int = 64,
) -> Any:
    """A FastAPI app serving ``tools`` with the Agent RFT tool-call contract (see the module docstring).

    ``grader(sample, item, ctx)`` — optional — is served at ``POST /grade``; ``ctx`` is the trace's context
    (None if the trace made no tool calls or was already cleaned up).

    Tools are plain (blocking) functions; they run on a pool of ``max_workers`` threads, so up to that many
    calls wait on I/O at once (asyncio's default pool, min(32, cpus+4), would cap a 2-core box at 6).
    """
    import concurrent.futures as cf

    pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="toolserver")

    async def in_pool(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    by_name: dict[str, PythonTool] = {}
    for t in tools:
        if t.name in by_name:
            raise ValueError(f"two tools are named {t.name!r}")
        by_name[t.name] = t
    traces = TraceStore(ttl_s, data_dir)
    counters = {"calls": 0, "errors": 0, "unauthorized": 0}
    counters_lock = threading.Lock()

    def count(key: str) -> None:
        with counters_lock:
            counters[key] += 1

    @asynccontextmanager
    async def lifespan(app: Any):
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(min(5.0, max(0.05, ttl_s / 4)))
                await asyncio.to_thread(traces.sweep)

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            traces.close_all()
            pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.traces = traces

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        # whatever still recursed too deep on a hostile payload is the client's doing: a 4xx, never a traceback
        count("errors")
        return JSONResponse(_output(None, "Error: the request is nested too deeply"), status_code=400)
    app.state.counters = counters

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if token is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                count("unauthorized")
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "tools": len(by_name), "traces": len(traces.ids())}

    @app.get("/tools")
    def list_tools() -> list[dict[str, Any]]:
        return [t.schema for t in by_name.values()]

    @app.get("/traces")
    def list_traces() -> dict[str, Any]:
        return {"traces": traces.ids(), "closed": traces.closed, "cleanup_errors": traces.cleanup_errors[-20:],
                **counters}

    @app.delete("/traces/{trace_id}")
    def end_trace(trace_id: str) -> Any:
        errors = traces.close(trace_id)
        if errors is None:
            return JSONResponse({"error": f"no live trace {trace_id!r}"}, status_code=404)
        return {"closed": trace_id, "cleanup_errors": errors}

    def run_call(payload: Any, path_name: str | None) -> JSONResponse:
        count("calls")

        def fail(code: int, msg: str, call_id: Any = None) -> JSONResponse:
            count("errors")
            return JSONResponse(_output(call_id, msg), status_code=code)

        if not isinstance(payload, dict):
            return fail(400, "Error: the request body must be a function_call object")
        call_id = payload.get("call_id")
        problems = []
        if payload.get("type", "function_call") != "function_call":
            problems.append(f"type must be 'function_call', got {payload.get('type')!r}")
        if not isinstance(call_id, str) or not call_id:
            problems.append("call_id: a non-empty string is required")
        trace_id = payload.get("trace_id")
        if not isinstance(trace_id, str) or not trace_id:
            problems.append("trace_id: a non-empty string is required")
        item = payload.get("item", {})
        if item is None:
            item = {}
        if not isinstance(item, dict):
            problems.append("item: must be an object (the dataset row)")
        name = payload.get("name", path_name)
        if path_name is not None and name != path_name:
            problems.append(f"name {name!r} does not match the URL's tool {path_name!r}")
        if problems:
            return fail(400, "Error: bad function_call: " + "; ".join(problems), call_id)
        tool = by_name.get(name)
        if tool is None:
            return fail(404, f"Error: unknown tool {name!r}. Available tools: {', '.join(by_name)}", call_id)
        raw_args = payload.get("arguments", "{}")
        if isinstance(raw_args, dict):
            args = raw_args
        else:
            try:
                args = loads_json(raw_args, max_depth=MAX_JSON_DEPTH) if raw_args else {}
            except BoundsError as e:
                return fail(400, f"Error: arguments are {e}", call_id)
            except (TypeError, ValueError) as e:
                return fail(400, f"Error: arguments are not valid JSON: {e}", call_id)
            if not isinstance(args, dict):
                return fail(400, "Error: arguments must be a JSON object", call_id)
        problem = tool.check_arguments(args)
        if problem:
            return fail(400, f"Error: {problem}", call_id)
        ctx = traces.get(trace_id, item).for_call(call_id)
        try:
            value = tool.invoke(args, ctx)
        except Exception as e:  # the tool's own failure: the model sees it, the rollout goes on
            return fail(422, f"Error: {type(e).__name__}: {e}", call_id)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        return JSONResponse(_output(call_id, text))

    async def read_payload(request: Request) -> tuple[Any, JSONResponse | None]:
        """The JSON body, read in chunks and refused (413) as soon as it passes MAX_REQUEST_BYTES — a declared
        Content-Length over the cap is refused before reading anything — so a huge body never sits in memory;
        a body that is not JSON or nests deeper than MAX_JSON_DEPTH is a 400."""
        def refuse(code: int, msg: str) -> tuple[None, JSONResponse]:
            count("errors")
            return None, JSONResponse(_output(None, f"Error: {msg}"), status_code=code)

        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return refuse(400, f"bad Content-Length {declared[:40]!r}")
            if int(declared) > MAX_REQUEST_BYTES:
                return refuse(413, f"request over {MAX_REQUEST_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                return refuse(413, f"request over {MAX_REQUEST_BYTES} bytes")
        try:
            return loads_json(bytes(body), max_depth=MAX_JSON_DEPTH, strict=True), None
        except BoundsError as e:
            return refuse(400, f"body is {e}")
        except ValueError as e:
            return refuse(400, f"body is not JSON: {e}")

    @app.post("/")
    async def call_root(request: Request) -> Any:
        payload, err = await read_payload(request)
        return err or await in_pool(run_call, payload, None)

    @app.post("/tools/{name}")
    async def call_named(name: str, request: Request) -> Any:
        payload, err = await read_payload(request)
        return err or await in_pool(run_call, payload, name)

    if grader is not None:

        @app.post("/grade")
        async def grade(request: Request) -> Any:
            payload, err = await read_payload(request)
            if err:
                return err
            if not isinstance(payload, dict) or not isinstance(payload.get("trace_id"), str):
                return JSONResponse({"error": "expected {sample, item, trace_id}"}, status_code=400)
            ctx = traces.peek(payload["trace_id"])
            try:
                score = await in_pool(grader, payload.get("sample") or {}, payload.get("item") or {}, ctx)
                return {"score": float(score)}
            except Exception as e:
                return JSONResponse({"error": f"grader raised {type(e).__name__}: {e}"}, status_code=500)

    return app


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose tools beyond loopback without a token."""
    if host not in LOOPBACK_HOSTS and not token:
        raise ValueError(
            f"refusing to bind {host!r} without a token: tools would be callable by anyone who can reach it. "
            "Set AGENTRFT_TOOLS_TOKEN (or pass --token-file or --token), or bind 127.0.0.1."
        )


def serve(
    tools: list[PythonTool],
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    *,
    data_dir: str | None = None,
    ttl_s: float = 900.0,
    log_level: str = "info",
    title: str = "agentrft tools",
) -> None:
    """Serve these tools (an environment's, say) until interrupted.

    ``data_dir`` is the directory of the dataset the rows come from: files a row names (support_desk's
    ``item["db"]``) resolve against it, exactly as in-process.
    """
    import os

    import uvicorn

    check_bind(host, token)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise ValueError(f"--data-dir {data_dir!r} is not a directory")
    app = make_tool_server(tools, token=token, ttl_s=ttl_s, data_dir=os.path.abspath(data_dir) if data_dir else None,
                           title=title)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
