"""Datasets in OpenAI RFT JSONL form: loading, normalizing and validating, with every problem named ``file:line``.

A dataset file has one JSON object per line (blank lines are skipped)::

    {"messages": [{"role": "user", "content": "Where is order O-1001?"}],
     "tools": [{"type": "function", "function": {"name": "get_order", "parameters": {...}}}],
     "order_id": "O-1001", "expected_status": "shipped"}

* ``messages``: the prompt — chat messages with roles system / developer / user / assistant and text content.
  OpenAI's list-of-parts content (``[{"type": "text", "text": "..."}]``) is accepted and its texts are joined with
  no separator (the parts are one message, so nothing is inserted between them). The last message is "usually"
  ``user`` (OpenAI's word), so anything else is a *warning*, not an error.
* ``tools``: optional function schemas, either nested (``{"type":"function","function":{name,...}}``) or flat
  (``{"type":"function","name":...,"parameters":...}``); both are normalized to the nested form. When the run
  says which tools it has (``known_tools``), every name must be one of them.
* every other key is reference data for graders: :attr:`Row.item` is the whole row exactly as loaded, so a
  grader's ``{{item.KEY}}`` sees every key (including ``messages`` and ``tools`` in their original form).

Validation never stops at the first problem: the loader reads the whole file (or both files, with
:func:`load_datasets`) and raises one :class:`DatasetError` whose ``problems`` list every ``path:line: what``.
Warnings (last message not ``user``, more rows than OpenAI's cap) never fail a load; they are kept on the
returned :class:`Dataset` (a ``list[Row]``) and on the exception, and logged.

With ``allow_demos=True`` (supervised warm-start demonstrations) rows may also hold whole trajectories:
assistant messages with ``tool_calls`` (``[{"id", "type": "function", "function": {"name", "arguments"}}]``,
``arguments`` a JSON string — a JSON object is accepted and serialized) and ``tool`` messages with their output.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from agentrft.bounded import BoundsError, loads_json

log = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant")
DEMO_ROLES = ROLES + ("tool",)
# OpenAI's caps on RFT files; exceeding them is a warning here (we can train on more), not an error.
MAX_TRAIN_ROWS = 50_000
MAX_VALID_ROWS = 1_000


@dataclass
class Row:
    """One dataset row."""

    index: int  # 0-based row index in its file (blank lines do not count)
    line: int  # 1-based line number in the file
    messages: list[dict[str, Any]]  # normalized: every ``content`` is a string (None only beside tool_calls)
    tools: list[dict[str, Any]] | None  # nested form {"type":"function","function":{name,description,parameters}}
    item: dict[str, Any]  # the whole row as loaded

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools or []]


class Dataset(list):
    """A ``list[Row]`` that also carries the file it came from and the load's warnings."""

    def __init__(self, rows: Iterable[Row] = (), *, path: str = "", warnings: list[str] | None = None):
        super().__init__(rows)
        self.path = path
        self.warnings: list[str] = list(warnings or [])


