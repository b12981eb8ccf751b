"""A tool backend of your own: tools that answer from a fixed table (say, a FAQ the agent must consult).

A run config names the factory as the entry's ``type``; the entry's other keys are the factory's::

    tools:
      - {type: "faq_backend:make_backend", name: "faq", answers: {"refund window": "30 days"}}

The router does everything common to every backend (unknown tools, argument checks, scopes, approvals, budgets,
audit); a backend only lists its tools and runs one call.
"""

from __future__ import annotations

from typing import Any

from agentrft.config import ConfigError
from agentrft.tools.backends import BackendOptions
from agentrft.tools.base import ToolBackend, ToolResult
from agentrft.tools.registry import ToolContext


class FaqBackend(ToolBackend):
    def __init__(self, name: str, answers: dict[str, str]):
        self.name, self.answers = name, answers

    def schemas(self) -> list[dict[str, Any]]:
        return [{"type": "function", "function": {
            "name": self.name, "description": "Look a question up in the FAQ.",
            "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}}}]

    def check_arguments(self, name: str, arguments: dict[str, Any]) -> str | None:
        return None if isinstance(arguments.get("topic"), str) else "topic: a string is required"

    def call(self, name: str, arguments: dict[str, Any], ctx: ToolContext, timeout_s: float) -> ToolResult:
        topic = arguments["topic"].strip().lower()
        if topic not in self.answers:  # a tool failure is an answer the model sees, never an exception
            return ToolResult(f"Error: no FAQ entry for {topic!r}; topics: {', '.join(sorted(self.answers))}",
                              status="error", error="unknown topic")
        return ToolResult(self.answers[topic])


def make_backend(entries: list[tuple[str, dict[str, Any]]], options: BackendOptions) -> list[ToolBackend]:
    """One backend per entry; ``where`` (``tools[2]``) goes into every config error."""
    out: list[ToolBackend] = []
    for where, entry in entries:
        answers = entry.get("answers")
        if not isinstance(answers, dict) or not all(isinstance(v, str) for v in answers.values()):
            raise ConfigError(f"{where}.answers: a mapping of topic -> answer text is required")
        out.append(FaqBackend(str(entry.get("name") or "faq"), {k.lower(): v for k, v in answers.items()}))
    return out
