"""Streaming a chat turn: content deltas as tokens arrive, tool calls as structured ``tool_calls`` deltas.

Text outside ``<tool_call>`` blocks is sent as content as soon as it cannot be the start of a tag (a trailing
``<tool_`` is held back). A block is parsed by the rollout parser when its closing tag arrives and sent as one
call: a delta with its ``id``, ``type`` and ``name`` (empty ``arguments``), then its ``arguments`` in pieces — the
OpenAI SDK's stream helpers join them. A block that does not parse, or one never closed, is sent as content and
flagged ``malformed``. A turn that starts with ``{``/``[`` may be the plain-JSON dialect: it is held until the turn
ends and parsed whole, as the non-streaming path does.

Other dialects (``agentrft.rollout.dialects``): content is streamed until one of the dialect's start markers
appears (a partial marker at the end is held back); from there the rest of the turn is held and parsed whole by
the dialect when the turn ends, then sent as call deltas like above.
"""

from __future__ import annotations

import uuid
from typing import Any

from agentrft.rollout.dialects import DIALECTS, Dialect
from agentrft.rollout.parse import parse_turn

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ARG_PIECE = 16  # characters of arguments per delta


class ToolCallStream:
    def __init__(self, tools_on: bool, dialect: Dialect | None = None, max_calls: int | None = None):
        self.tools_on = tools_on
        self.dialect = dialect or DIALECTS["hermes"]
        self.max_calls = max_calls  # parallel_tool_calls: false → 1 (later calls are dropped)
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
        if self.max_calls is not None and len(self.calls) >= self.max_calls:
            return
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
        if self.dialect.name != "hermes":
            return self._feed_held(text, final, out)
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

    def _feed_held(self, text: str, final: bool, out: list[dict]) -> list[dict]:
        """Content up to the first start marker (or a JSON start at the very beginning), the rest parsed at the end."""
        rest = text[self.pos :]
        starts = [i for i in (rest.find(m) for m in self.dialect.start_markers) if i >= 0]
        if self.pos == 0 and rest.lstrip()[:1] in ("{", "["):
            starts.append(0)
        if not starts and not final:
            n = len(rest)
            for m in self.dialect.start_markers:
                for k in range(min(len(m) - 1, len(rest)), 0, -1):
                    if m.startswith(rest[-k:]):
                        n = min(n, len(rest) - k)
                        break
            self._text(rest[:n], out)
            self.pos += n
            return out
        cut = min(starts) if starts else len(rest)
        self._text(rest[:cut], out)
        self.pos += cut
        if not final:
            return out
        held = text[self.pos :]
        self.pos = len(text)
        if not held:
            return out
        parsed = self.dialect.parse(held)
        if parsed.calls and not parsed.errors:
            self._text(parsed.content, out)
            for c in parsed.calls:
                self._call(c.name, c.arguments, out)
        else:
            self.malformed = bool(parsed.errors)
            self._text(held, out)
        return out
