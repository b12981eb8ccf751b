"""Tools from an MCP server (stdio subprocess or streamable HTTP) through the official ``mcp`` SDK.

Config (one entry per server)::

    {"type": "mcp", "command": "python", "args": ["my_server.py"], "env": {"KEY": "${SECRET}"}, "cwd": "..."}
    {"type": "mcp", "url": "http://127.0.0.1:8000/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}}
    # optional for both: "tools": ["only", "these"], "requires_approval": ["delete_file"],
    #                    "timeout_s": 60, "connect_timeout_s": 30, "prefix": "fs_"

The SDK is async; :class:`McpToolBackend` is a sync facade: one background thread runs an asyncio loop, a
long-lived task holds the ``mcp.Client`` session open (the SDK's task groups must be entered and left in one
task), and :meth:`call` submits ``call_tool`` coroutines to that loop from any worker thread, so calls of many
rollouts run concurrently over one session.

``trace_id`` travels in the request's ``_meta`` (``{"trace_id": …, "call_id": …}``), the place the protocol
gives for request metadata; a server reads it as ``ctx.request_context.meta["trace_id"]``. The dataset ``item``
is not sent (MCP servers are general-purpose; set ``"send_item": true`` to add it to ``_meta``).

Outcomes: a result with ``isError`` → status ``error`` (its text is the output the model sees); no answer
within the timeout → ``timeout``; a broken session (the subprocess died, the HTTP server went away) →
``server_error`` with ``drop=True`` — as for an HTTP 5xx after retries — and the next call reconnects once.
Text content blocks are joined with newlines; other blocks are shown as a short JSON stub; an answer over
``max_bytes`` is cut (``meta.truncated``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import threading
from typing import Any, Mapping

from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from agentrft.config import ConfigError
from agentrft.tools.base import ToolBackend, ToolResult
from agentrft.tools.common import MAX_BYTES, cut_utf8, redact, resolve_env
from agentrft.tools.registry import ToolContext

_KEYS = {"type", "name", "command", "args", "env", "cwd", "url", "headers", "tools", "requires_approval",
         "timeout_s", "connect_timeout_s", "prefix", "send_item"}


class McpToolBackend(ToolBackend):
    """The tools of one MCP server. Connects in the constructor (raises ConfigError with the reason if it can't)."""

    def __init__(self, config: Mapping[str, Any] | str, *, where: str = "mcp", env: Mapping[str, str] | None = None,
                 max_bytes: int = MAX_BYTES, **options: Any):
        """``config`` is a mapping (keys in the module docstring) or a string: an http(s) URL (streamable HTTP)
        or a command line (stdio, split like a shell). Keyword ``options`` are merged into it (the run config's
        ``{mcp: "...", tools: [...], requires_approval: [...]}`` form)."""
        if isinstance(config, str):
            import shlex

            if re.match(r"^https?://", config.strip()):
                config = {"url": config.strip()}
            else:
                argv = shlex.split(config)
                if not argv:
                    raise ConfigError(f"{where}: empty command line")
                config = {"command": argv[0], "args": argv[1:]}
        if not isinstance(config, Mapping):
            raise ConfigError(f"{where}: expected an object with command or url, or a command line / URL string")
        config = {**config, **options}
        unknown = sorted(set(config) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_KEYS))})")
        if ("command" in config) == ("url" in config):
            raise ConfigError(f"{where}: give exactly one of command (stdio) or url (streamable HTTP)")
        self.config = dict(config)
        self.where = where
        self._env = env if env is not None else os.environ
        self.max_bytes = max_bytes
        self.timeout_s = float(config.get("timeout_s", 600))
        self.connect_timeout_s = float(config.get("connect_timeout_s", 30))
        self.prefix = str(config.get("prefix", ""))
        self.send_item = bool(config.get("send_item", False))
        allow = config.get("tools")
        if allow is not None and (not isinstance(allow, list) or not all(isinstance(x, str) for x in allow)):
            raise ConfigError(f"{where}.tools: expected a list of tool names")
        self._allow = allow
        appr = config.get("requires_approval", [])
        if not isinstance(appr, list):
            raise ConfigError(f"{where}.requires_approval: expected a list of tool names")
        self._approval = set(appr)
        if "command" in config:
            if not isinstance(config["command"], str):
                raise ConfigError(f"{where}.command: expected a string")
            if not isinstance(config.get("args", []), list):
                raise ConfigError(f"{where}.args: expected a list of strings")
        elif not isinstance(config["url"], str) or not re.match(r"^https?://", config["url"]):
            raise ConfigError(f"{where}.url: expected an http(s) URL; got {config['url']!r}")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-loop", daemon=True)
        self._thread.start()
        self._client: Any = None
        self._stop: asyncio.Event | None = None
        self._session_task: concurrent.futures.Future | None = None
        self._conn_lock = threading.Lock()
        self._closed = False
        self._tools: dict[str, dict[str, Any]] = {}  # our name -> schema
        self._remote: dict[str, str] = {}  # our name -> server's name
        self._stats_lock = threading.Lock()
        self.stats = {"calls": 0, "errors": 0, "timeouts": 0, "drops": 0, "reconnects": 0}
        try:
            self._connect()
        except Exception:
            self.close()
            raise

    # ---- connection ------------------------------------------------------------------------------
    def _server_arg(self) -> Any:
        from mcp import StdioServerParameters

        c = self.config
        if "command" in c:
            env = {k: resolve_env(str(v), self._env, f"{self.where}.env.{k}") for k, v in (c.get("env") or {}).items()}
            return StdioServerParameters(command=c["command"], args=[str(a) for a in c.get("args", [])],
                                         env={**os.environ, **env} if env else None, cwd=c.get("cwd"))
        headers = {k: resolve_env(v, self._env, f"{self.where}.headers.{k}") for k, v in (c.get("headers") or {}).items()}
        if not headers:
            return c["url"]
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        return streamable_http_client(c["url"], http_client=httpx2.AsyncClient(headers=headers))

    async def _hold_session(self, ready: asyncio.Future) -> None:
        from mcp import Client

        self._stop = asyncio.Event()
        try:
            async with Client(self._server_arg(), read_timeout_seconds=self.timeout_s) as client:
                listed = await client.list_tools()
                self._client = client
                ready.set_result(listed.tools)
                await self._stop.wait()
        except BaseException as e:  # noqa: BLE001 - reported to the waiting thread
            if not ready.done():
                ready.set_exception(e)
        finally:
            self._client = None

    def _connect(self) -> None:
        async def start() -> Any:
            ready = self._loop.create_future()
            self._session_task = asyncio.ensure_future(self._hold_session(ready))
            return await asyncio.wait_for(ready, self.connect_timeout_s)

        fut = asyncio.run_coroutine_threadsafe(start(), self._loop)
        try:
            tools = fut.result(self.connect_timeout_s + 5)
        except Exception as e:
            raise ConfigError(f"{self.where}: cannot connect to the MCP server {self._describe_target()}: "
                              f"{type(e).__name__}: {_exc_text(e)}") from e
        schemas, remote = {}, {}
        for t in tools:
            if self._allow is not None and t.name not in self._allow:
                continue
            ours = self.prefix + t.name
            remote[ours] = t.name
            schemas[ours] = {"type": "function", "function": {
                "name": ours, "description": t.description or "",
                "parameters": dict(t.input_schema or {"type": "object", "properties": {}})}}
        if self._allow is not None:
            missing = [n for n in self._allow if self.prefix + n not in schemas]
            if missing:
                raise ConfigError(f"{self.where}.tools: the server has no tool(s) {', '.join(missing)}")
        self._tools, self._remote = schemas, remote

    def _reconnect(self) -> bool:
        with self._conn_lock:
            if self._client is not None or self._closed:
                return self._client is not None
            self._count("reconnects")
            try:
                self._connect()
                return True
            except ConfigError:
                return False

    def _describe_target(self) -> str:
        c = self.config
        return f"url {c['url']}" if "url" in c else f"command {c['command']!r}"

    def describe(self) -> dict[str, Any]:
        """The config with header and env values redacted."""
        d = {k: v for k, v in self.config.items() if k not in ("headers", "env")}
        for key in ("headers", "env"):
            if key in self.config:
                d[key] = {k: redact(str(v)) for k, v in self.config[key].items()}
        return d

    def __repr__(self) -> str:
        return f"McpToolBackend({json.dumps(self.describe())})"

    # ---- ToolBackend -----------------------------------------------------------------------------
    def schemas(self) -> list[dict[str, Any]]:
        return list(self._tools.values())

    def requires_approval(self, name: str) -> bool:
        return name in self._approval or self._remote.get(name) in self._approval

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        schema = self._tools.get(name)
        if schema is None:
            return None
        import jsonschema

        try:
            errs = sorted(jsonschema.Draft202012Validator(schema["function"]["parameters"]).iter_errors(arguments),
                          key=lambda e: list(e.path))
        except jsonschema.SchemaError as e:
            return f"the schema of tool {name!r} is invalid: {e.message}"
        return "; ".join(("/".join(map(str, e.path)) + ": " if e.path else "") + e.message for e in errs[:5]) or None

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext, timeout_s: float | None = None) -> ToolResult:
        if name not in self._remote:
            return ToolResult(f"Error: unknown tool {name!r}", status="unknown_tool", error=f"unknown tool {name!r}")
        self._count("calls")
        timeout = float(self.config.get("timeout_s") or timeout_s or self.timeout_s)
        if self._client is None and not self._reconnect():
            self._count("drops")
            msg = f"MCP server {self._describe_target()} is not connected and reconnecting failed"
            return ToolResult(f"Error: {msg}", status="server_error", error=msg, drop=True)
        meta: dict[str, Any] = {"trace_id": ctx.trace_id, "call_id": ctx.call_id}
        if self.send_item:
            meta["item"] = ctx.item
        client = self._client

        async def go() -> Any:
            return await client.call_tool(self._remote[name], arguments, read_timeout_seconds=timeout, meta=meta)

        fut = asyncio.run_coroutine_threadsafe(go(), self._loop)
        try:
            res = fut.result(timeout + 5)
        except (TimeoutError, concurrent.futures.TimeoutError) as e:
            fut.cancel()
            self._count("timeouts")
            msg = f"tool call timed out after {timeout:g}s"
            return ToolResult(f"Error: {msg}", status="timeout", error=msg, meta={"detail": _exc_text(e)})
        except Exception as e:  # noqa: BLE001
            text = _exc_text(e)
            code = getattr(e, "code", None)
            if code == REQUEST_TIMEOUT or "timeout" in type(e).__name__.lower():
                self._count("timeouts")
                msg = f"tool call timed out after {timeout:g}s"
                return ToolResult(f"Error: {msg}", status="timeout", error=msg, meta={"detail": text})
            if code is not None and code != CONNECTION_CLOSED and self._session_alive():
                # a JSON-RPC error answer on a live session (e.g. invalid params): the model sees it
                self._count("errors")
                return ToolResult(f"Error: {text}", status="error", error=text, meta={"mcp_code": code})
            # the session is gone (subprocess died, server unreachable): like a 5xx after retries
            self._count("drops")
            self._mark_broken(client)
            msg = f"MCP session failed: {type(e).__name__}: {text}"
            return ToolResult(f"Error: {msg}", status="server_error", error=msg, drop=True,
                              meta={"mcp_code": code} if code is not None else {})
        return self._convert(res)

    def _session_alive(self) -> bool:
        return self._session_task is not None and not self._session_task.done() and self._client is not None

    def _mark_broken(self, client: Any) -> None:
        """Forget a dead session (once) and let its holder task exit; the next call reconnects."""
        with self._conn_lock:
            if self._client is client:
                self._client = None
                if self._stop is not None:
                    self._loop.call_soon_threadsafe(self._stop.set)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def _convert(self, res: Any) -> ToolResult:
        parts = []
        for block in res.content or []:
            if getattr(block, "type", None) == "text":
                parts.append(block.text)
            else:
                stub = {"type": getattr(block, "type", "unknown")}
                for attr in ("mime_type", "uri", "name"):
                    if getattr(block, attr, None):
                        stub[attr] = str(getattr(block, attr))
                parts.append(json.dumps(stub))
        text = "\n".join(parts)
        if not text and res.structured_content is not None:
            text = json.dumps(res.structured_content, ensure_ascii=False)
        meta: dict[str, Any] = {}
        cut, dropped = cut_utf8(text, self.max_bytes)
        if dropped:
            meta.update(truncated=True, truncated_bytes=dropped)
        if res.is_error:
            self._count("errors")
            return ToolResult(cut, status="error", error=(cut[:200] or "tool reported an error"), meta=meta)
        return ToolResult(cut, status="ok", meta=meta)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._session_task is not None:
            try:
                asyncio.run_coroutine_threadsafe(asyncio.wait_for(_wait(self._session_task), 10), self._loop).result(12)
            except Exception:  # noqa: BLE001 - closing must not raise
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _wait(task: Any) -> None:
    try:
        await task
    except BaseException:  # noqa: BLE001
        pass


def _exc_text(e: BaseException) -> str:
    """Unwrap exception groups (anyio task groups wrap the real cause)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{e}" or type(e).__name__
