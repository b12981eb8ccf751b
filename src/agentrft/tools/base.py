"""The ToolBackend interface: where tool calls go (Python functions, HTTP endpoints, MCP servers).

The :class:`~agentrft.tools.router.ToolRouter` owns everything common to all backends — unknown tools,
argument JSON parsing, scopes, approvals, the per-rollout budget, the audit record — and asks a backend only
to run one call. Backends are called from worker threads, concurrently; they must be thread-safe.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from agentrft.tools.registry import ToolContext


@dataclass
class ToolResult:
    output: str  # what the model sees as the tool message content
    status: str = "ok"  # one of agentrft.types.TOOL_STATUSES
    error: str | None = None  # a short reason for logs/store when status != ok
    retries: int = 0
    drop: bool = False  # the whole rollout must be dropped (e.g. 5xx after retries, per the contract)
    meta: dict[str, Any] = field(default_factory=dict)  # truncated, http_status, bytes…


class ToolBackend(ABC):
    """A set of tools reachable one way."""

    @abstractmethod
    def schemas(self) -> list[dict[str, Any]]:
        """OpenAI function schemas (``{"type":"function","function":{name,description,parameters}}``)."""

    @abstractmethod
    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext, timeout_s: float) -> ToolResult:
        """Run one call. Must not raise for tool failures; return a ToolResult with a non-ok status."""

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Return an error message when the arguments do not fit the tool's schema (default: no check)."""
        return None

    def requires_approval(self, name: str) -> bool:
        return False

    def end_rollout(self, ctx: ToolContext) -> None:
        """Called once when a rollout ends (clean per-trace state)."""

    def close(self) -> None:
        """Release clients, subprocesses, pools."""

    def names(self) -> list[str]:
        return [s["function"]["name"] if "function" in s else s["name"] for s in self.schemas()]
