"""Helpers shared by the bundled environments: deterministic JSONL, demo conversations, answer parsing.

Determinism: every generator draws from one ``random.Random(seed)`` and never iterates a ``set`` of strings
(Python salts string hashes per process), so the same seed gives byte-identical files in any process.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from agentrft import data
from agentrft.tools.registry import PythonTool, ToolContext


def dumps(obj: Any) -> str:
    """One canonical JSON line (stable key order as built, UTF-8 kept, no trailing spaces)."""
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows atomically, one canonical line each (:func:`dumps`)."""
    return data.write_jsonl(path, rows, dumps=dumps)


def write_json(path: Path, obj: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Read rows; a bad line raises ValueError naming ``file:line``."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e


def check_sizes(n_train: int, n_valid: int, n_demos: int | None, wrong_frac: float, redundant_frac: float) -> None:
    """Reject impossible generator arguments with a message naming the argument."""
    if not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train: expected an integer >= 1, got {n_train!r}")
    if not isinstance(n_valid, int) or n_valid < 0:
        raise ValueError(f"n_valid: expected an integer >= 0, got {n_valid!r}")
    if n_demos is not None and (not isinstance(n_demos, int) or n_demos < 0):
        raise ValueError(f"n_demos: expected an integer >= 0 (or None for n_train), got {n_demos!r}")
    for name, v in (("wrong_frac", wrong_frac), ("redundant_frac", redundant_frac)):
        if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}: expected a fraction in [0, 1], got {v!r}")


def tool_schemas(tools: list[PythonTool]) -> list[dict[str, Any]]:
    return [t.schema for t in tools]


def run_demo(
    row: dict[str, Any],
    plan: list[tuple[str, dict[str, Any]]],
    answer: str,
    tools: dict[str, PythonTool],
    *,
    trace_id: str,
    data_dir: str | None,
) -> list[dict[str, Any]]:
    """Execute a demonstration plan against the REAL tools and return the whole conversation.

    ``plan`` is a list of (tool name, arguments); each becomes one assistant message with one tool call
    (``id`` ``call_<k>``, arguments a JSON string) followed by the ``role: tool`` message holding what the
    tool really returned. The conversation ends with the assistant's final ``answer``. Per-rollout state
    (e.g. a support_desk database copy) is released when the plan ends.
    """
    ctx = ToolContext(trace_id=trace_id, item=row, data_dir=data_dir)
    messages = [dict(m) for m in row["messages"]]
    try:
        for k, (name, args) in enumerate(plan):
            call_id = f"call_{k}"
            out = tools[name].invoke(dict(args), ctx.for_call(call_id))
            if not isinstance(out, str):
                out = json.dumps(out)
            messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args)},
                        }
                    ],
                }
            )
            messages.append({"role": "tool", "tool_call_id": call_id, "content": out})
    finally:
        errors = ctx.close()
        if errors:
            raise RuntimeError(f"demo {trace_id}: cleanup failed: {errors}")
    messages.append({"role": "assistant", "content": answer})
    return messages


def efficiency(n_calls: int, target: int, budget: int) -> float:
    """The ``tool_efficiency`` shape used in our graders: 1.0 at/below ``target`` calls, 0.0 at/above
    ``budget``, linear in between: ``clip((budget - n) / (budget - target), 0, 1)``.

    (The grader type itself lives in agentrft.graders; this copy documents the math for the envs' docs/tests.)
    """
    if n_calls <= target:
        return 1.0
    if n_calls >= budget:
        return 0.0
    return (budget - n_calls) / (budget - target)


def final_line(text: str | None) -> str:
    """The answer line: the last non-empty line of the final text, whitespace collapsed, trailing '.' dropped."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    return re.sub(r"\s+", " ", lines[-1]).rstrip(".").strip()


def trajectory_calls(sample: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The rollout's tool calls (name, arguments, output, status), or None when the sample has no trajectory
    (e.g. OpenAI ``graders/run`` on bare text). Falls back to ``output_tools`` (no outputs/statuses)."""
    traj = sample.get("trajectory")
    if isinstance(traj, dict) and isinstance(traj.get("tool_calls"), list):
        return traj["tool_calls"]
    tools = sample.get("output_tools")
    if isinstance(tools, list) and tools:
        out = []
        for t in tools:
            fn = (t or {}).get("function") or {}
            out.append({"name": fn.get("name"), "arguments": fn.get("arguments"), "output": "", "status": "ok"})
        return out
    return None


