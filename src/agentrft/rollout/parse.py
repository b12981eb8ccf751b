"""Parse tool calls out of an assistant turn's text.

Two dialects are read:

* Hermes/Qwen tags: ``<tool_call>{"name": "grep", "arguments": {"pattern": "x"}}</tool_call>`` — any number per
  turn (parallel calls), text around them is the message content.
* Plain JSON: the whole turn is a JSON object ``{"name": ..., "arguments": {...}}`` (``parameters`` is accepted
  for ``arguments``), an OpenAI-shaped ``{"type": "function", "function": {...}}``, or a list of those.

A turn with no call is a final answer. A turn that tries to call a tool but cannot be parsed (bad JSON, a
missing name, an unclosed tag) yields ``errors``: the agent loop shows them to the model as a tool message and
counts them — it never crashes and never guesses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_TAG = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text of the arguments object, as the model wrote it (re-serialized if it was an object)


@dataclass
class ParsedTurn:
    content: str
    calls: list[ParsedCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return not self.calls and not self.errors


def _call_from_obj(obj: Any) -> ParsedCall:
    """Accept {"name", "arguments"|"parameters"} or {"type": "function", "function": {...}}."""
    if not isinstance(obj, dict):
        raise ValueError(f"a tool call must be a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError('a tool call needs a string "name"')
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f'"arguments" of {name!r} is a string but not JSON: {e.msg}') from None
        if not isinstance(parsed, dict):
            raise ValueError(f'"arguments" of {name!r} must be a JSON object')
        return ParsedCall(name, args)
    if not isinstance(args, dict):
        raise ValueError(f'"arguments" of {name!r} must be a JSON object, got {type(args).__name__}')
    return ParsedCall(name, json.dumps(args, ensure_ascii=False))


def calls_from_objects(items: list[Any]) -> tuple[list[ParsedCall], list[str]]:
    """Each JSON object as a call, or a ``malformed tool call`` error saying why (the other calls are kept)."""
    calls, errors = [], []
    for o in items:
        try:
            calls.append(_call_from_obj(o))
        except ValueError as e:
            errors.append(f"malformed tool call: {e}")
    return calls, errors


def parse_turn(text: str) -> ParsedTurn:
    calls: list[ParsedCall] = []
    errors: list[str] = []
    if "<tool_call>" in text:
        for body in _TAG.findall(text):
            try:
                calls.append(_call_from_obj(json.loads(body)))
            except json.JSONDecodeError as e:
                errors.append(f"malformed tool call: not valid JSON ({e.msg} at char {e.pos}): {body.strip()[:200]}")
            except ValueError as e:
                errors.append(f"malformed tool call: {e}")
        rest = _TAG.sub("", text)
        if "<tool_call>" in rest:
            errors.append("malformed tool call: <tool_call> without a closing </tool_call>")
            rest = rest.split("<tool_call>", 1)[0]
        return ParsedTurn(rest.strip(), calls, errors)

    stripped = text.strip()
    if stripped[:1] in "{[":
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as e:
            if re.match(r'^\[?\s*\{\s*"(name|type|function)"', stripped):
                return ParsedTurn("", [], [f"malformed tool call: not valid JSON ({e.msg} at char {e.pos})"])
            return ParsedTurn(stripped)
        items = obj if isinstance(obj, list) else [obj]
        looks_like_calls = items and all(
            isinstance(o, dict) and ("name" in o and ("arguments" in o or "parameters" in o) or "function" in o)
            for o in items
        )
        if looks_like_calls:
            calls, errors = calls_from_objects(items)
            return ParsedTurn("", calls, errors)
    return ParsedTurn(stripped)
