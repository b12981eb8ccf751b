"""Served requests (the store's ``traces`` rows) regrouped into conversations, with what export selects on.

A conversation is every chat request with one ``trace_id`` (the client's ``X-Trace-Id``; each request of an
agentic episode resends the whole history, so the *last* answered request holds it all). Rows answered by a
deployment's ``shadow`` arm were never shown to anyone: they are kept apart, only to detect **arm disagreement** —
a shadow answer that differs from the served answer to the same request (matched by ``request_id``, else by
identical messages). Answers are compared by their text (whitespace collapsed, case folded) and tool calls
(name and parsed arguments), so formatting noise is not a disagreement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def text_of(content: Any) -> str:
    """A message's text: a string, or OpenAI's list of text parts joined."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _norm(s: str) -> str:
    return " ".join(s.split()).casefold()


def prompt_of(messages: list[dict]) -> list[dict] | None:
    """The conversation up to the user's turn: the longest prefix free of tool traffic (no ``tool`` message, no
    assistant ``tool_calls``) that ends with a ``user`` message; None when there is none."""
    last_user = None
    for i, m in enumerate(messages):
        if m.get("role") == "tool" or m.get("tool_calls"):
            break
        if m.get("role") == "user":
            last_user = i
    return None if last_user is None else [clean_message(m) for m in messages[: last_user + 1]]


def prompt_key(messages: list[dict]) -> str:
    """The normalized prompt's digest: roles and texts, whitespace collapsed and case folded."""
    norm = [[m.get("role", ""), _norm(text_of(m.get("content")))] for m in messages]
    return hashlib.sha256(json.dumps(norm, ensure_ascii=False).encode()).hexdigest()


def clean_message(m: dict) -> dict:
    return {k: m[k] for k in MESSAGE_KEYS if k in m and m[k] is not None or (k == "content" and k in m)}


def answer_of(trace: dict) -> dict | None:
    """The first choice's assistant message of a served request (None when it has no answer)."""
    choices = trace.get("choices") or []
    if not choices or not isinstance(choices[0], dict) or not isinstance(choices[0].get("message"), dict):
        return None
    return clean_message(choices[0]["message"])


def answer_signature(msg: dict | None) -> Any:
    if msg is None:
        return None
    calls = []
    for c in msg.get("tool_calls") or []:
        f = c.get("function", {})
        try:
            args = json.loads(f.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = f.get("arguments")
        calls.append([f.get("name"), args])
    return [_norm(text_of(msg.get("content"))), calls]


@dataclass
class Conversation:
    trace_id: str
    served: list[dict] = field(default_factory=list)  # requests answered to the client, oldest first
    shadows: list[dict] = field(default_factory=list)  # a shadow arm's answers (never returned)
    feedback: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        ok = [t for t in self.served if t.get("status") == 200]
        return (ok or self.served)[-1]

    @property
    def ok(self) -> bool:
        return all(t.get("status") == 200 for t in self.served)

    @property
    def chat(self) -> bool:
        return all(t.get("endpoint") == "chat.completions" for t in self.served)

    @property
    def tools(self) -> list[dict] | None:
        return self.last.get("tools") or None

    def transcript(self) -> list[dict]:
        """The whole conversation: the last answered request's messages and its answer."""
        msgs = [clean_message(m) for m in self.last.get("messages") or []]
        ans = answer_of(self.last) if self.last.get("status") == 200 else None
        return msgs + ([ans] if ans is not None else [])

    def complete(self) -> bool:
        """Ends with a final answer (text, no tool call) the client got."""
        ans = answer_of(self.last)
        return self.last.get("status") == 200 and ans is not None and not ans.get("tool_calls") and \
            bool(text_of(ans.get("content")).strip())

    def disagreement(self) -> bool:
        by_req = {t["request_id"]: t for t in self.served}
        by_msgs = {json.dumps(t.get("messages"), sort_keys=True): t for t in self.served}
        for s in self.shadows:
            prod = by_req.get(s["request_id"]) or by_msgs.get(json.dumps(s.get("messages"), sort_keys=True))
            if prod is not None and answer_signature(answer_of(s)) != answer_signature(answer_of(prod)):
                return True
        return False

    def newest(self, key: str) -> Any:
        """The newest feedback value of ``key`` (score, label, comment) that was given."""
        vals = [f[key] for f in self.feedback if f.get(key) not in (None, "")]
        return vals[-1] if vals else None

    def arms(self) -> set[str | None]:
        return {t.get("arm") for t in self.served}


def group(traces: list[dict]) -> dict[str, Conversation]:
    """Conversations by trace_id, in order of their first request."""
    out: dict[str, Conversation] = {}
    for t in traces:
        c = out.setdefault(t["trace_id"], Conversation(t["trace_id"]))
        (c.shadows if t.get("arm") == "shadow" else c.served).append(t)
    return out