class DatasetError(Exception):
    """A dataset did not load. ``problems``: every ``path:line: what is wrong``; ``warnings`` likewise."""

    def __init__(self, problems: list[str], warnings: list[str] | None = None):
        self.problems = list(problems)
        self.warnings = list(warnings or [])
        super().__init__(self._message())

    def _message(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the dataset:"
        return "\n".join([head, *("  " + p for p in self.problems)])

    def __str__(self) -> str:
        return self._message()


# ---------------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------------


def load_dataset(
    path: str | os.PathLike,
    *,
    known_tools: set[str] | None = None,
    max_rows: int | None = None,
    allow_demos: bool = False,
    cap: int | None = None,
) -> Dataset:
    """Load and validate one JSONL file; raise :class:`DatasetError` listing every problem.

    ``max_rows`` keeps only the first rows (the rest of the file is not read). ``cap`` (OpenAI's row limit for
    this kind of file) only adds a warning when the file has more rows.
    """
    rows, problems, warnings = _load(Path(path), known_tools, max_rows, allow_demos, cap)
    if problems:
        raise DatasetError(problems, warnings)
    for w in warnings:
        log.warning("%s", w)
    return Dataset(rows, path=str(path), warnings=warnings)


def load_datasets(
    train_path: str | os.PathLike,
    valid_path: str | os.PathLike | None,
    *,
    known_tools: set[str] | None = None,
    allow_demos: bool = False,
) -> tuple[Dataset, Dataset]:
    """Load the training and validation files together; one :class:`DatasetError` carries the problems of both.

    OpenAI's caps (50,000 train rows, 1,000 validation rows) become warnings. ``valid_path=None`` gives an empty
    validation set.
    """
    train, p1, w1 = _load(Path(train_path), known_tools, None, allow_demos, MAX_TRAIN_ROWS)
    valid: list[Row] = []
    p2: list[str] = []
    w2: list[str] = []
    if valid_path is not None:
        valid, p2, w2 = _load(Path(valid_path), known_tools, None, allow_demos, MAX_VALID_ROWS)
    if p1 or p2:
        raise DatasetError(p1 + p2, w1 + w2)
    for w in w1 + w2:
        log.warning("%s", w)
    return (
        Dataset(train, path=str(train_path), warnings=w1),
        Dataset(valid, path=str(valid_path or ""), warnings=w2),
    )


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *,
                dumps: Any = lambda r: json.dumps(r, ensure_ascii=False)) -> Path:
    """Write one ``dumps(row)`` per line atomically: a temporary file beside ``path``, fsynced, then renamed over it,
    so a reader (or a crash) never sees half a file."""
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                f.write(dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def normalize_tool(tool: Any) -> tuple[dict[str, Any] | None, str | None]:
    """One tool schema in either form -> (nested form, None) or (None, what is wrong)."""
    if not isinstance(tool, dict):
        return None, f"is {_kind(tool)}, expected an object"
    ttype = tool.get("type", "function")
    if ttype != "function":
        return None, f'has type {ttype!r}; only "function" tools are supported'
    if "function" in tool:
        fn = tool["function"]
        if not isinstance(fn, dict):
            return None, f"has 'function' {_kind(fn)}, expected an object"
    else:  # flat form: the function's keys sit beside "type"
        fn = {k: v for k, v in tool.items() if k != "type"}
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, "has no name" if name is None else f"has name {name!r}, expected a non-empty string"
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        return None, f"{name!r} has parameters {_kind(params)}, expected a JSON schema object"
    desc = fn.get("description", "")
    if desc is None:
        desc = ""
    if not isinstance(desc, str):
        return None, f"{name!r} has description {_kind(desc)}, expected a string"
    out = {"name": name, "description": desc, "parameters": params}
    if "strict" in fn:
        out["strict"] = fn["strict"]
    return {"type": "function", "function": out}, None


# ---------------------------------------------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------------------------------------------


def _kind(v: Any) -> str:
    """'a list', 'a string', 'null'… for messages that say what was found."""
    if v is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(v), f"a {type(v).__name__}")


def _load(path: Path, known_tools, max_rows, allow_demos, cap) -> tuple[list[Row], list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    rows: list[Row] = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], [f"{path}: file not found"], []
    except IsADirectoryError:
        return [], [f"{path}: is a directory, expected a JSONL file"], []
    except OSError as e:
        return [], [f"{path}: cannot read: {e.strerror or e}"], []

    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark (some editors write one)
        data = data[3:]
    total = 0  # non-blank lines seen (rows, valid or not)
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if max_rows is not None and total >= max_rows:
            break
        where = f"{path}:{lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"{where}: not valid UTF-8 (byte {e.start + 1} of the line: {raw[e.start:e.start + 1]!r})")
            total += 1
            continue
        if not text.strip():
            continue
        total += 1
        try:
            obj = loads_json(text, strict=True)
        except json.JSONDecodeError as e:
            problems.append(f"{where}: not valid JSON: {e.msg} (column {e.colno})")
            continue
        except ValueError as e:  # pathologically nested (BoundsError), or NaN/Infinity (Python's json accepts them)
            problems.append(f"{where}: {e}")
            continue
        row_problems: list[str] = []
        row_warnings: list[str] = []
        row = _check_row(obj, len(rows), lineno, known_tools, allow_demos, row_problems, row_warnings)
        problems += [f"{where}: {p}" for p in row_problems]
        warnings += [f"{where}: {w}" for w in row_warnings]
        if row is not None and not row_problems:
            rows.append(row)

    if total == 0:
        problems.append(f"{path}: the file has no rows (it is empty or only blank lines)")
    if cap is not None and total > cap:
        warnings.append(f"{path}: {total} rows is more than OpenAI's cap of {cap} for this file "
                        "(fine here, but the file would not load on OpenAI)")
    return rows, problems, warnings


def _check_row(obj, index, lineno, known_tools, allow_demos, problems: list[str], warnings: list[str]) -> Row | None:
    if not isinstance(obj, dict):
        problems.append(f"the row is {_kind(obj)}, expected a JSON object")
        return None
    messages = _check_messages(obj, allow_demos, known_tools, problems, warnings)
    tools = _check_tools(obj, known_tools, problems)
    if messages is None:
        return None
    return Row(index=index, line=lineno, messages=messages, tools=tools, item=obj)


