"""Grader templates: ``{{ item.path }}`` and ``{{ sample.path }}`` with JSON-path access.

Semantics (OpenAI grader templates, contract § "Templates inside graders"):

* A template is a string; every ``{{ expr }}`` in it is replaced by the value ``expr`` names. Text outside the
  braces is kept verbatim. A string without ``{{`` is a literal.
* ``expr`` is ``namespace`` followed by any number of accessors: ``.key``, ``[index]`` (an int, negative
  counts from the end), ``["key"]`` / ``['key']`` (keys with dots or spaces). ``.0`` on a list means ``[0]``.
  The namespaces are ``item`` (the dataset row) and ``sample`` (``output_text``, ``output_json``,
  ``output_tools``, ``choices``, and ``trajectory`` for trajectory graders).
* A value is inserted as itself when it is a string, else as compact JSON (``null``, ``true``, ``3``,
  ``[1,2]``) — so a list or dict renders as the JSON a judge model can read.
* A path that does not exist (unknown namespace, missing key, index out of range, indexing into a scalar,
  ``sample.output_json`` when no response format was set or the text did not parse) raises
  :class:`TemplateVariableError`. Graders turn it into the ``invalid_variable_error`` flag with the message
  naming the path; it never renders as an empty string.

Parsing is cached per template string, so rendering the same template for thousands of samples costs one
dict walk per variable.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

NAMESPACES = ("item", "sample")

_VAR_RE = re.compile(r"\{\{(.*?)\}\}", re.S)
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class TemplateVariableError(KeyError):
    """A template names a variable that is missing, or cannot be parsed. ``flag`` is the OpenAI error flag."""

    flag = "invalid_variable_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


Path = tuple[str, tuple[Any, ...]]  # (namespace, accessors); an accessor is a str key or an int index


@lru_cache(maxsize=4096)
def parse_path(expr: str) -> Path:
    """Parse ``sample.output_tools[0].function.name`` into ``("sample", (\"output_tools\", 0, \"function\", ...))``."""
    s = expr.strip()
    m = _IDENT_RE.match(s)
    if not m:
        raise TemplateVariableError(f"{{{{ {expr.strip()} }}}}: expected a variable like item.key or sample.output_text")
    ns = m.group(0)
    if ns not in NAMESPACES:
        raise TemplateVariableError(f"{{{{ {s} }}}}: unknown namespace {ns!r} (use item or sample)")
    pos = m.end()
    acc: list[Any] = []
    while pos < len(s):
        c = s[pos]
        if c == ".":
            m = re.compile(r"[A-Za-z0-9_\-]+").match(s, pos + 1)
            if not m:
                raise TemplateVariableError(f"{{{{ {s} }}}}: expected a key after '.' at offset {pos}")
            tok = m.group(0)
            acc.append(int(tok) if tok.isdigit() else tok)
            pos = m.end()
        elif c == "[":
            end = s.find("]", pos)
            if end < 0:
                raise TemplateVariableError(f"{{{{ {s} }}}}: unclosed '[' at offset {pos}")
            inner = s[pos + 1 : end].strip()
            if len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                acc.append(inner[1:-1])
            else:
                try:
                    acc.append(int(inner))
                except ValueError:
                    raise TemplateVariableError(
                        f"{{{{ {s} }}}}: index [{inner}] must be an integer or a quoted key"
                    ) from None
            pos = end + 1
        elif c.isspace():
            raise TemplateVariableError(f"{{{{ {s} }}}}: unexpected space at offset {pos} (filters are not supported)")
        else:
            raise TemplateVariableError(f"{{{{ {s} }}}}: unexpected {c!r} at offset {pos}")
    return ns, tuple(acc)


def _fmt(ns: str, acc: tuple[Any, ...], upto: int) -> str:
    out = ns
    for a in acc[:upto]:
        out += f"[{a}]" if isinstance(a, int) else f".{a}"
    return out


def resolve(expr: str, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    """The value ``expr`` names, or :class:`TemplateVariableError` naming the first missing step."""
    ns, acc = parse_path(expr)
    cur: Any = item if ns == "item" else sample
    if cur is None:
        raise TemplateVariableError(f"{ns}: not available")
    for i, a in enumerate(acc):
        if isinstance(cur, dict):
            key = a if isinstance(a, str) else str(a)
            if key not in cur:
                where = _fmt(ns, acc, i + 1)
                hint = ""
                if ns == "sample" and i == 0 and key == "output_json":
                    hint = " (output_json exists only when a response format is set and the output parses as JSON)"
                elif len(cur) <= 20:
                    hint = f" (keys: {', '.join(map(str, cur)) or 'none'})"
                raise TemplateVariableError(f"{where}: not found{hint}")
            cur = cur[key]
        elif isinstance(cur, (list, tuple)):
            if not isinstance(a, int):
                raise TemplateVariableError(f"{_fmt(ns, acc, i + 1)}: {_fmt(ns, acc, i)} is a list; use an index")
            if not -len(cur) <= a < len(cur):
                raise TemplateVariableError(
                    f"{_fmt(ns, acc, i + 1)}: index {a} out of range (length {len(cur)})"
                )
            cur = cur[a]
        else:
            raise TemplateVariableError(
                f"{_fmt(ns, acc, i + 1)}: {_fmt(ns, acc, i)} is a {type(cur).__name__}, not an object or list"
            )
    return cur


def to_text(value: Any) -> str:
    """Strings as themselves, everything else as compact JSON (``None`` → ``null``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


@lru_cache(maxsize=4096)
def _compile(template: str) -> tuple[Any, ...]:
    """Split a template into literal strings and parsed paths (each path as (expr, Path))."""
    parts: list[Any] = []
    pos = 0
    for m in _VAR_RE.finditer(template):
        if m.start() > pos:
            parts.append(template[pos : m.start()])
        expr = m.group(1).strip()
        parts.append((expr, parse_path(expr)))
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    return tuple(parts)


def check_template(template: Any, field: str = "template") -> None:
    """Parse-only check for graders/validate: raises TemplateVariableError naming ``field``."""
    if not isinstance(template, str):
        return
    try:
        _compile(template)
    except TemplateVariableError as e:
        raise TemplateVariableError(f"{field}: {e}") from None


def render(template: Any, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """Render ``template`` to a string. Non-string templates (a number in the JSON) render as :func:`to_text`."""
    if not isinstance(template, str):
        return to_text(template)
    if "{{" not in template:
        return template
    parts = _compile(template)
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        else:
            out.append(to_text(resolve(p[0], sample, item)))
    return "".join(out)


def render_value(template: Any, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    """Like :func:`render`, but a template that is exactly one ``{{ var }}`` returns the raw value (an int stays
    an int, a list stays a list). Non-string templates are returned unchanged."""
    if not isinstance(template, str) or "{{" not in template:
        return template
    parts = _compile(template)
    if len(parts) == 1 and not isinstance(parts[0], str):
        return resolve(parts[0][0], sample, item)
    return render(template, sample, item)


def template_variables(template: Any) -> list[str]:
    """The variable expressions a template uses (for validation and docs)."""
    if not isinstance(template, str):
        return []
    return [p[0] for p in _compile(template) if not isinstance(p, str)]
