"""HTTP tool endpoints with the Agent RFT tool-call contract.

Configured from the Agent RFT job shape::

    tools: [{"name": "get_order", "server_url": "https://tools.example/rft",
             "headers": {"Authorization": "Bearer ${TOOLS_TOKEN}"},
             # optional, agentrft additions:
             "description": "...", "parameters": {...json schema...},
             "timeout_s": 30, "max_concurrency": 8, "rate_limit": 50, "requires_approval": false,
             "max_output_bytes": 1000000}]

For every call the backend POSTs exactly::

    {"type": "function_call", "id": "fc_…", "call_id": "call_…", "name": "get_order",
     "arguments": "<json string>", "trace_id": "trace_<uuid>", "item": {…the dataset row…}}

and reads ``{"type": "function_call_output", "call_id": "call_…", "output": "<string>"}``.

Failure semantics (one row per outcome; ``attempts`` = 1 + ``retries``):

=============================  ==================================================================  ============
what the server did            what the model sees / what is recorded                               rollout
=============================  ==================================================================  ============
2xx + valid output             the output (cut to ``max_bytes`` UTF-8 bytes, ``meta.truncated``)     kept
2xx + garbage / wrong shape    ``status="error"``, a message naming what was wrong                  kept
4xx                            its body (its ``output`` if the body is a function_call_output)      kept
5xx, connect error, reset      retried ``retries`` (3) times, backoff ``b·2^k`` (k = 0, 1, 2)         kept if a
                               (``meta.attempt_errors`` lists each failure)                         retry works
… still failing after retries  ``ToolResult(drop=True, status="server_error", error=reason)``       **dropped**
no full answer within timeout  ``status="timeout"``, not retried                                    kept
request body over ``max_bytes`` ``status="error"``, refused before sending                          kept
=============================  ==================================================================  ============

Why a timeout is *not* treated like a 5xx: the contract only names 5xx for retry-then-drop. A call that
timed out may well have executed (tools have side effects; retrying it could run it twice), retrying a
10-minute budget three times would block the rollout for 40 minutes, and a slow tool is a property of the
environment the agent can learn to avoid (narrower queries, fewer calls) — so the model sees
``"Error: tool call timed out after Ns"`` and the call counts as a tool error, as the rollout continues.

Header values may reference environment variables as ``${VAR}``; they are resolved at call time (so a rotated
secret is picked up), never stored: :meth:`HttpToolBackend.describe` and ``repr`` show references as written and
literal values as ``<redacted>``; nothing here logs headers.

Concurrency: ``call`` is thread-safe (one shared :class:`httpx.Client` with a connection pool). Per tool, a
semaphore caps in-flight calls at ``max_concurrency`` and a token bucket caps requests (retries included) at
``rate_limit``/s; the time spent waiting for either is ``meta.queue_wait_s`` and is not part of the timeout.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import httpx

from agentrft.config import ConfigError
from agentrft.tools.base import ToolBackend, ToolResult
from agentrft.tools.common import ENV_REF, MAX_BYTES, cut_utf8, redact
from agentrft.tools.registry import ToolContext
from agentrft.types import new_call_id

DEFAULT_TIMEOUT_S = 600.0  # 10 minutes per call (OpenAI's limit)


@functools.lru_cache(maxsize=1)
def _tls_context() -> Any:
    """One TLS context for every backend in the process (httpx's defaults: certifi, or SSL_CERT_FILE/DIR).

    Loading the CA bundle costs a noticeable slice of CPU, and httpx does it again for every new client, even one
    that only ever talks plain HTTP to 127.0.0.1. A context is safe to share between clients and threads.
    """
    return httpx.create_ssl_context()


_KNOWN_KEYS = {
    "name",
    "server_url",
    "headers",
    "description",
    "parameters",
    "timeout_s",
    "max_concurrency",
    "rate_limit",
    "requires_approval",
    "max_output_bytes",
    "type",
}


class TokenBucket:
    """Rate limiter: at most ``rate`` starts per second on average, bursts of up to ``burst``.

    Tokens accrue continuously at ``rate``/s up to ``burst``; each call takes one. With ``tokens`` the level at
    time ``t0``, the level at ``t`` is ``min(burst, tokens + rate·(t − t0))``; a caller that finds less than one
    token sleeps ``(1 − level)/rate`` and looks again. Over any window of length ``T`` at most
    ``burst + rate·T`` calls start. Thread-safe.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be > 0 calls/s")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1.0, rate))
        self._clock = clock
        self._tokens = self.burst
        self._t = clock()
        self._lock = threading.Lock()

    def acquire(self, deadline: float | None = None) -> bool:
        """Take one token, sleeping as needed; False if it cannot be had before ``deadline`` (monotonic)."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
                self._t = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return True
                wait = (1.0 - self._tokens) / self.rate
            if deadline is not None and now + wait > deadline:
                return False
            time.sleep(wait)


@dataclass
class HttpToolSpec:
    """One configured HTTP tool (a validated ``tools[i]`` entry)."""

    name: str
    server_url: str
    headers: dict[str, str] = field(default_factory=dict)
    description: str = ""
    parameters: dict[str, Any] | None = None
    timeout_s: float | None = None
    max_concurrency: int | None = None
    rate_limit: float | None = None
    requires_approval: bool = False
    max_output_bytes: int | None = None  # a lower cap than max_bytes for what the model sees (small contexts)

    @classmethod
    def from_config(cls, entry: Any, where: str = "tools[0]") -> "HttpToolSpec":
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: expected an object with name, server_url, headers; got {type(entry).__name__}")
        unknown = sorted(set(entry) - _KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KNOWN_KEYS))})")
        name = entry.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", name or ""):
            raise ConfigError(f"{where}.name: a tool name of 1-64 letters, digits, _ . - is required; got {name!r}")
        url = entry.get("server_url")
        if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"{where}.server_url: an http(s) URL is required; got {url!r}")
        headers = entry.get("headers") or {}
        if not isinstance(headers, Mapping):
            raise ConfigError(f"{where}.headers: expected an object of header -> value")
        for k, v in headers.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"{where}.headers.{k}: header names and values must be strings")
        params = entry.get("parameters")
        if params is not None and (not isinstance(params, Mapping) or params.get("type", "object") != "object"):
            raise ConfigError(f"{where}.parameters: expected a JSON schema of type object")
        desc = entry.get("description", "")
        if not isinstance(desc, str):
            raise ConfigError(f"{where}.description: expected a string")

        def num(key: str, kind: type, lo: float) -> Any:
            v = entry.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v) or v < lo:
                raise ConfigError(f"{where}.{key}: expected a {kind.__name__} >= {lo}; got {v!r}")
            return kind(v)

        timeout = num("timeout_s", float, 0.001)
        conc = num("max_concurrency", int, 1)
        rate = num("rate_limit", float, 0.001)
        max_out = num("max_output_bytes", int, 1)
        appr = entry.get("requires_approval", False)
        if not isinstance(appr, bool):
            raise ConfigError(f"{where}.requires_approval: expected true or false")
        return cls(name, url, dict(headers), desc, dict(params) if params else None, timeout, conc, rate, appr, max_out)


def _flat_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Accept the nested (``{"type":"function","function":{…}}``) and the flat form; return the inner object."""
    return dict(schema["function"]) if isinstance(schema.get("function"), Mapping) else dict(schema)


class _Transient(Exception):
    """A failure the contract retries (5xx, connection error, reset)."""


class _Timeout(Exception):
    pass


class HttpToolBackend(ToolBackend):
    """Tools served over HTTP with the Agent RFT contract (see the module docstring for the semantics).

    Args:
        tools: the job's ``tools`` list (each entry validated; errors name ``tools[i].field``).
        schemas: function schemas by tool name (or a list of them) — typically the dataset row's ``tools`` —
            used for tools whose config entry gives no ``parameters``.
        retries: retries after the first attempt for 5xx / connection errors (contract: 3).
        backoff_s: first backoff; attempt k+1 waits ``backoff_s · 2^k`` (capped at ``backoff_max_s``).
        max_bytes: the cap each way (1 MB).
        read_limit_bytes: how much of an oversized answer is read to parse it before truncating its output
            (default 8×``max_bytes``); an answer larger than this is discarded as an error.
        default_timeout_s: used when neither the tool entry nor the caller gives a timeout.
        env: where ``${VAR}`` header references are looked up (default ``os.environ``, read at call time).
        strict_env: raise at construction if a referenced variable is unset (a call without it is dropped).
    """

    def __init__(
        self,
        tools: Iterable[Mapping[str, Any]],
        *,
        schemas: Mapping[str, Mapping[str, Any]] | Iterable[Mapping[str, Any]] | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_bytes: int = MAX_BYTES,
        read_limit_bytes: int | None = None,
        default_timeout_s: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
        strict_env: bool = False,
        client: httpx.Client | None = None,
        where: list[str] | None = None,
    ):
        """``where``: each entry's config path for error messages (default ``tools[i]``)."""
        tools = list(tools)
        where = where or [f"tools[{i}]" for i in range(len(tools))]
        specs: dict[str, HttpToolSpec] = {}
        wheres: dict[str, str] = {}
        for i, entry in enumerate(tools):
            spec = HttpToolSpec.from_config(entry, where[i])
            if spec.name in specs:
                raise ConfigError(f"{where[i]}.name: duplicate tool name {spec.name!r}")
            specs[spec.name], wheres[spec.name] = spec, where[i]
        self.specs = specs
        self._env = env if env is not None else os.environ
        if strict_env:
            for spec in specs.values():
                for h, v in spec.headers.items():
                    for var in ENV_REF.findall(v):
                        if var not in self._env:
                            raise ConfigError(f"{wheres[spec.name]}.headers.{h}: environment variable {var} is not set")
        row_schemas: dict[str, dict[str, Any]] = {}
        if schemas is not None:
            items = schemas.values() if isinstance(schemas, Mapping) else schemas
            for s in items:
                flat = _flat_schema(s)
                if "name" in flat:
                    row_schemas[flat["name"]] = flat
        self._row_schemas = row_schemas
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_bytes = int(max_bytes)
        self.read_limit_bytes = int(read_limit_bytes or 8 * max_bytes)
        self.default_timeout_s = float(default_timeout_s)
        self._sems = {n: threading.BoundedSemaphore(s.max_concurrency) for n, s in specs.items() if s.max_concurrency}
        self._buckets = {n: TokenBucket(s.rate_limit) for n, s in specs.items() if s.rate_limit}
        pool = max(16, sum(s.max_concurrency or 16 for s in specs.values()))
        self._client = client or httpx.Client(
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            follow_redirects=False,
            verify=_tls_context(),
        )
        self._own_client = client is None
        self._stats_lock = threading.Lock()
        self.stats = {"calls": 0, "attempts": 0, "retries": 0, "drops": 0, "timeouts": 0, "errors": 0, "truncated": 0}

    # ---- description (secrets redacted) ----------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        """The config with header values redacted: ``${VAR}`` references as written, literals as ``<redacted>``."""
        out = []
        for s in self.specs.values():
            d = {
                "name": s.name,
                "server_url": s.server_url,
                "headers": {k: redact(v) for k, v in s.headers.items()},
            }
            for key in ("timeout_s", "max_concurrency", "rate_limit", "max_output_bytes"):
                if getattr(s, key) is not None:
                    d[key] = getattr(s, key)
            if s.requires_approval:
                d["requires_approval"] = True
            out.append(d)
        return out

    def __repr__(self) -> str:
        return f"HttpToolBackend({json.dumps(self.describe())})"

    # ---- ToolBackend -----------------------------------------------------------------------------
    def schemas(self) -> list[dict[str, Any]]:
        out = []
        for s in self.specs.values():
            row = self._row_schemas.get(s.name, {})
            params = s.parameters or row.get("parameters") or {"type": "object", "properties": {}}
            desc = s.description or row.get("description", "")
            out.append({"type": "function", "function": {"name": s.name, "description": desc, "parameters": params}})
        return out

    def requires_approval(self, name: str) -> bool:
        spec = self.specs.get(name)
        return bool(spec and spec.requires_approval)

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Validate against the tool's JSON schema (config ``parameters`` or the row's); None when it fits."""
        spec = self.specs.get(name)
        if spec is None:
            return None
        params = spec.parameters or self._row_schemas.get(name, {}).get("parameters")
        if not params:
            return None
        import jsonschema

        try:
            errors = sorted(jsonschema.Draft202012Validator(params).iter_errors(arguments), key=lambda e: list(e.path))
        except jsonschema.SchemaError as e:
            return f"the schema of tool {name!r} is invalid: {e.message}"
        if not errors:
            return None
        return "; ".join(("/".join(map(str, e.path)) + ": " if e.path else "") + e.message for e in errors[:5])

    def close(self) -> None:
        if self._own_client:
            self._client.close()

    def _count(self, **inc: int) -> None:
        with self._stats_lock:
            for k, v in inc.items():
                self.stats[k] += v

    def resolve_headers(self, spec: HttpToolSpec) -> dict[str, str]:
        """Headers with ``${VAR}`` substituted now; raises KeyError naming a missing variable."""

        def sub(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in self._env:
                raise KeyError(var)
            return self._env[var]

        return {k: ENV_REF.sub(sub, v) for k, v in spec.headers.items()}

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext, timeout_s: float | None = None) -> ToolResult:
        spec = self.specs.get(name)
        if spec is None:
            return ToolResult(f"Error: unknown tool {name!r}", status="unknown_tool", error=f"unknown tool {name!r}")
        self._count(calls=1)
        timeout = spec.timeout_s or timeout_s or self.default_timeout_s
        call_id = ctx.call_id or new_call_id()
        payload = {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex}",
            "call_id": call_id,
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False),
            "trace_id": ctx.trace_id,
            "item": ctx.item,
        }
        try:
            body = json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        except (TypeError, ValueError) as e:  # pragma: no cover - default=str makes this near-impossible
            self._count(errors=1)
            return ToolResult(f"Error: the request could not be encoded: {e}", status="error", error=str(e))
        meta: dict[str, Any] = {"bytes_sent": len(body), "fc_id": payload["id"], "call_id": call_id}
        if len(body) > self.max_bytes:
            self._count(errors=1)
            msg = f"request of {len(body)} bytes is over the {self.max_bytes}-byte cap; not sent"
            return ToolResult(f"Error: {msg}", status="error", error=msg, meta=meta)
        try:
            headers = self.resolve_headers(spec)
        except KeyError as e:
            # Not the model's fault: an operator error. Dropping keeps it out of the loss and makes it loud.
            self._count(drops=1)
            msg = f"tool {name!r}: header references environment variable {e.args[0]} which is not set"
            return ToolResult(f"Error: {msg}", status="server_error", error=msg, drop=True, meta=meta)
        headers.setdefault("Content-Type", "application/json")

        # Admission: a concurrency slot for the whole call; a rate token for every attempt (retries are requests
        # too). Waiting for either is queueing (meta.queue_wait_s), not part of the timeout.
        t_q = time.monotonic()
        sem = self._sems.get(name)
        if sem is not None:
            sem.acquire()
        meta["queue_wait_s"] = time.monotonic() - t_q
        try:
            return self._exchange(spec, body, headers, call_id, timeout, meta)
        finally:
            if sem is not None:
                sem.release()

    # ---- the exchange with retries ---------------------------------------------------------------
    def _exchange(
        self, spec: HttpToolSpec, body: bytes, headers: dict[str, str], call_id: str, timeout: float, meta: dict
    ) -> ToolResult:
        attempt_errors: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1)))
            bucket = self._buckets.get(spec.name)
            if bucket is not None:
                t_q = time.monotonic()
                bucket.acquire()
                meta["queue_wait_s"] += time.monotonic() - t_q
            self._count(attempts=1, retries=1 if attempt else 0)
            try:
                status, raw, cut = self._post_once(spec.server_url, body, headers, timeout)
            except _Timeout as e:
                self._count(timeouts=1)
                meta.update(attempts=attempt + 1, attempt_errors=attempt_errors)
                msg = f"tool call timed out after {timeout:g}s ({e})"
                return ToolResult(f"Error: {msg}", status="timeout", error=msg, retries=attempt, meta=meta)
            except _Transient as e:
                attempt_errors.append(str(e))
                continue
            if status >= 500:
                attempt_errors.append(f"HTTP {status}: {_snippet(raw)}")
                continue
            meta.update(attempts=attempt + 1, http_status=status, bytes_received=len(raw), attempt_errors=attempt_errors)
            return self._interpret(status, raw, cut, call_id, attempt, meta, spec.max_output_bytes)
        self._count(drops=1)
        reason = f"{len(attempt_errors)} attempts failed; last: {attempt_errors[-1]}"
        meta.update(attempts=len(attempt_errors), attempt_errors=attempt_errors)
        return ToolResult(
            f"Error: tool server failed ({reason})",
            status="server_error",
            error=reason,
            retries=self.retries,
            drop=True,
            meta=meta,
        )

    def _post_once(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes, bool]:
        """One POST; returns (status, body bytes read, whether the body was cut at ``read_limit_bytes``).

        The timeout is a deadline for the whole exchange (connect + send + the full answer), not just for
        silence between bytes — a server that trickles its answer still times out.
        """
        deadline = time.monotonic() + timeout
        try:
            with self._client.stream("POST", url, content=body, headers=headers, timeout=httpx.Timeout(timeout)) as r:
                chunks: list[bytes] = []
                n = 0
                cut = False
                for chunk in r.iter_bytes():  # decoded (a server may gzip its answer)
                    chunks.append(chunk)
                    n += len(chunk)
                    if n > self.read_limit_bytes:
                        cut = True
                        break
                    if time.monotonic() > deadline:
                        raise _Timeout("answer still arriving at the deadline")
                return r.status_code, b"".join(chunks)[: self.read_limit_bytes], cut
        except httpx.TimeoutException as e:
            raise _Timeout(type(e).__name__) from e
        except (httpx.TransportError, httpx.DecodingError) as e:
            # connect errors, resets (ReadError / RemoteProtocolError), broken pipes
            raise _Transient(f"{type(e).__name__}: {e or 'connection failed'}") from e

    def _interpret(
        self, status: int, raw: bytes, cut: bool, call_id: str, retries: int, meta: dict, cap: int | None = None
    ) -> ToolResult:
        if cut:
            self._count(errors=1, truncated=1)
            meta["truncated"] = True
            msg = f"tool answer over {self.read_limit_bytes} bytes; discarded"
            return ToolResult(f"Error: {msg}", status="error", error=msg, retries=retries, meta=meta)
        text = raw.decode("utf-8", errors="replace")
        parsed: Any = None
        parse_error = None
        try:
            parsed = json.loads(text)
        except ValueError as e:
            parse_error = f"not JSON ({e.msg} at line {e.lineno} column {e.colno})"
        if 400 <= status < 500:
            # The contract: a 4xx answer is what the model sees. Unwrap a function_call_output body.
            out = parsed.get("output") if isinstance(parsed, dict) and isinstance(parsed.get("output"), str) else text
            out = self._cap(out, meta, cap)
            self._count(errors=1)
            return ToolResult(out, status="error", error=f"HTTP {status}", retries=retries, meta=meta)
        if not 200 <= status < 300:
            self._count(errors=1)
            msg = f"unexpected HTTP {status} from tool server"
            return ToolResult(f"Error: {msg}", status="error", error=msg, retries=retries, meta=meta)
        problem = parse_error
        if problem is None:
            if not isinstance(parsed, dict):
                problem = f"expected a JSON object, got {type(parsed).__name__}"
            elif parsed.get("type", "function_call_output") != "function_call_output":
                problem = f"type is {parsed.get('type')!r}, expected 'function_call_output'"
            elif parsed.get("call_id", call_id) != call_id:
                problem = f"call_id {parsed.get('call_id')!r} does not match the call's {call_id!r}"
            elif "output" not in parsed:
                problem = "missing field 'output'"
        if problem is not None:
            self._count(errors=1)
            msg = f"tool server sent an invalid function_call_output: {problem}; body starts {_snippet(raw)}"
            return ToolResult(f"Error: {msg}", status="error", error=msg, retries=retries, meta=meta)
        out = parsed["output"]
        if not isinstance(out, str):  # lenient: structured output is shown as JSON, and flagged
            out = json.dumps(out, ensure_ascii=False)
            meta["output_coerced"] = True
        return ToolResult(self._cap(out, meta, cap), status="ok", retries=retries, meta=meta)

    def _cap(self, out: str, meta: dict, cap: int | None = None) -> str:
        cut, dropped = cut_utf8(out, min(self.max_bytes, cap or self.max_bytes))
        if dropped:
            self._count(truncated=1)
            meta["truncated"] = True
            meta["truncated_bytes"] = dropped
        return cut


def _snippet(raw: bytes, n: int = 120) -> str:
    s = raw[:n].decode("utf-8", errors="replace")
    return repr(s) + ("…" if len(raw) > n else "")
