"""``agentrft traces export``: production traces back into training data (issue 17; docs/flywheel.md).

Selection (all filters AND together) over conversations (traces/conversations.py) of the store's served requests:

* where: ``deployment``, ``model``, ``arm`` (``production`` | ``candidate``: a conversation any of whose served
  requests that arm answered), a time window ``since``/``until`` on the requests;
* outcome: ``status`` ``ok`` (every request answered 200) | ``error`` (some request refused or failed) | ``any``;
* feedback (the newest given per conversation): ``min_score``/``max_score``, ``labels`` (any of), ``feedback``
  ``with`` | ``without`` | ``any``;
* ``disagreement``: only conversations where a shadow answer differed from the served one.

(Online grades are not in the store yet; they will be one more per-conversation number beside the feedback score.)

Outputs, each written atomically and then loaded back with the project's dataset loader (a file that would not
load is an error, never a silent bad file):

* ``rows``: OpenAI RFT JSONL — ``messages`` = the conversation up to the user's turn, ``tools`` as the client
  offered them, reference keys from ``reference_from`` (``KEY=SOURCE``; SOURCE ``label`` | ``score`` | ``comment``
  | ``answer`` (the served final text) | ``metadata.NAME`` (the client's request metadata); default
  ``reference=label``), and ``source_trace_id``;
* ``demos``: whole conversations that ended in a final answer with every request answered, for warm-start SFT
  (``agentrft sft``'s ``demos_file``; ``data.load_dataset(allow_demos=True)``).

De-duplication: a conversation whose normalized prompt (roles and texts, whitespace collapsed, case folded; before
or after redaction) is already in a ``dedupe_against`` file, or earlier in this export, is skipped. Redaction
(traces/pii.py) runs on every text before anything is written.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agentrft.data import DatasetError, load_dataset, write_jsonl
from agentrft.traces.conversations import Conversation, group, prompt_key, prompt_of, text_of
from agentrft.traces.pii import Redactor

SOURCES = ("label", "score", "comment", "answer")
PAGE = 1000


@dataclass
class ExportSpec:
    rows: str | None = None
    demos: str | None = None
    deployment: str | None = None
    model: str | None = None
    arm: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    status: str = "any"
    min_score: float | None = None
    max_score: float | None = None
    labels: list[str] = field(default_factory=list)
    feedback: str = "any"
    disagreement: bool = False
    reference_from: dict[str, str] = field(default_factory=lambda: {"reference": "label"})
    require_reference: bool = False
    dedupe_against: list[str] = field(default_factory=list)
    limit: int | None = None

    def check(self) -> None:
        if not self.rows and not self.demos:
            raise ValueError("give --rows FILE (RFT rows) and/or --demos FILE (demonstrations)")
        if self.status not in ("ok", "error", "any"):
            raise ValueError(f"--status must be ok, error or any; got {self.status!r}")
        if self.feedback not in ("with", "without", "any"):
            raise ValueError(f"--feedback must be with, without or any; got {self.feedback!r}")
        if self.arm not in (None, "production", "candidate"):
            raise ValueError(f"--arm must be production or candidate (shadow answers are never exported as "
                             f"served); got {self.arm!r}")
        for opt, v in (("--min-score", self.min_score), ("--max-score", self.max_score)):
            if v is not None and not math.isfinite(v):  # NaN matches nothing: an empty export, said nowhere
                raise ValueError(f"{opt} must be a finite number; got {v}")
        for opt, path in (("--rows", self.rows), ("--demos", self.demos)):
            if path and Path(path).is_dir():
                raise ValueError(f"{opt} {path}: is a directory; give a file path")
        for key, src in self.reference_from.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key in ("messages", "tools"):
                raise ValueError(f"--reference-from {key}={src}: the key must be a plain name other than messages "
                                 "and tools")
            if src not in SOURCES and not (src.startswith("metadata.") and len(src) > 9):
                raise ValueError(f"--reference-from {key}={src}: the source must be one of {', '.join(SOURCES)} "
                                 "or metadata.NAME")


def parse_time(raw: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (UTC when no zone is given) or an age: ``90s``, ``30m``, ``24h``, ``7d`` ago."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", raw)
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        try:
            return now - timedelta(**{unit: float(m.group(1))})
        except OverflowError:  # '99999999d' is before year 1
            raise ValueError(f"{raw!r}: an age too large to be a time") from None
    try:
        t = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{raw!r} is neither an ISO time (2026-11-29T18:00:00Z) nor an age (30m, 24h, 7d)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_mapping(items: list[str]) -> dict[str, str]:
    out = {}
    for it in items:
        key, sep, src = it.partition("=")
        if not sep:
            raise ValueError(f"--reference-from {it!r}: expected KEY=SOURCE (e.g. reference=label)")
        out[key.strip()] = src.strip()
    return out


def read_conversations(store: Any, spec: ExportSpec) -> list[Conversation]:
    """Every request in the window (keyset pages of PAGE rows), grouped, with each conversation's feedback."""
    rows: list[dict] = []
    after = None
    while True:
        page = store.traces(deployment=spec.deployment, model=spec.model, since=spec.since, until=spec.until,
                            after_id=after, limit=PAGE)
        rows += page
        if len(page) < PAGE:
            break
        after = page[-1]["id"]
    convs = group(rows)
    if convs:
        for f in store.feedback(trace_ids=list(convs)):
            convs[f["trace_id"]].feedback.append(f)
    return [c for c in convs.values() if c.served]


