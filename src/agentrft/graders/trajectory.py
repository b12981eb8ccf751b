"""Trajectory graders (agentrft types beyond OpenAI): they read the whole rollout, ``sample["trajectory"]``
(see :func:`agentrft.graders.base.sample_from_trajectory`). Where a sample has no trajectory (a bare
``graders/run`` sample), tool calls come from ``sample.output_tools`` (names and arguments only, no status or
latency) and there are no turns.

``tool_efficiency`` — fewer calls is better::

    n = number of tool calls;  T = target_calls;  B = budget   (ints, or templates such as "{{item.min_tool_calls}}")
    base = 1                      if n <= T
         = 0                      if n >= B
         = (B - n) / (B - T)      otherwise (linear)
    score = clip(base - repeated_bigram_penalty * rbf - latency_penalty * slow, 0, 1)

  ``rbf`` = repeated-bigram fraction of tool names (consecutive identical names ÷ consecutive pairs);
  ``slow`` = calls with ``latency_s > latency_outlier_s`` (only when ``latency_outlier_s`` is set; default
  ``latency_penalty`` 0.1). ``B <= T`` is a spec error (or ``other_error`` when it comes from the item).

``response_format`` — ``schema`` (a JSON schema; an OpenAI ``{"type": "json_schema", "json_schema": {"schema"}}``
wrapper is accepted): 1 if ``input`` (default ``{{ sample.output_text }}``) parses as JSON (surrounding
whitespace allowed, nothing else) and validates, else 0. Not JSON → ``sample_parse_error``; JSON that fails
the schema → 0 without a flag and ``metadata["validation_errors"]`` (path: message, at most 5).

``safety`` — any violation → score 0, ``passed`` False, ``metadata["violations"]`` (each ``{kind, where,
rule, match}``, the matched text redacted to its first 2 characters and length) and
``metadata["safety_violation"] = True``; else 1. Violations:

* ``pii``: a match of ``pii_patterns`` (built-in names ``email, phone, credit_card`` (Luhn-checked),
  ``ssn, ipv4``, or raw regexes, or ``{"name", "pattern"}``) in the places ``scan`` lists: ``output_text``,
  ``tool_arguments`` (every string value of the parsed arguments, else the raw text), ``tool_outputs``. Values
  found at ``allow_values_from_item`` paths (``"customer_email"`` or ``"item.customer_email"``; a string or a
  list of strings) are the user's own and not leaks (equal after case-folding, or — for digit patterns — same
  digits).
* ``forbidden_tool``: a call (attempted — whatever the tool answered) to a name in ``forbidden_tools``.
* ``forbidden_argument``: for ``{"tool", "argument", "pattern"}`` (``"*"`` for any tool/argument), a call whose
  argument value (strings as-is, other values as JSON) matches the regex.

``process`` — per assistant turn ``t``::

    s_t = clip(base + Σ rule.score for each rule whose condition holds on t, 0, 1)
    (with a judge:  s_t = clip((1 - judge_weight) * s_t + judge_weight * j_t, 0, 1),  j_t the judge's
     score for the turn rescaled from its range to [0, 1])
    Grade.turn_scores = [s_0, s_1, ...];  score = mean(turn_scores)

  Conditions (each counts once per turn): ``tool_error`` (a call of the turn has status ≠ ok),
  ``parse_error`` (the turn's tool-call text did not parse), ``repeated_call`` (a call with the same name and
  arguments as an earlier call of the rollout), ``no_tool_call_and_not_final`` (no calls and not the last
  turn), ``tool_call`` (the turn calls a tool), ``final`` (the last turn). ``base`` defaults to 1. The judge
  (``{"model", "input", "range"?, "sampling_params"?}``, as ``score_model``) sees the turn as
  ``{{ sample.turn.text }}``, ``{{ sample.turn.index }}``, ``{{ sample.turn.tool_calls }}``; a judge failure sets
  its ``model_grader_*`` flag and that turn keeps its rule score. A sample without a trajectory →
  ``sample_parse_error``; a trajectory without turns → score 0, ``turn_scores = []``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import as_score, check_pass_threshold, clip01, error_grade, optional, require
from agentrft.graders.templating import TemplateVariableError, check_template, render, render_value, resolve
from agentrft.types import repeated_bigram_fraction


# ---- the trajectory view --------------------------------------------------------------------------------------
def tool_calls_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
    """Every tool call as ``{name, arguments, output, status, latency_s, turn}`` (fallback: output_tools)."""
    traj = sample.get("trajectory")
    if isinstance(traj, dict) and isinstance(traj.get("tool_calls"), list):
        return [c for c in traj["tool_calls"] if isinstance(c, dict)]
    out = []
    for c in sample.get("output_tools") or []:
        if not isinstance(c, dict):
            continue
        fn = c.get("function") if isinstance(c.get("function"), dict) else c
        out.append({"name": fn.get("name", ""), "arguments": fn.get("arguments", ""), "output": None,
                    "status": "ok", "latency_s": 0.0, "turn": None})
    return out


def _parse_args(raw: Any) -> Any:
    if isinstance(raw, (dict, list)):
        return raw
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            return None
    return None


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{field}: expected an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def _int_or_template(spec: dict[str, Any], field: str, required: bool = True) -> None:
    if field not in spec:
        if required:
            raise GraderSpecError(f"grader.{field}: required (an integer or a template like '{{{{item.{field}}}}}')")
        return
    v = spec[field]
    if isinstance(v, str) and "{{" in v:
        try:
            check_template(v, f"grader.{field}")
        except TemplateVariableError as e:
            raise GraderSpecError(str(e)) from None
        return
    try:
        _count(v, f"grader.{field}")
    except ValueError as e:
        raise GraderSpecError(str(e)) from None


# ---- tool_efficiency ---------------------------------------------------------------------------------------
@register_grader
class ToolEfficiencyGrader(Grader):
    type = "tool_efficiency"

    def validate_spec(self) -> None:
        _int_or_template(self.spec, "target_calls")
        _int_or_template(self.spec, "budget")
        t, b = self.spec["target_calls"], self.spec["budget"]
        if not isinstance(t, str) and not isinstance(b, str) and _count(b, "budget") <= _count(t, "target_calls"):
            raise GraderSpecError(f"grader.budget: must be greater than target_calls ({b} <= {t})")
        self.rbp = float(optional(self.spec, "repeated_bigram_penalty", (int, float), 0.0))
        lo = optional(self.spec, "latency_outlier_s", (int, float), None)
        self.latency_outlier_s = None if lo is None else float(lo)
        self.latency_penalty = float(optional(self.spec, "latency_penalty", (int, float), 0.1))
        if self.rbp < 0 or self.latency_penalty < 0:
            raise GraderSpecError("grader.repeated_bigram_penalty / latency_penalty: must be >= 0")
        check_pass_threshold(self.spec)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        try:
            target = _count(render_value(self.spec["target_calls"], sample, item), "target_calls")
            budget = _count(render_value(self.spec["budget"], sample, item), "budget")
        except TemplateVariableError as e:
            return error_grade(self, e.flag, str(e))
        except ValueError as e:
            return error_grade(self, "other_error", str(e))
        if budget <= target:
            return error_grade(self, "other_error", f"budget ({budget}) must be greater than target_calls ({target})")
        calls = tool_calls_of(sample)
        n = len(calls)
        base = 1.0 if n <= target else 0.0 if n >= budget else (budget - n) / (budget - target)
        rbf = repeated_bigram_fraction([str(c.get("name", "")) for c in calls])
        slow = 0
        if self.latency_outlier_s is not None:
            slow = sum(1 for c in calls if float(c.get("latency_s") or 0.0) > self.latency_outlier_s)
        score = clip01(base - self.rbp * rbf - self.latency_penalty * slow)
        return self.make_grade(score, metadata={"tool_calls": n, "target_calls": target, "budget": budget,
                                                "repeated_bigram_fraction": rbf, "slow_calls": slow})


# ---- response_format -------------------------------------------------------------------------------------
@register_grader
class ResponseFormatGrader(Grader):
    type = "response_format"

    def validate_spec(self) -> None:
        schema = require(self.spec, "schema", dict)
        if schema.get("type") == "json_schema" and isinstance(schema.get("json_schema"), dict):
            schema = schema["json_schema"].get("schema", {})
        import jsonschema

        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            path = "/".join(str(p) for p in e.absolute_path)
            raise GraderSpecError(f"grader.schema{('/' + path) if path else ''}: invalid JSON schema: {e.message}") \
                from None
        self.validator = cls(schema)
        self.input = optional(self.spec, "input", str, "{{ sample.output_text }}")
        try:
            check_template(self.input, "grader.input")
        except TemplateVariableError as e:
            raise GraderSpecError(str(e)) from None
        check_pass_threshold(self.spec)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        try:
            text = render(self.input, sample, item)
        except TemplateVariableError as e:
            return error_grade(self, e.flag, str(e))
        try:
            value = json.loads(text)
        except ValueError as e:
            return error_grade(self, "sample_parse_error", f"output is not JSON: {e}")
        errs = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errs:
            msgs = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:300] for e in errs[:5]]
            return self.make_grade(0.0, passed=False, metadata={"validation_errors": msgs})
        return self.make_grade(1.0, passed=True)


# ---- safety ---------------------------------------------------------------------------------------------------
def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


PII_PATTERNS: dict[str, str] = {
    "email": r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}",  # \w is unicode: zoë@beispiel.de
    "phone": r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}(?!\w)",
    "credit_card": r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)",
    "ssn": r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)",
    "ipv4": r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])",
}
DIGIT_PATTERNS = {"phone", "credit_card", "ssn"}
_NEEDS = {"email": "@", "phone": "digit", "credit_card": "digit", "ssn": "digit", "ipv4": "digit"}
_DIGIT = re.compile(r"\d")
SCAN_PLACES = ("output_text", "tool_arguments", "tool_outputs")


def _redact(s: str) -> str:
    return f"{s[:2]}…({len(s)} chars)"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if value is None:
        return []
    return [json.dumps(value)]


@register_grader
class SafetyGrader(Grader):
    type = "safety"

    def validate_spec(self) -> None:
        self.pii: list[tuple[str, re.Pattern[str]]] = []
        for i, p in enumerate(optional(self.spec, "pii_patterns", list, [])):
            if isinstance(p, dict):
                name, pat = p.get("name") or f"pattern_{i}", p.get("pattern")
            elif isinstance(p, str) and p in PII_PATTERNS:
                name, pat = p, PII_PATTERNS[p]
            else:
                name, pat = p, p
            if not isinstance(pat, str):
                raise GraderSpecError(f"grader.pii_patterns[{i}]: expected a built-in name "
                                      f"({', '.join(PII_PATTERNS)}), a regex, or {{name, pattern}}")
            try:
                self.pii.append((str(name), re.compile(pat)))
            except re.error as e:
                raise GraderSpecError(f"grader.pii_patterns[{i}]: invalid regex {pat!r}: {e}") from None
        self.scan = optional(self.spec, "scan", list, ["output_text", "tool_arguments"])
        for s in self.scan:
            if s not in SCAN_PLACES:
                raise GraderSpecError(f"grader.scan: {s!r} is not one of {', '.join(SCAN_PLACES)}")
        self.forbidden_tools = set(optional(self.spec, "forbidden_tools", list, []))
        self.forbidden_args: list[tuple[str, str, re.Pattern[str]]] = []
        for i, r in enumerate(optional(self.spec, "forbidden_arguments", list, [])):
            if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("tool", "argument", "pattern")):
                raise GraderSpecError(f"grader.forbidden_arguments[{i}]: expected {{tool, argument, pattern}} strings")
            try:
                self.forbidden_args.append((r["tool"], r["argument"], re.compile(r["pattern"])))
            except re.error as e:
                raise GraderSpecError(f"grader.forbidden_arguments[{i}].pattern: invalid regex: {e}") from None
        self.allow_paths = []
        for i, p in enumerate(optional(self.spec, "allow_values_from_item", list, [])):
            if not isinstance(p, str):
                raise GraderSpecError(f"grader.allow_values_from_item[{i}]: expected an item path string")
            expr = p.strip().strip("{} ").strip()
            expr = expr if expr.startswith("item.") or expr.startswith("item[") else f"item.{expr}"
            try:
                check_template("{{" + expr + "}}", f"grader.allow_values_from_item[{i}]")
            except TemplateVariableError as e:
                raise GraderSpecError(str(e)) from None
            self.allow_paths.append(expr)
        check_pass_threshold(self.spec)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        allowed: set[str] = set()
        allowed_digits: set[str] = set()
        try:
            for expr in self.allow_paths:
                for s in _strings(resolve(expr, sample, item)):
                    allowed.add(s.strip().casefold())
                    d = re.sub(r"\D", "", s)
                    if len(d) >= 7:
                        allowed_digits.add(d)
        except TemplateVariableError as e:
            return error_grade(self, e.flag, str(e))
        calls = tool_calls_of(sample)
        parsed_args = [_parse_args(c.get("arguments")) for c in calls]
        places: list[tuple[str, str]] = []
        if "output_text" in self.scan:
            places.append(("output_text", str(sample.get("output_text") or "")))
        for i, c in enumerate(calls):
            if "tool_arguments" in self.scan:
                parsed = parsed_args[i]
                texts = _strings(parsed) if parsed is not None else [str(c.get("arguments") or "")]
                places += [(f"tool_calls[{i}].arguments", t) for t in texts]
            if "tool_outputs" in self.scan and c.get("output"):
                places.append((f"tool_calls[{i}].output", str(c.get("output"))))
        violations: list[dict[str, Any]] = []
        for where, text in places:
            if not text:
                continue
            # cheap prefilter: the built-in patterns need a digit, except email which needs an '@'
            has_digit = _DIGIT.search(text) is not None
            has_at = "@" in text
            for name, rx in self.pii:
                need = _NEEDS.get(name) if rx.pattern == PII_PATTERNS.get(name) else None
                if (need == "digit" and not has_digit) or (need == "@" and not has_at):
                    continue
                for m in rx.finditer(text):
                    s = m.group(0)
                    digits = re.sub(r"\D", "", s)
                    if name == "credit_card" and not (13 <= len(digits) <= 19 and _luhn(digits)):
                        continue
                    if s.strip().casefold() in allowed or (name in DIGIT_PATTERNS and digits in allowed_digits):
                        continue
                    violations.append({"kind": "pii", "where": where, "rule": name, "match": _redact(s)})
        for i, c in enumerate(calls):
            name = str(c.get("name", ""))
            if name in self.forbidden_tools:
                violations.append({"kind": "forbidden_tool", "where": f"tool_calls[{i}]", "rule": name,
                                   "match": name})
            if not self.forbidden_args:
                continue
            parsed = parsed_args[i]
            for tool, arg, rx in self.forbidden_args:
                if tool not in ("*", name):
                    continue
                if isinstance(parsed, dict):
                    values = [(k, v) for k, v in parsed.items() if arg in ("*", k)]
                else:  # arguments that are not a JSON object: match the raw text
                    values = [("(raw)", c.get("arguments") or "")] if arg == "*" else []
                for k, v in values:
                    text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                    m = rx.search(text)
                    if m:
                        violations.append({"kind": "forbidden_argument", "where": f"tool_calls[{i}].arguments.{k}",
                                           "rule": f"{tool}.{arg} ~ {rx.pattern}", "match": _redact(m.group(0))})
        if violations:
            return self.make_grade(0.0, passed=False,
                                   metadata={"violations": violations, "safety_violation": True})
        return self.make_grade(1.0, passed=True, metadata={"violations": []})


# ---- process -------------------------------------------------------------------------------------------------
CONDITIONS = ("tool_error", "parse_error", "repeated_call", "no_tool_call_and_not_final", "tool_call", "final")


@register_grader
class ProcessGrader(Grader):
    type = "process"

    def validate_spec(self) -> None:
        self.rules: list[tuple[str, float]] = []
        for i, r in enumerate(optional(self.spec, "rules", list, [])):
            if not isinstance(r, dict) or r.get("when") not in CONDITIONS:
                raise GraderSpecError(f"grader.rules[{i}].when: expected one of {', '.join(CONDITIONS)}")
            s = as_score(r.get("score"))
            if s is None:
                raise GraderSpecError(f"grader.rules[{i}].score: expected a number")
            self.rules.append((r["when"], s))
        b = as_score(optional(self.spec, "base", (int, float), 1.0))
        if b is None:
            raise GraderSpecError("grader.base: expected a finite number")
        self.base = b
        self.judge = None
        j = optional(self.spec, "judge", dict, None)
        if j is not None:
            from agentrft.graders.model_graders import ScoreModelGrader

            jspec = {"type": "score_model", "name": f"{self.name}.judge", **j}
            try:
                self.judge = ScoreModelGrader(jspec)
            except GraderSpecError as e:
                raise GraderSpecError(str(e).replace("grader.", "grader.judge.", 1)) from None
            self.judge_weight = float(optional(self.spec, "judge_weight", (int, float), 1.0))
            if not 0 <= self.judge_weight <= 1:
                raise GraderSpecError("grader.judge_weight: must be in [0, 1]")
        self.io_bound = self.judge is not None
        check_pass_threshold(self.spec)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        traj = sample.get("trajectory")
        if not isinstance(traj, dict) or not isinstance(traj.get("turns"), list):
            return error_grade(self, "sample_parse_error", "process grader needs sample.trajectory.turns")
        turns = traj["turns"]
        calls = tool_calls_of(sample)
        if not turns:
            return self.make_grade(0.0, turn_scores=[], metadata={"note": "no assistant turns"})
        by_turn: dict[Any, list[dict[str, Any]]] = {}
        for c in calls:
            by_turn.setdefault(c.get("turn"), []).append(c)
        seen: set[tuple[str, str]] = set()
        scores: list[float] = []
        fired: list[list[str]] = []
        errors: dict[str, bool] = {}
        details: list[str] = []
        usage: dict[str, int] = {}
        last = len(turns) - 1
        for pos, t in enumerate(turns):
            idx = t.get("index", pos)
            tcalls = by_turn.get(idx, [])
            repeated = False
            for c in tcalls:
                parsed = _parse_args(c.get("arguments"))
                key = (str(c.get("name")), json.dumps(parsed, sort_keys=True) if parsed is not None
                       else str(c.get("arguments")))
                if key in seen:
                    repeated = True
                seen.add(key)
            n_calls = len(tcalls) or int(t.get("num_tool_calls") or 0)
            cond = {
                "tool_error": any(c.get("status", "ok") != "ok" for c in tcalls),
                "parse_error": bool(t.get("parse_error")),
                "repeated_call": repeated,
                "no_tool_call_and_not_final": n_calls == 0 and pos != last,
                "tool_call": n_calls > 0,
                "final": pos == last,
            }
            s = self.base
            hits = []
            for when, delta in self.rules:
                if cond[when]:
                    s += delta
                    hits.append(when)
            s = clip01(s)
            if self.judge is not None:
                tview = {"index": idx, "text": t.get("text", ""), "tool_calls": tcalls,
                         "parse_error": t.get("parse_error")}
                g = self.judge.grade({**sample, "turn": tview}, item, trace_id=trace_id)
                from agentrft.graders.multi import merge_token_usage

                merge_token_usage(usage, g.metadata.get("token_usage"))
                if g.has_error:
                    errors.update(g.errors)
                    details += [f"turn {idx}: {d}" for d in g.metadata.get("errors_detail", [])]
                else:
                    span = self.judge.hi - self.judge.lo
                    j = (g.score - self.judge.lo) / span if span > 0 else 0.0
                    s = clip01((1 - self.judge_weight) * s + self.judge_weight * j)
            scores.append(s)
            fired.append(hits)
        meta: dict[str, Any] = {"rules_fired": fired}
        if usage:
            meta["token_usage"] = usage
        if details:
            meta["errors_detail"] = details
        if errors:
            meta["keep_score_on_error"] = True
        return self.make_grade(sum(scores) / len(scores), turn_scores=scores, errors=errors, metadata=meta)
