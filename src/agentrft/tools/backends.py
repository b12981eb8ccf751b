"""Tool backends by kind: each ``type`` a config's ``tools`` entry can have (agentrft.config.ToolEntry) maps to one
factory that turns the entries of that kind into backends.

* ``python`` — ``module:function`` / ``module:*`` strings: one in-process backend (one worker pool) for all of them;
* ``http`` — Agent RFT ``{name, server_url, headers}`` entries: one HTTP backend (one connection pool);
* ``mcp`` — ``{mcp: command line | URL, ...}``: one backend per server;
* ``module:function`` — a factory of your own (docs/extending.md), called once with all entries naming it.

A factory takes ``(entries, options)`` — ``entries`` as ``(where, mapping)`` pairs, ``where`` being the entry's
config path (``tools[2]``) for error messages, the mapping without its ``type`` — and returns ToolBackends. Config
errors are :class:`agentrft.config.ConfigError` naming ``where`` and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from agentrft.config import ConfigError
from agentrft.refs import load_callable
from agentrft.tools.base import ToolBackend


@dataclass
class BackendOptions:
    max_workers: int = 16
    row_schemas: dict[str, dict[str, Any]] | None = None  # tool schemas rows declare (HTTP tools may omit theirs)


Entries = list[tuple[str, dict[str, Any]]]
BackendFactory = Callable[[Entries, BackendOptions], list[ToolBackend]]
BACKENDS: dict[str, BackendFactory] = {}


def register_backend(kind: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        BACKENDS[kind] = factory
        return factory

    return deco


@register_backend("python")
def _python(entries: Entries, opts: BackendOptions) -> list[ToolBackend]:
    from agentrft.tools.python_backend import PythonToolBackend
    from agentrft.tools.registry import resolve_python_tool

    tools = []
    for where, e in entries:
        try:
            tools.extend(resolve_python_tool(e["ref"]))
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
    return [PythonToolBackend(tools, max_workers=opts.max_workers)]


@register_backend("http")
def _http(entries: Entries, opts: BackendOptions) -> list[ToolBackend]:
    from agentrft.tools.http import HttpToolBackend

    return [HttpToolBackend([e for _, e in entries], schemas=opts.row_schemas, where=[w for w, _ in entries])]


@register_backend("mcp")
def _mcp(entries: Entries, opts: BackendOptions) -> list[ToolBackend]:
    from agentrft.tools.mcp import McpToolBackend

    return [McpToolBackend(e["mcp"], where=where, **{k: v for k, v in e.items() if k != "mcp"})
            for where, e in entries]


def _entry(spec: Any) -> tuple[str, dict[str, Any]]:
    """(kind, fields without ``type``) of a config entry, validated config model or raw value."""
    from pydantic import TypeAdapter, ValidationError

    from agentrft.config import ToolEntry

    if not hasattr(spec, "model_dump"):
        try:
            spec = TypeAdapter(ToolEntry).validate_python(spec)
        except ValidationError as e:
            raise ConfigError("; ".join(err["msg"] for err in e.errors())) from None
    d = spec.model_dump()
    return d.pop("type"), d


def build_backends(tool_specs: list[Any], opts: BackendOptions) -> list[ToolBackend]:
    """Backends for a config's ``tools`` list, in the order their kinds first appear (Python tools first)."""
    by_kind: dict[str, Entries] = {}
    for i, spec in enumerate(tool_specs):
        try:
            kind, fields = _entry(spec)
        except ConfigError as e:
            raise ConfigError(f"tools[{i}]: {e}") from None
        by_kind.setdefault(kind, []).append((f"tools[{i}]", fields))
    backends: list[ToolBackend] = []
    for kind in sorted(by_kind, key=lambda k: k != "python"):
        factory = BACKENDS.get(kind)
        if factory is None:
            try:
                factory = load_callable(kind)
            except ValueError as e:
                raise ConfigError(f"{by_kind[kind][0][0]}.type: {e}") from None
        backends.extend(factory(by_kind[kind], opts))
    return backends