def why_not(c: Conversation, spec: ExportSpec) -> str | None:
    """The first filter a conversation fails (the report's skip reason), or None when it is selected."""
    if not c.chat:
        return "not a chat conversation"
    if spec.arm is not None and spec.arm not in c.arms():
        return f"not answered by the {spec.arm} arm"
    if spec.status == "ok" and not c.ok:
        return "a request failed"
    if spec.status == "error" and c.ok:
        return "no request failed"
    score, label = c.newest("score"), c.newest("label")
    if spec.feedback == "with" and not c.feedback:
        return "no feedback"
    if spec.feedback == "without" and c.feedback:
        return "has feedback"
    if spec.min_score is not None and (score is None or score < spec.min_score):
        return "score below min_score (or none)"
    if spec.max_score is not None and (score is None or score > spec.max_score):
        return "score above max_score (or none)"
    if spec.labels and label not in spec.labels:
        return "label not selected"
    if spec.disagreement and not c.disagreement():
        return "no arm disagreement"
    return None


def references(c: Conversation, mapping: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, src in mapping.items():
        if src in ("label", "score", "comment"):
            v = c.newest(src)
        elif src == "answer":
            ans = c.transcript()[-1] if c.complete() else None
            v = text_of(ans.get("content")) if ans else None
        else:
            v = (c.served[0].get("metadata") or {}).get(src[len("metadata."):])
        if v is not None:
            out[key] = v
    return out


def _redact_messages(msgs: list[dict], r: Redactor) -> list[dict]:
    out = []
    for m in msgs:
        m = dict(m)
        if isinstance(m.get("content"), str):
            m["content"] = r(m["content"])
        elif isinstance(m.get("content"), list):
            m["content"] = [{**p, "text": r(p["text"])} if isinstance(p, dict) and "text" in p else p
                            for p in m["content"]]
        if m.get("tool_calls"):
            m["tool_calls"] = [{**tc, "function": {**tc["function"], "arguments": r(tc["function"].get("arguments")
                                                                                     or "{}")}}
                               for tc in m["tool_calls"]]
        out.append(m)
    return out


def known_prompts(paths: list[str]) -> set[str]:
    """Normalized-prompt keys of existing training files (RFT rows or demos; each loaded and checked)."""
    keys: set[str] = set()
    for p in paths:
        for row in load_dataset(p, allow_demos=True):
            prompt = prompt_of(row.messages)
            if prompt is not None:
                keys.add(prompt_key(prompt))
    return keys


def export(store: Any, spec: ExportSpec, redactor: Redactor | None = None) -> dict[str, Any]:
    """Select, redact, de-duplicate and write; returns the report (counts, and why conversations were skipped)."""
    spec.check()
    redactor = redactor if redactor is not None else Redactor()
    seen = known_prompts(spec.dedupe_against)
    convs = read_conversations(store, spec)
    skipped: dict[str, int] = {}
    rows: list[dict] = []
    demos: list[dict] = []
    dupes = 0

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    selected = 0
    for c in convs:
        if spec.limit is not None and selected >= spec.limit:
            skip("over --limit")
            continue
        reason = why_not(c, spec)
        if reason is not None:
            skip(reason)
            continue
        full = c.transcript()
        prompt = prompt_of(full)
        if prompt is None:
            skip("no user turn before tool traffic")
            continue
        refs = references(c, spec.reference_from)
        if spec.require_reference and len(refs) < len(spec.reference_from):
            skip("a --reference-from value is missing")
            continue
        raw_key = prompt_key(prompt)
        red_prompt = _redact_messages(prompt, redactor)
        key = prompt_key(red_prompt)
        if raw_key in seen or key in seen:
            dupes += 1
            continue
        seen.update((raw_key, key))
        selected += 1
        refs = {k: redactor(v) if isinstance(v, str) else v for k, v in refs.items()}
        tools = c.tools
        if spec.rows:
            rows.append({"messages": red_prompt, **({"tools": tools} if tools else {}), **refs,
                         "source_trace_id": c.trace_id})
        if spec.demos:
            if c.ok and c.complete():
                demos.append({"messages": _redact_messages(full, redactor), **({"tools": tools} if tools else {}),
                              "source_trace_id": c.trace_id})
            else:
                skip("demos: conversation did not end in an answered final turn")
    for path, out, demo in ((spec.rows, rows, False), (spec.demos, demos, True)):
        if path:
            write_jsonl(path, out)
            if out:
                try:
                    load_dataset(path, allow_demos=demo)
                except DatasetError as e:
                    raise DatasetError([f"exported {p}" for p in e.problems], e.warnings) from None
    return {"conversations": len(convs), "selected": selected, "rows": len(rows) if spec.rows else None,
            "demos": len(demos) if spec.demos else None, "duplicates": dupes, "redactions": redactor.count,
            "skipped": skipped, "files": {k: v for k, v in (("rows", spec.rows), ("demos", spec.demos)) if v}}
