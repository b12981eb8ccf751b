"""Helpers every grader module shares: error grades, spec field checks, number coercion.

``error_grade`` is the one way a grader reports a failure: score 0, the OpenAI flag set, and the message in
``metadata["errors_detail"]`` (so the store and ``agentrft grade run`` show *why*). ``Grade.errors`` keeps only
true flags (see :func:`agentrft.graders.base.safe_grade`).
"""

from __future__ import annotations

import math
from typing import Any

from agentrft.graders.base import ERROR_FLAGS, Grade, Grader, GraderSpecError


def error_grade(grader: Grader, flag: str, message: str, **kw: Any) -> Grade:
    """Score 0 with ``flag`` set, ``passed`` False, and the reason recorded in ``metadata["errors_detail"]``."""
    if flag not in ERROR_FLAGS:
        flag = "other_error"
    meta = dict(kw.pop("metadata", {}) or {})
    meta.setdefault("errors_detail", []).append(f"{flag}: {message}")
    kw.setdefault("passed", False)
    return grader.make_grade(0.0, errors={flag: True}, metadata=meta, **kw)


def require(spec: dict[str, Any], field: str, types: type | tuple[type, ...], where: str = "grader") -> Any:
    """The value of a required field, or GraderSpecError ``grader.field: ...``."""
    if field not in spec:
        raise GraderSpecError(f"{where}.{field}: required")
    v = spec[field]
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in _as_tuple(types)):
        raise GraderSpecError(f"{where}.{field}: expected {_tname(types)}, got {type(v).__name__}")
    return v


def optional(spec: dict[str, Any], field: str, types: type | tuple[type, ...], default: Any = None,
             where: str = "grader") -> Any:
    if field not in spec or spec[field] is None:
        return default
    return require(spec, field, types, where)


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _tname(t: type | tuple[type, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "dict": "an object",
             "list": "a list", "bool": "true/false"}
    return " or ".join(names.get(x.__name__, x.__name__) for x in _as_tuple(t))


def check_pass_threshold(spec: dict[str, Any]) -> None:
    pt = spec.get("pass_threshold")
    if pt is not None and (isinstance(pt, bool) or not isinstance(pt, (int, float)) or not math.isfinite(pt)):
        raise GraderSpecError(f"grader.pass_threshold: expected a finite number, got {pt!r}")


def as_score(value: Any) -> float | None:
    """A finite real number as float, else None. ``bool`` is not a score (it would hide a bug returning True)."""
    if isinstance(value, bool):
        return None
    try:
        import numbers

        if isinstance(value, numbers.Real):
            f = float(value)
            return f if math.isfinite(f) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return None


def clip01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


def require_input_reference(spec: dict[str, Any], choice_field: str, choices: tuple[str, ...]) -> str:
    """Validate the shape string_check and text_similarity share: templated ``input`` and ``reference`` strings,
    ``choice_field`` one of ``choices`` (returned), an optional ``pass_threshold``. Errors name the field."""
    from agentrft.graders.templating import TemplateVariableError, check_template

    require(spec, "input", str)
    require(spec, "reference", str)
    choice = require(spec, choice_field, str)
    if choice not in choices:
        raise GraderSpecError(f"grader.{choice_field}: {choice!r} is not one of {', '.join(choices)}")
    check_pass_threshold(spec)
    try:
        check_template(spec["input"], "grader.input")
        check_template(spec["reference"], "grader.reference")
    except TemplateVariableError as e:
        raise GraderSpecError(str(e)) from None
    return choice
