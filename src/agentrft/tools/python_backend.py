"""The backend for in-process Python tools (``@tool`` functions named by ``module:function`` / ``module:*``)."""

from __future__ import annotations

import concurrent.futures as cf
import json
from typing import Any

from agentrft.tools.base import ToolBackend, ToolResult
from agentrft.tools.registry import PythonTool, ToolContext


class PythonToolBackend(ToolBackend):
    """In-process Python functions. Each call runs on a worker thread so a timeout can be enforced.

    A timed-out function cannot be killed (Python threads are not preemptible); it is abandoned, its result
    discarded, and the model is told it timed out. Tools that may hang should be served over HTTP instead.
    """

    def __init__(self, tools: list[PythonTool], *, max_workers: int = 16):
        self.tools = {t.name: t for t in tools}
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pytool")

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema for t in self.tools.values()]

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        return self.tools[name].check_arguments(arguments)

    def requires_approval(self, name: str) -> bool:
        return self.tools[name].requires_approval

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext, timeout_s: float) -> ToolResult:
        t = self.tools[name]
        fut = self._pool.submit(t.invoke, arguments, ctx)
        try:
            value = fut.result(timeout=t.timeout_s or timeout_s)
        except cf.TimeoutError:
            return ToolResult(f"Error: tool {name!r} timed out after {t.timeout_s or timeout_s:g}s", "timeout", "timeout")
        except Exception as e:
            return ToolResult(f"Error: tool {name!r} failed: {type(e).__name__}: {e}", "error", f"{type(e).__name__}: {e}")
        if isinstance(value, str):
            return ToolResult(value)
        try:
            return ToolResult(json.dumps(value, ensure_ascii=False, default=str))
        except (TypeError, ValueError) as e:
            return ToolResult(f"Error: tool {name!r} returned an unserializable value", "error", str(e))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
