"""``string_check``: compare a rendered input with a rendered reference. Score 1.0 or 0.0.

Operations (OpenAI contract):

* ``eq``    — ``input == reference`` (exact, case-sensitive, no trimming, no unicode normalisation)
* ``ne``    — ``input != reference``
* ``like``  — ``reference in input`` (substring, case-sensitive; ``%``/``_`` are literal characters)
* ``ilike`` — ``reference.casefold() in input.casefold()`` (substring, caseless; casefold so ``ß`` matches
  ``SS`` and Greek final sigma matches sigma)

An empty reference is contained in every input (``like``/``ilike`` → 1). A template naming a missing variable
scores 0 with ``invalid_variable_error``. ``passed`` is the score when no ``pass_threshold`` is given.
"""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import check_pass_threshold, error_grade, require
from agentrft.graders.templating import TemplateVariableError, check_template, render

OPERATIONS = ("eq", "ne", "like", "ilike")


@register_grader
class StringCheckGrader(Grader):
    type = "string_check"

    def validate_spec(self) -> None:
        require(self.spec, "input", str)
        require(self.spec, "reference", str)
        op = require(self.spec, "operation", str)
        if op not in OPERATIONS:
            raise GraderSpecError(f"grader.operation: {op!r} is not one of {', '.join(OPERATIONS)}")
        check_pass_threshold(self.spec)
        try:
            check_template(self.spec["input"], "grader.input")
            check_template(self.spec["reference"], "grader.reference")
        except TemplateVariableError as e:
            raise GraderSpecError(str(e)) from None
        self._op = op
        self._input = self.spec["input"]
        self._ref = self.spec["reference"]

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        try:
            a = render(self._input, sample, item)
            b = render(self._ref, sample, item)
        except TemplateVariableError as e:
            return error_grade(self, e.flag, str(e))
        op = self._op
        if op == "eq":
            ok = a == b
        elif op == "ne":
            ok = a != b
        elif op == "like":
            ok = b in a
        else:
            ok = b.casefold() in a.casefold()
        score = 1.0 if ok else 0.0
        return self.make_grade(score, passed=None if self.pass_threshold is not None else ok)
