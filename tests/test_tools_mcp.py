"""McpToolBackend against a real MCP server (the official SDK) over stdio and over streamable HTTP."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agentrft.tools.http import ConfigError
from agentrft.tools.mcp import McpToolBackend
from agentrft.tools.registry import ToolContext
from agentrft.types import new_call_id, new_trace_id

SERVER = str(Path(__file__).parent / "tool_servers" / "mcp_server.py")
NAMES = ["echo", "add_note", "add", "fail", "slow", "big", "auth_header", "die"]


def ctx(trace: str | None = None, item: dict | None = None) -> ToolContext:
    return ToolContext(trace or new_trace_id(), item or {"id": "row-1"}, new_call_id())


def stdio_config(**kw) -> dict:
    return {"type": "mcp", "command": sys.executable, "args": [SERVER, "stdio"], **kw}


@pytest.fixture(scope="module")
def stdio_backend():
    b = McpToolBackend(stdio_config(requires_approval=["add"]))
    yield b
    b.close()


@pytest.fixture(scope="module")
def http_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("MCP HTTP server did not start")
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(20)


def test_stdio_schemas_and_calls(stdio_backend):
    b = stdio_backend
    assert b.names() == NAMES
    add = next(s for s in b.schemas() if s["function"]["name"] == "add")["function"]
    assert add["description"] == "Add two integers." and add["parameters"]["required"] == ["a", "b"]
    assert b.requires_approval("add") and not b.requires_approval("echo")
    c = ctx()
    r = b.call("echo", {"text": "hi"}, c, 10)
    assert r.status == "ok" and r.output == f"hi | trace={c.trace_id} | call={c.call_id} | item=None"
    assert b.call("add", {"a": 2, "b": 40}, ctx(), 10).output == "42"
    assert b.check_arguments("add", {"a": 1}) == "'b' is a required property"
    assert b.check_arguments("add", {"a": 1, "b": 2}) is None


def test_stdio_errors_and_timeouts(stdio_backend):
    b = stdio_backend
    r = b.call("fail", {"reason": "no stock"}, ctx(), 10)
    assert r.status == "error" and not r.drop and "cannot do that: no stock" in r.output
    r = b.call("add", {"a": "x", "b": 1}, ctx(), 10)  # the server validates: an error the model sees
    assert r.status == "error" and "valid integer" in r.output
    # coming back well before the 5 s answer exists proves the 0.5 s deadline, with room for a loaded CI runner
    # (an HTTP tool call with a 0.3 s timeout once took 4.3 s there)
    t0 = time.monotonic()
    r = b.call("slow", {"seconds": 5}, ctx(), 0.5)
    assert (r.status, r.drop) == ("timeout", False) and time.monotonic() - t0 < 4.5
    assert b.call("nope", {}, ctx(), 1).status == "unknown_tool"
    r = b.call("big", {"n": 1_500_000}, ctx(), 20)
    assert r.status == "ok" and r.meta["truncated"] and len(r.output) == 1_000_000
    assert b.call("echo", {"text": "still fine"}, ctx(), 10).status == "ok"  # the session survived all that


def test_trace_state_and_concurrent_calls(stdio_backend):
    b = stdio_backend
    ta, tb = new_trace_id(), new_trace_id()
    assert b.call("add_note", {"note": "a1"}, ctx(ta), 10).output == "a1"
    assert b.call("add_note", {"note": "b1"}, ctx(tb), 10).output == "b1"
    assert b.call("add_note", {"note": "a2"}, ctx(ta), 10).output == "a1, a2"
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: b.call("add", {"a": i, "b": 1}, ctx(), 10), range(32)))
    assert [r.output for r in rs] == [str(i + 1) for i in range(32)]


def test_send_item_and_allow_list():
    b = McpToolBackend(stdio_config(tools=["echo", "die"], send_item=True, prefix="m_"))
    try:
        assert b.names() == ["m_echo", "m_die"]
        c = ctx(item={"id": "row-9"})
        assert b.call("m_echo", {"text": "x"}, c, 10).output.endswith("item=row-9")
        assert b.call("add", {"a": 1, "b": 1}, c, 10).status == "unknown_tool"
        # a crashed server drops the rollout; the next call reconnects to a fresh process
        r = b.call("m_die", {}, ctx(), 10)
        assert r.status == "server_error" and r.drop and "MCP session failed" in r.error
        r = b.call("m_echo", {"text": "back"}, ctx(), 20)
        assert r.status == "ok" and r.output.startswith("back |") and b.stats["reconnects"] == 1
        assert b.stats["drops"] == 1
    finally:
        b.close()


def test_string_config_as_in_the_run_config():
    """The run config's ``{mcp: "<command line>", tools: [...]}`` form, as build_router passes it."""
    import shlex

    b = McpToolBackend(f"{shlex.quote(sys.executable)} {shlex.quote(SERVER)} stdio", tools=["add"],
                       requires_approval=["add"])
    try:
        assert b.names() == ["add"] and b.requires_approval("add")
        assert b.call("add", {"a": 20, "b": 22}, ctx(), 10).output == "42"
    finally:
        b.close()


def test_config_errors():
    with pytest.raises(ConfigError, match="exactly one of command"):
        McpToolBackend({"type": "mcp"})
    with pytest.raises(ConfigError, match="empty command line"):
        McpToolBackend("   ")
    with pytest.raises(ConfigError, match=r"mcp: unknown key\(s\) colour"):
        McpToolBackend("http://127.0.0.1:9/mcp", colour="red")
    with pytest.raises(ConfigError, match=r"mcp\.url: expected an http"):
        McpToolBackend({"url": "ftp://x"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) commnd"):
        McpToolBackend({"commnd": "x", "url": "http://x"})
    with pytest.raises(ConfigError, match="cannot connect to the MCP server command"):
        McpToolBackend({"command": "/nonexistent/mcp-server-binary", "connect_timeout_s": 10})
    with pytest.raises(ConfigError, match=r"mcp\.tools: the server has no tool\(s\) nosuch"):
        McpToolBackend(stdio_config(tools=["echo", "nosuch"]))


def test_streamable_http(http_url, monkeypatch):
    monkeypatch.setenv("H4_MCP_TOKEN", "secret-mcp")
    b = McpToolBackend({"url": http_url, "headers": {"Authorization": "Bearer ${H4_MCP_TOKEN}"}})
    try:
        assert b.names() == NAMES
        assert "secret-mcp" not in repr(b)
        assert b.call("auth_header", {}, ctx(), 10).output == "Bearer secret-mcp"  # resolved and sent
        c = ctx()
        assert b.call("echo", {"text": "over http"}, c, 10).output == (
            f"over http | trace={c.trace_id} | call={c.call_id} | item=None")
        with ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(lambda i: b.call("add", {"a": i, "b": i}, ctx(), 10), range(16)))
        assert [r.output for r in rs] == [str(2 * i) for i in range(16)]
        assert b.call("slow", {"seconds": 2}, ctx(), 0.3).status == "timeout"
    finally:
        b.close()
    with pytest.raises(ConfigError, match="cannot connect"):
        McpToolBackend({"url": "http://127.0.0.1:9/mcp", "connect_timeout_s": 5})
