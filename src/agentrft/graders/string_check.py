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

from agentrft.graders.base import Grade, Grader, register_grader
from agentrft.graders.common import error_grade, require_input_reference
from agentrft.graders.templating import TemplateVariableError, render

OPERATIONS = ("eq", "ne", "like", "ilike")


@register_grader
class StringCheckGrader(Grader):
    type = "string_check"

    def validate_spec(self) -> None:
        self._op = require_input_reference(self.spec, "operation", OPERATIONS)
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