def _check_messages(obj, allow_demos, known_tools, problems, warnings) -> list[dict] | None:
    if "messages" not in obj:
        problems.append("no 'messages' key (every row needs a list of chat messages)")
        return None
    msgs = obj["messages"]
    if not isinstance(msgs, list):
        problems.append(f"'messages' is {_kind(msgs)}, expected a list of message objects")
        return None
    if not msgs:
        problems.append("'messages' is empty; a row needs at least one message")
        return None
    roles = DEMO_ROLES if allow_demos else ROLES
    out: list[dict] = []
    n_before = len(problems)
    for i, m in enumerate(msgs):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            problems.append(f"{at} is {_kind(m)}, expected an object with 'role' and 'content'")
            continue
        role = m.get("role")
        if role is None:
            problems.append(f"{at} has no 'role' (one of: {', '.join(roles)})")
            continue
        if role not in roles:
            hint = " ('tool' messages are allowed only in demonstration files)" if role == "tool" else ""
            problems.append(f"{at} has unknown role {role!r} (allowed: {', '.join(roles)}){hint}")
            continue
        msg = dict(m)
        has_calls = "tool_calls" in m and m["tool_calls"] is not None
        if has_calls:
            if not allow_demos:
                problems.append(f"{at} has 'tool_calls'; tool calls in a row are allowed only in demonstration files")
                continue
            if role != "assistant":
                problems.append(f"{at} has 'tool_calls' but role {role!r}; only assistant messages call tools")
                continue
            calls = _check_tool_calls(m["tool_calls"], at, known_tools, problems)
            if calls is None:
                continue
            msg["tool_calls"] = calls
        content = m.get("content")
        if content is None and has_calls:
            msg["content"] = None  # an assistant message that only calls tools
        else:
            text, err = _content_text(content, "content" in m)
            if err:
                problems.append(f"{at} ({role}) {err}")
                continue
            msg["content"] = text
        if role == "tool" and "tool_call_id" in m and not isinstance(m["tool_call_id"], str):
            problems.append(f"{at} has tool_call_id {_kind(m['tool_call_id'])}, expected a string")
            continue
        out.append(msg)
    if len(problems) > n_before:
        return None
    last = out[-1]["role"]
    if not allow_demos and last != "user":
        warnings.append(f"the last message is {last!r}; OpenAI RFT rows usually end with a 'user' message")
    return out


def _content_text(content: Any, present: bool) -> tuple[str, str | None]:
    """A message's content as one string: a string, or OpenAI's list of text parts joined with no separator."""
    if not present:
        return "", "has no 'content'"
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                return "", f"content[{j}] is {_kind(part)}, expected a part like {{'type': 'text', 'text': ...}}"
            ptype = part.get("type", "text")
            if ptype not in ("text", "input_text", "output_text"):
                return "", f"content[{j}] has type {ptype!r}; only text parts are supported"
            t = part.get("text")
            if not isinstance(t, str):
                return "", f"content[{j}] has text {_kind(t)}, expected a string"
            texts.append(t)
        return "".join(texts), None
    return "", f"has content {_kind(content)}, expected a string or a list of text parts"


def _check_tool_calls(calls: Any, at: str, known_tools, problems) -> list[dict] | None:
    if not isinstance(calls, list):
        problems.append(f"{at}.tool_calls is {_kind(calls)}, expected a list")
        return None
    out = []
    ok = True
    for k, c in enumerate(calls):
        cat = f"{at}.tool_calls[{k}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict):
            problems.append(f"{cat} needs a 'function' object with 'name' and 'arguments'")
            ok = False
            continue
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{cat} has no function name")
            ok = False
            continue
        if known_tools is not None and name not in known_tools:
            problems.append(f"{cat} calls unknown tool {name!r} (known: {_names(known_tools)})")
            ok = False
            continue
        args = fn.get("arguments", "{}")
        if isinstance(args, dict):
            args = json.dumps(args, ensure_ascii=False)
        elif not isinstance(args, str):
            problems.append(f"{cat} ({name}) has arguments {_kind(args)}, expected a JSON string")
            ok = False
            continue
        else:
            try:
                loads_json(args or "{}")
            except json.JSONDecodeError as e:
                problems.append(f"{cat} ({name}) has arguments that are not JSON: {e.msg} (column {e.colno})")
                ok = False
                continue
            except BoundsError as e:
                problems.append(f"{cat} ({name}) has arguments that are {e}")
                ok = False
                continue
        out.append({"id": c.get("id") or f"call_{k}", "type": "function",
                    "function": {"name": name, "arguments": args}})
    return out if ok else None


def _check_tools(obj, known_tools, problems) -> list[dict] | None:
    if "tools" not in obj or obj["tools"] is None:
        return None
    tools = obj["tools"]
    if not isinstance(tools, list):
        problems.append(f"'tools' is {_kind(tools)}, expected a list of function schemas")
        return None
    out = []
    seen: set[str] = set()
    for i, t in enumerate(tools):
        norm, err = normalize_tool(t)
        if err:
            problems.append(f"tools[{i}] {err}")
            continue
        name = norm["function"]["name"]
        if name in seen:
            problems.append(f"tools[{i}] repeats the tool name {name!r}")
            continue
        seen.add(name)
        if known_tools is not None and name not in known_tools:
            problems.append(f"tools[{i}] names tool {name!r}, which this run does not have (known: {_names(known_tools)})")
            continue
        out.append(norm)
    return out


def _names(known: set[str]) -> str:
    return ", ".join(sorted(known)) if known else "none configured"
