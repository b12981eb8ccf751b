"""The drift monitor: live inputs of a deployment against the data its candidate was trained on.

Reference (from the training JSONL, OpenAI RFT rows ``{messages, tools?}``): the set of word tokens of the
user/system/tool messages (the tiny models' pre-tokenizer regex, so a "token" is a word, a number, a run of
punctuation), the mean ``μ`` and standard deviation ``σ`` of a prompt's length in such tokens, the tool names
offered, and the share of tool results that are errors.

Each live request (production and candidate arms; a shadow answer repeats a request already counted) becomes
``{tokens, unseen, tools_unseen, tool_msgs, tool_errors}``; over the last ``window`` of them::

    unseen_token_rate = Σ unseen / Σ tokens                  alert when > max_unseen_token_rate
    length_z          = (mean(tokens) − μ) / (σ / sqrt(w))   alert when |length_z| > max_length_z
    unseen_tools      = tools offered that training never had  alert when any (alert_on_unseen_tools)
    tool_error_rate   = Σ tool_errors / Σ tool_msgs          alert when > max(max_tool_error_rate, 2 × training's)

(``σ`` floored at 1 token; ``w`` the requests in the window; nothing is judged before ``min_samples`` requests.)
A tool result is an error when its text is a JSON object with an ``error`` key or starts with ``error``/``Error``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORD = re.compile(r"[A-Za-z0-9_]+(?:[./][A-Za-z0-9_]+)*|[^A-Za-z0-9_\s]+")


def words(text: str) -> list[str]:
    return WORD.findall(text or "")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def is_tool_error(text: str) -> bool:
    t = (text or "").strip()
    if t[:5].lower() == "error":
        return True
    if t.startswith("{"):
        try:
            v = json.loads(t)
        except ValueError:
            return False
        return isinstance(v, dict) and "error" in v
    return False


def input_profile(messages: list[dict], tools: list[dict] | None) -> dict:
    """What the monitor keeps of one request's input: its word tokens, tool names, tool results."""
    toks: list[str] = []
    tool_msgs = tool_errors = 0
    for m in messages or []:
        if not isinstance(m, dict):
            continue
        role, text = m.get("role"), _text(m.get("content"))
        if role in ("user", "system", "developer", "tool"):
            toks += words(text)
        if role == "tool":
            tool_msgs += 1
            tool_errors += int(is_tool_error(text))
    names = []
    for t in tools or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and fn.get("name"):
            names.append(str(fn["name"]))
    return {"words": toks, "tools": names, "tool_msgs": tool_msgs, "tool_errors": tool_errors}


@dataclass
class Reference:
    vocab: set[str] = field(default_factory=set)
    mean_len: float = 0.0
    std_len: float = 1.0
    tools: set[str] = field(default_factory=set)
    tool_error_rate: float = 0.0
    rows: int = 0

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "Reference":
        """The reference of a training file; ValueError naming ``file:line`` for a row that is not JSON."""
        path = Path(path)
        ref, lens, msgs, errs = cls(), [], 0, 0
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"drift.reference: cannot read {path}: {e.strerror}") from None
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"drift.reference: {path}:{i}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"drift.reference: {path}:{i}: a row must be a JSON object")
            p = input_profile(row.get("messages") or [], row.get("tools"))
            ref.vocab.update(p["words"])
            lens.append(len(p["words"]))
            ref.tools.update(p["tools"])
            msgs += p["tool_msgs"]
            errs += p["tool_errors"]
        if not lens:
            raise ValueError(f"drift.reference: {path} has no rows")
        ref.rows = len(lens)
        ref.mean_len = sum(lens) / len(lens)
        var = sum((x - ref.mean_len) ** 2 for x in lens) / max(1, len(lens) - 1)
        ref.std_len = max(1.0, math.sqrt(var))
        ref.tool_error_rate = errs / msgs if msgs else 0.0
        return ref

    def summarize(self, profile: dict) -> dict:
        """The compact record of one live request kept in the deployment's window."""
        return {"n": len(profile["words"]), "unseen": sum(1 for w in profile["words"] if w not in self.vocab),
                "tools_unseen": sorted(set(profile["tools"]) - self.tools), "tool_msgs": profile["tool_msgs"],
                "tool_errors": profile["tool_errors"]}


def check_window(ref: Reference, window: list[dict], cfg: Any) -> tuple[dict, list[dict]]:
    """``(statistics, alerts)`` over a window of summaries (see the module docstring); ``cfg``: the policy's
    ``drift`` section."""
    w = len(window)
    stats: dict[str, Any] = {"requests": w}
    if w < cfg.min_samples:
        return stats, []
    toks = sum(s["n"] for s in window)
    unseen = sum(s["unseen"] for s in window)
    msgs = sum(s["tool_msgs"] for s in window)
    errs = sum(s["tool_errors"] for s in window)
    stats["unseen_token_rate"] = unseen / toks if toks else 0.0
    stats["length_z"] = (toks / w - ref.mean_len) / (ref.std_len / math.sqrt(w))
    stats["unseen_tools"] = sorted({t for s in window for t in s["tools_unseen"]})
    stats["tool_error_rate"] = errs / msgs if msgs else 0.0
    alerts = []
    if stats["unseen_token_rate"] > cfg.max_unseen_token_rate:
        alerts.append({"signal": "unseen_tokens", "value": round(stats["unseen_token_rate"], 4),
                       "limit": cfg.max_unseen_token_rate})
    if abs(stats["length_z"]) > cfg.max_length_z:
        alerts.append({"signal": "prompt_length", "value": round(stats["length_z"], 3), "limit": cfg.max_length_z})
    if cfg.alert_on_unseen_tools and stats["unseen_tools"]:
        alerts.append({"signal": "unseen_tools", "value": stats["unseen_tools"], "limit": []})
    limit = max(cfg.max_tool_error_rate, 2 * ref.tool_error_rate)
    if msgs and stats["tool_error_rate"] > limit:
        alerts.append({"signal": "tool_errors", "value": round(stats["tool_error_rate"], 4), "limit": round(limit, 4)})
    return stats, alerts
