"""``multi``: several graders combined by a formula.

``{"type": "multi", "name": .., "graders": {key: grader, ...}, "calculate_output": "0.7*a + 0.3*b"}``

* Each sub-grader grades the same (sample, item); ``sub_rewards[key]`` is its score.
* The score is ``calculate_output`` evaluated over those scores (see :mod:`agentrft.graders.formula`); it is
  *not* clipped (OpenAI does not clip either), ``pass_threshold`` applies to it.
* ``graders`` must be a dict (OpenAI's SDK types it as a single grader; a single grader object is accepted as
  ``{its name: it}`` for compatibility). A ``multi`` inside a ``multi`` is rejected (OpenAI forbids nesting).
* A bad formula (syntax, unknown name or function) is a GraderSpecError at build time (``graders/validate``).
  An evaluation failure at grade time (division by zero, ``log(0)``, overflow) scores 0 and sets
  ``formula_parse_error`` — OpenAI's only formula flag — with the reason in the metadata.
* A sub-grader's error flags are merged into the multi's flags and its score counts as 0 in the formula; the
  formula still runs (``metadata["keep_score_on_error"]``) so the partial reward is visible, and the flags tell the
  trainer the reward is suspect.
* Sub-graders that wait on I/O (model, endpoint and sandboxed python graders set ``io_bound = True``) run
  concurrently in threads; deterministic ones run inline.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, build_grader, register_grader
from agentrft.graders.common import check_pass_threshold, error_grade, require
from agentrft.graders.formula import Formula, FormulaError


def merge_token_usage(into: dict[str, int], usage: dict[str, Any] | None) -> None:
    for k, v in (usage or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            into[k] = into.get(k, 0) + int(v)


@register_grader
class MultiGrader(Grader):
    type = "multi"

    def validate_spec(self) -> None:
        graders = self.spec.get("graders")
        if graders is None:
            raise GraderSpecError("grader.graders: required (a dict of key -> grader)")
        if isinstance(graders, dict) and "type" in graders and isinstance(graders.get("type"), str):
            graders = {str(graders.get("name") or graders["type"]): graders}
        if not isinstance(graders, dict) or not graders:
            raise GraderSpecError("grader.graders: expected a non-empty object of key -> grader")
        self.subs: dict[str, Grader] = {}
        for key, sub in graders.items():
            if not isinstance(sub, dict):
                raise GraderSpecError(f"grader.graders.{key}: expected a grader object, got {type(sub).__name__}")
            if sub.get("type") == "multi":
                raise GraderSpecError(f"grader.graders.{key}: a multi grader cannot be nested inside a multi")
            try:
                self.subs[key] = build_grader(sub)
            except GraderSpecError as e:
                msg = str(e)
                if msg.startswith("grader."):
                    msg = msg[len("grader."):]
                    raise GraderSpecError(f"grader.graders.{key}.{msg}") from None
                raise GraderSpecError(f"grader.graders.{key}: {msg}") from None
        src = require(self.spec, "calculate_output", str)
        check_pass_threshold(self.spec)
        try:
            self.formula = Formula(src, set(self.subs))
        except FormulaError as e:
            raise GraderSpecError(f"grader.{e}") from None
        self._io_keys = [k for k, g in self.subs.items() if getattr(g, "io_bound", False)]
        self._items = list(self.subs.items())
        self.io_bound = bool(self._io_keys)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        io = self._io_keys
        if len(io) > 1:
            grades: dict[str, Grade] = {}
            with cf.ThreadPoolExecutor(max_workers=len(io)) as ex:
                futs = {k: ex.submit(self.subs[k].grade, sample, item, trace_id=trace_id) for k in io}
                for k, g in self._items:
                    if k not in futs:
                        grades[k] = g.grade(sample, item, trace_id=trace_id)
                for k, f in futs.items():
                    grades[k] = f.result()
            grades = {k: grades[k] for k in self.subs}  # keep the spec's order
        else:
            grades = {k: g.grade(sample, item, trace_id=trace_id) for k, g in self._items}
        errors: dict[str, bool] = {}
        details: list[str] = []
        usage: dict[str, int] = {}
        sub_rewards: dict[str, float] = {}
        for k, g in grades.items():
            if g.errors:  # safe_grade keeps only true flags
                sub_rewards[k] = 0.0
                errors.update(g.errors)
                details += [f"{k}: {d}" for d in g.metadata.get("errors_detail", [])]
            else:
                sub_rewards[k] = g.score
            if g.metadata:
                merge_token_usage(usage, g.metadata.get("token_usage"))
        meta: dict[str, Any] = {"sub_passed": {k: g.passed for k, g in grades.items() if g.passed is not None}}
        if usage:
            meta["token_usage"] = usage
        try:
            score = self.formula.evaluate(sub_rewards)
        except FormulaError as e:
            meta["errors_detail"] = details
            g = error_grade(self, "formula_parse_error", str(e), metadata=meta, sub_rewards=sub_rewards)
            g.errors.update(errors)
            return g
        if details:
            meta["errors_detail"] = details
        if errors:
            meta["keep_score_on_error"] = True
        return self.make_grade(score, errors=errors, sub_rewards=sub_rewards, metadata=meta,
                               passed=False if errors else None)

    def close(self) -> None:
        for g in self.subs.values():
            g.close()
