"""Streaming a chat turn: content deltas as tokens arrive, tool calls as structured ``tool_calls`` deltas.

Text outside ``<tool_call>`` blocks is sent as content as soon as it cannot be the start of a tag (a trailing
``<tool_`` is held back). A block is parsed by the rollout parser when its closing tag arrives and sent as one
call: a delta with its ``id``, ``type`` and ``name`` (empty ``arguments``), then its ``arguments`` in pieces — the
OpenAI SDK's stream helpers join them. A block that does not parse, or one never closed, is sent as content and
flagged ``malformed``. A turn that starts with ``{``/``[`` may be the plain-JSON dialect: it is held until the turn
ends and parsed whole, as the non-streaming path does.
"""

from __future__ import annotations

import uuid
from typing import Any

from agentrft.rollout.parse import parse_turn

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ARG_PIECE = 16  # characters of arguments per delta


class ToolCallStream:
    def __init__(self, tools_on: bool):
        self.tools_on = tools_on
        self.pos = 0
        self.content_parts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.malformed = False

    @property
    def content(self) -> str:
        return "".join(self.content_parts).strip()

    def _text(self, s: str, out: list[dict]) -> None:
        if s:
            self.content_parts.append(s)
            out.append({"content": s})

    def _call(self, name: str, arguments: str, out: list[dict]) -> None:
        k = len(self.calls)
        cid = f"call_{uuid.uuid4().hex[:24]}"
        self.calls.append({"id": cid, "type": "function", "function": {"name": name, "arguments": arguments}})
        out.append({"tool_calls": [{"index": k, "id": cid, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]})
        for a in range(0, len(arguments), ARG_PIECE):
            out.append({"tool_calls": [{"index": k, "function": {"arguments": arguments[a : a + ARG_PIECE]}}]})

    def feed(self, text: str, *, final: bool) -> list[dict]:
        """Deltas for what ``text`` (the whole turn so far) adds since the last call."""
        out: list[dict] = []
        if not final:
            text = text.rstrip("\ufffd")  # an incomplete UTF-8 sequence: wait for its next bytes
        if not self.tools_on:
            self._text(text[self.pos :], out)
            self.pos = max(self.pos, len(text))
            return out
        if self.pos == 0 and text.lstrip()[:1] in ("{", "["):
            if not final:
                return out
            parsed = parse_turn(text)
            if parsed.calls and not parsed.errors:
                for c in parsed.calls:
                    self._call(c.name, c.arguments, out)
            else:
                self.malformed = bool(parsed.errors)
                self._text(text, out)
            self.pos = len(text)
            return out
        while True:
            rest = text[self.pos :]
            i = rest.find(OPEN)
            if i < 0:
                if final:
                    n = len(rest)
                else:  # hold back a suffix that may grow into the opening tag
                    n = len(rest)
                    for k in range(min(len(OPEN) - 1, len(rest)), 0, -1):
                        if OPEN.startswith(rest[-k:]):
                            n = len(rest) - k
                            break
                self._text(rest[:n], out)
                self.pos += n
                return out
            self._text(rest[:i], out)
            self.pos += i
            j = rest.find(CLOSE, i)
            if j < 0:
                if final:  # never closed
                    self.malformed = True
                    self._text(rest[i:], out)
                    self.pos = len(text)
                return out
            block = rest[i : j + len(CLOSE)]
            parsed = parse_turn(block)
            if parsed.calls and not parsed.errors:
                for c in parsed.calls:
                    self._call(c.name, c.arguments, out)
            else:
                self.malformed = True
                self._text(block, out)
            self.pos += len(block)
