"""In-process Python tools: registration, JSON schema from signature + docstring, and the call context.

A tool is a plain function with type hints and a docstring::

    @tool
    def get_order(order_id: str, ctx: ToolContext) -> str:
        '''Look up one order.

        Args:
            order_id: The order's id, e.g. "O-1001".
        '''

Parameters named ``ctx`` (or annotated :class:`ToolContext`) are injected by the runtime and left out of the
schema; they give the tool the rollout's ``trace_id``, the dataset ``item`` and ``state`` — a dict that lives
for one rollout (per-``trace_id`` state such as a scratch database). ``ctx.on_close(fn)`` registers cleanup that
runs when the rollout ends. Return values that are not strings are sent to the model as JSON.
"""

from __future__ import annotations

import inspect
import re
import threading
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from agentrft.refs import load_callable


@dataclass
class ToolContext:
    trace_id: str
    item: dict[str, Any]
    call_id: str = ""
    state: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None  # directory of the dataset file the row came from (for files it names)
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def on_close(self, fn: Callable[[], None]) -> None:
        with self._lock:
            self._closers.append(fn)

    def close(self) -> list[str]:
        """Run cleanup callbacks (last registered first); returns error messages instead of raising."""
        errors = []
        with self._lock:
            closers, self._closers = self._closers[::-1], []
        for fn in closers:
            try:
                fn()
            except Exception as e:  # cleanup must not kill the run
                errors.append(f"{type(e).__name__}: {e}")
        return errors

    def for_call(self, call_id: str) -> "ToolContext":
        """A view for one call that shares state and closers with the rollout's context."""
        view = ToolContext(self.trace_id, self.item, call_id, self.state, self.data_dir, self._closers, self._lock)
        return view


_PY_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _json_type(annotation: Any) -> dict[str, Any]:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {}
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _json_type(args[0]) if len(args) == 1 else {"anyOf": [_json_type(a) for a in args]}
    if origin is typing.Literal:
        vals = list(typing.get_args(annotation))
        return {"type": _PY_TO_JSON.get(type(vals[0]), "string"), "enum": vals}
    if origin in (list, tuple, set):
        args = typing.get_args(annotation)
        out: dict[str, Any] = {"type": "array"}
        if args:
            out["items"] = _json_type(args[0])
        return out
    if origin is dict:
        return {"type": "object"}
    if annotation in _PY_TO_JSON:
        return {"type": _PY_TO_JSON[annotation]}
    return {}


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Google-style docstring → (description, {param: description})."""
    doc = inspect.cleandoc(doc or "")
    parts = re.split(r"^\s*(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.M)
    desc = parts[0].strip()
    params: dict[str, str] = {}
    if len(parts) > 1:
        current = None
        for line in parts[1].splitlines():
            if re.match(r"^\s*(Returns|Raises|Yields|Examples?):\s*$", line):
                break
            m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                params[current] = m.group(2).strip()
            elif current and line.strip():
                params[current] += " " + line.strip()
    return desc, params


def _is_ctx_param(p: inspect.Parameter, hints: dict[str, Any]) -> bool:
    return p.name == "ctx" or hints.get(p.name) is ToolContext


@dataclass
class PythonTool:
    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    ctx_param: str | None = None
    timeout_s: float | None = None
    requires_approval: bool = False

    @property
    def schema(self) -> dict[str, Any]:
        """OpenAI function-tool schema (nested form, as in chat completions ``tools``)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def check_arguments(self, args: dict[str, Any]) -> str | None:
        """Return an error message if ``args`` do not fit the signature, else None."""
        props = self.parameters.get("properties", {})
        missing = [k for k in self.parameters.get("required", []) if k not in args]
        unknown = [k for k in args if k not in props]
        problems = []
        if missing:
            problems.append("missing required argument(s): " + ", ".join(missing))
        if unknown:
            problems.append("unknown argument(s): " + ", ".join(unknown) + f" (expected: {', '.join(props) or 'none'})")
        for k, v in args.items():
            want = props.get(k, {}).get("type")
            if want and not _matches(v, want):
                problems.append(f"argument {k!r} should be {want}, got {type(v).__name__}")
        return "; ".join(problems) or None

    def invoke(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        kwargs = dict(args)
        if self.ctx_param:
            kwargs[self.ctx_param] = ctx
        return self.fn(**kwargs)


def _matches(v: Any, want: str) -> bool:
    return {
        "string": isinstance(v, str),
        "integer": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": isinstance(v, bool),
        "object": isinstance(v, dict),
        "array": isinstance(v, list),
    }.get(want, True)


def make_tool(
    fn: Callable[..., Any],
    name: str | None = None,
    *,
    timeout_s: float | None = None,
    requires_approval: bool = False,
) -> PythonTool:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    desc, pdocs = _parse_docstring(fn.__doc__ or "")
    props: dict[str, Any] = {}
    required: list[str] = []
    ctx_param = None
    for p in sig.parameters.values():
        if _is_ctx_param(p, hints):
            ctx_param = p.name
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        prop = _json_type(hints.get(p.name, p.annotation))
        if p.name in pdocs:
            prop["description"] = pdocs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is not None:
            prop["default"] = p.default
        props[p.name] = prop
    params = {"type": "object", "properties": props, "required": required}
    return PythonTool(
        name=name or fn.__name__,
        fn=fn,
        description=desc,
        parameters=params,
        ctx_param=ctx_param,
        timeout_s=timeout_s,
        requires_approval=requires_approval,
    )


# Tools registered with the decorator, by name. Configs may also name tools as "module:function".
REGISTERED: dict[str, PythonTool] = {}


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    timeout_s: float | None = None,
    requires_approval: bool = False,
) -> Any:
    """Decorator: register a function as a tool (usable as ``@tool`` or ``@tool(name=..., timeout_s=...)``)."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        t = make_tool(f, name, timeout_s=timeout_s, requires_approval=requires_approval)
        REGISTERED[t.name] = t
        f.__agentrft_tool__ = t  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def resolve_python_tool(ref: str) -> list[PythonTool]:
    """``"pkg.mod:function"`` → that tool; ``"pkg.mod:*"`` or ``"pkg.mod"`` → every @tool in the module."""
    import importlib

    mod_name, sep, attr = ref.partition(":")
    if not sep or attr == "*":
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"{ref!r}: cannot import module {mod_name!r}: {e}") from e
        found = [getattr(v, "__agentrft_tool__") for v in vars(mod).values() if hasattr(v, "__agentrft_tool__")]
        if not found:
            raise ValueError(f"{ref!r}: module {mod_name!r} defines no @tool functions")
        return found
    fn = load_callable(ref)
    return [getattr(fn, "__agentrft_tool__", None) or make_tool(fn)]
