"""References to user code: ``"package.module:function"`` strings in configs (python tools and graders, approval
policies, environments, advantage estimators, losses, tool-backend factories) resolved to the object."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def load_callable(ref: str) -> Callable[..., Any]:
    """Resolve ``"package.module:function"`` (or a dotted path; ``function`` may be ``Class.attr``) to a callable.
    A ValueError says what is wrong: the shape, the import (with its own error), the attribute."""
    mod_name, sep, attr = ref.partition(":")
    if not sep:
        mod_name, _, attr = ref.rpartition(".")
    if not mod_name or not attr:
        raise ValueError(f"{ref!r}: expected 'module:function'")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"{ref!r}: cannot import module {mod_name!r}: {e}") from e
    obj: Any = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{ref!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{ref!r}: {attr!r} is not callable")
    return obj


def builtin_or_reference(name: str, builtins: dict[str, Any], field: str, what: str) -> Any:
    """``builtins[name]``, or the callable a ``module:function`` name refers to; a ValueError naming ``field`` and
    the built-in choices otherwise."""
    if name in builtins:
        return builtins[name]
    if ":" not in name:
        raise ValueError(f"{field}: unknown {what} {name!r} (one of {', '.join(sorted(builtins))}, "
                         "or 'module:function')")
    try:
        return load_callable(name)
    except ValueError as e:
        raise ValueError(f"{field}: {e}") from None
