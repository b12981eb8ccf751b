"""A small MCP server for the tests (official SDK): ``python mcp_server.py stdio`` or ``… http PORT``.

Tools read the caller's ``trace_id`` from the request ``_meta`` and keep per-trace state with it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

app = MCPServer("agentrft-test")
NOTES: dict[str, list[str]] = defaultdict(list)


def _meta(ctx: Context) -> dict[str, Any]:
    m = ctx.request_context.meta
    if m is None:
        return {}
    return m if isinstance(m, dict) else m.model_dump()


@app.tool()
def echo(text: str, ctx: Context) -> str:
    """Echo the text with the caller's trace_id and call_id.

    Args:
        text: What to echo.
    """
    m = _meta(ctx)
    return f"{text} | trace={m.get('trace_id')} | call={m.get('call_id')} | item={m.get('item', {}).get('id')}"


@app.tool()
def add_note(note: str, ctx: Context) -> str:
    """Remember a note for this rollout and return all of them.

    Args:
        note: The note.
    """
    notes = NOTES[_meta(ctx).get("trace_id", "?")]
    notes.append(note)
    return ", ".join(notes)


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def fail(reason: str) -> str:
    """Always fails with the reason."""
    raise ToolError(f"cannot do that: {reason}")


@app.tool()
def slow(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "done"


@app.tool()
def big(n: int) -> str:
    """Return n bytes."""
    return "z" * n


@app.tool()
def auth_header(ctx: Context) -> str:
    """The Authorization header this call came with (HTTP transport only)."""
    h = ctx.headers or {}
    return str(h.get("authorization"))


@app.tool()
def die() -> str:
    """Kill the server process (simulates a crash)."""
    os._exit(3)


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        app.run("stdio")
    else:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