def parse_args(arguments: Any) -> dict[str, Any] | None:
    if isinstance(arguments, dict):
        return arguments
    try:
        v = json.loads(arguments) if arguments else {}
    except (TypeError, ValueError):
        return None
    return v if isinstance(v, dict) else None


def trajectory_from_messages(messages: list[dict[str, Any]], trace_id: str = "trace_demo", row_index: int = 0):
    """A :class:`~agentrft.types.Trajectory` (message view only, no tokens) from an OpenAI-form conversation,
    e.g. a demo row's ``messages``: one Turn per assistant message, tool outputs matched by ``tool_call_id``.
    Lets graders score demonstrations and hand-made conversations exactly as they score rollouts."""
    from agentrft.types import ToolCall, Trajectory, Turn

    outputs = {m.get("tool_call_id"): m.get("content") or "" for m in messages if m.get("role") == "tool"}
    turns = []
    for m in messages:
        if m.get("role") != "assistant":
            continue
        idx = len(turns)
        calls = []
        for c in m.get("tool_calls") or []:
            fn = c.get("function") or {}
            cid = c.get("id") or f"call_{idx}_{len(calls)}"
            calls.append(
                ToolCall(call_id=cid, name=fn.get("name", ""), arguments=fn.get("arguments", ""), turn_index=idx,
                         output=outputs.get(cid, ""))
            )
        turns.append(Turn(index=idx, start=0, end=0, text=m.get("content") or "", tool_calls=calls))
    return Trajectory(trace_id=trace_id, row_index=row_index, messages=list(messages), turns=turns)


def efficiency_score(sample: dict[str, Any], item: dict[str, Any]) -> float:
    """``python_function`` twin of the ``tool_efficiency`` grader as configured by both environments:
    :func:`efficiency` of the rollout's tool-call count with ``item.min_tool_calls`` / ``item.max_tool_calls``.
    Use it as ``{"type": "python_function", "function": "agentrft.environments.common:efficiency_score"}``
    where the ``tool_efficiency`` type is not available."""
    calls = trajectory_calls(sample)
    n = len(calls) if calls is not None else len(sample.get("output_tools") or [])
    try:
        target, budget = int(item["min_tool_calls"]), int(item["max_tool_calls"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"item.min_tool_calls / item.max_tool_calls: expected integers ({e})") from None
    if budget <= target:
        raise ValueError(f"item.max_tool_calls ({budget}) must exceed item.min_tool_calls ({target})")
    return efficiency(n, target, budget)


def corpus_rows(out: Path, system_prompt: str, tools: Iterable[PythonTool], *, also_required: Iterable[str] = ()
                ) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """The text every environment's corpus starts with, in order: the system prompt, each tool's schema and
    description, then for each row of train/valid/demos the conversation as the chat template renders it and
    every message text and tool call on its own. Yields ``(file, row, text)``;
    ``row`` is set on the last item of each row (text "") so the caller can add that row's own reference texts."""
    names = ("train.jsonl", "valid.jsonl", "demos.jsonl")
    for name in (*names, *also_required):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name}: not generated yet; call generate({str(out)!r}) first")
    yield "", None, system_prompt
    for t in tools:
        yield "", None, json.dumps(t.schema)
        yield "", None, t.description
    from agentrft.models.tiny import render_chat_texts

    for name in names:
        for row in read_jsonl(out / name):
            yield name, None, render_chat_texts([row])[0]
            for m in row["messages"]:
                if m.get("content"):
                    yield name, None, m["content"]
                for c in m.get("tool_calls") or []:
                    yield name, None, c["function"]["name"] + " " + c["function"]["arguments"]
            yield name, row, ""
