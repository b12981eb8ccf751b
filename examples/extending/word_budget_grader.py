"""A grader type of your own: full marks for a final answer within a word budget, falling linearly to 0 at twice it.

Name it in grader JSON by reference, ``{"type": "word_budget_grader:WordBudgetGrader", "max_words": 8}``, or
register it (``@register_grader``) and import this module before the config is read to use ``"type":
"word_budget"``. It nests in a ``multi`` like any built-in type.
"""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader


@register_grader
class WordBudgetGrader(Grader):
    type = "word_budget"

    def validate_spec(self) -> None:
        # called when the grader is built, so a bad spec is rejected before any rollout, naming the field
        m = self.spec.get("max_words")
        if not isinstance(m, int) or isinstance(m, bool) or m < 1:
            raise GraderSpecError(f"grader.max_words: a positive integer is required, got {m!r}")

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        # ``sample`` is OpenAI's sample namespace (output_text, output_tools, choices) plus ``trajectory``
        words = len(sample["output_text"].split())
        budget = self.spec["max_words"]
        return self.make_grade(max(0.0, min(1.0, 2.0 - words / budget)), sub_rewards={"words": float(words)})
