"""``python_function`` (agentrft type): TRUSTED in-process Python named in the config.

``{"type": "python_function", "name": "...", "function": "pkg.module:fn"}``. ``fn(sample, item)`` runs in the
trainer's own process (no sandbox — use the ``python`` type for code you do not trust) and returns either

* a real number — the score, or
* a dict ``{"score": number, ...}`` — the score plus metadata; the optional keys ``passed`` (bool) and
  ``turn_scores`` (list of numbers, one per assistant turn) fill the Grade's fields, every other key goes to
  ``Grade.metadata``.

An exception, a non-number (``bool``, ``None``, a string, NaN or ±inf), or a dict without a numeric ``score``
scores 0 with ``python_grader_runtime_error`` and the reason in the metadata. The callable is resolved once,
at build time, so a bad reference fails ``graders/validate`` (GraderSpecError naming ``grader.function``).
"""

from __future__ import annotations

import traceback
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import as_score, check_pass_threshold, error_grade, require
from agentrft.refs import load_callable

FLAG = "python_grader_runtime_error"


@register_grader
class PythonFunctionGrader(Grader):
    type = "python_function"

    def validate_spec(self) -> None:
        ref = require(self.spec, "function", str)
        check_pass_threshold(self.spec)
        try:
            self._fn = load_callable(ref)
        except ValueError as e:
            raise GraderSpecError(f"grader.function: {e}") from None

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        try:
            out = self._fn(sample, item)
        except Exception as e:  # trusted code may still fail; a failure is a flagged 0, never a crash
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
            return error_grade(self, FLAG, f"{self.spec['function']} raised {type(e).__name__}: {e}{where}")
        meta: dict[str, Any] = {}
        passed = None
        turn_scores = None
        if isinstance(out, dict):
            if "score" not in out:
                return error_grade(self, FLAG, f"{self.spec['function']} returned a dict without 'score' "
                                               f"(keys: {', '.join(map(str, out))})")
            rest = dict(out)
            raw = rest.pop("score")
            p = rest.pop("passed", None)
            if p is not None:
                passed = bool(p)
            ts = rest.pop("turn_scores", None)
            if ts is not None:
                if not isinstance(ts, (list, tuple)) or any(as_score(x) is None for x in ts):
                    return error_grade(self, FLAG, f"{self.spec['function']} returned turn_scores that are not "
                                                   f"a list of finite numbers: {ts!r:.200}")
                turn_scores = [float(x) for x in ts]
            meta = rest
        else:
            raw = out
        score = as_score(raw)
        if score is None:
            return error_grade(self, FLAG, f"{self.spec['function']} returned {type(raw).__name__} "
                                           f"{raw!r:.200}, expected a finite number", metadata=meta)
        return self.make_grade(score, passed=passed, metadata=meta, turn_scores=turn_scores)
