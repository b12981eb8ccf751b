"""Conformance tests: templating, string_check, python_function (expected values from the documented semantics)."""

from __future__ import annotations

import pytest

from agentrft.graders import GraderSpecError, build_grader, grader_version
from agentrft.graders.base import sample_from_text
from agentrft.graders.templating import TemplateVariableError, render, render_value, resolve

SAMPLE = {
    "output_text": "Paris",
    "output_json": {"answer": "Paris", "n": 3, "ok": True, "none": None},
    "output_tools": [
        {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"q\": \"x\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": "{}"}},
    ],
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}],
}
ITEM = {"expected": ["a", "b", "c"], "answer": "paris", "nested": {"k.with.dots": 1, "list": [{"x": 7}]},
        "n": 4, "uni": "Ünïcødé ß", "empty": ""}


# ---- templating ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tpl,expected",
    [
        ("{{ sample.output_text }}", "Paris"),
        ("{{sample.output_text}}", "Paris"),
        ("{{ sample.output_tools[0].function.name }}", "search"),
        ("{{ sample.output_tools[-1].function.name }}", "lookup"),
        ("{{ sample.output_tools.1.function.name }}", "lookup"),
        ("{{ item.expected[2] }}", "c"),
        ("{{ item.nested['k.with.dots'] }}", "1"),
        ("{{ item.nested[\"list\"][0].x }}", "7"),
        ("The answer is {{item.answer}}!", "The answer is paris!"),
        ("{{ item.expected }}", '["a","b","c"]'),
        ("{{ sample.output_json.ok }}", "true"),
        ("{{ sample.output_json.none }}", "null"),
        ("{{ item.uni }}", "Ünïcødé ß"),
        ("{{ item.empty }}", ""),
        ("no variables here", "no variables here"),
        ("{{ item.n }}/{{ sample.output_json.n }}", "4/3"),
        ("{{ sample.choices[0].message.content }}", "Paris"),
    ],
)
def test_render(tpl, expected):
    assert render(tpl, SAMPLE, ITEM) == expected


@pytest.mark.parametrize(
    "tpl,needle",
    [
        ("{{ item.missing }}", "item.missing: not found"),
        ("{{ item.expected[3] }}", "out of range"),
        ("{{ item.expected.x }}", "is a list"),
        ("{{ item.answer.x }}", "is a str"),
        ("{{ other.x }}", "unknown namespace"),
        ("{{ item.expected[x] }}", "must be an integer"),
        ("{{ item.a | upper }}", "filters are not supported"),
        ("{{ }}", "expected a variable"),
    ],
)
def test_render_errors_name_the_path(tpl, needle):
    with pytest.raises(TemplateVariableError) as ei:
        render(tpl, SAMPLE, ITEM)
    assert needle in str(ei.value)
    assert ei.value.flag == "invalid_variable_error"


def test_output_json_missing_has_hint():
    with pytest.raises(TemplateVariableError, match="response format"):
        resolve("sample.output_json.answer", sample_from_text("x"), {})


def test_render_value_keeps_types():
    assert render_value("{{ item.n }}", SAMPLE, ITEM) == 4
    assert render_value("{{ item.expected }}", SAMPLE, ITEM) == ["a", "b", "c"]
    assert render_value(5, SAMPLE, ITEM) == 5
    assert render_value("n={{ item.n }}", SAMPLE, ITEM) == "n=4"


# ---- string_check -------------------------------------------------------------------------------
def sc(op, inp="{{ sample.output_text }}", ref="{{ item.ref }}", **kw):
    return build_grader({"type": "string_check", "name": "sc", "input": inp, "reference": ref, "operation": op, **kw})


@pytest.mark.parametrize(
    "op,out,ref,score",
    [
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "Paris", "paris", 0.0),
        ("eq", "Paris ", "Paris", 0.0),  # no trimming
        ("eq", "", "", 1.0),
        ("eq", "café", "cafe\u0301", 0.0),  # no unicode normalisation
        ("ne", "Paris", "paris", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is paris.", "Paris", 0.0),
        ("like", "anything", "", 1.0),
        ("like", "", "x", 0.0),
        ("like", "100%", "0%", 1.0),
        ("like", "abc", "a%", 0.0),  # % is literal, not a wildcard
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "STRASSE", "straße", 1.0),  # casefold
        ("ilike", "ΣΊΣΥΦΟΣ", "σίσυφος", 1.0),
        ("ilike", "Lyon", "paris", 0.0),
    ],
)
def test_string_check_ops(op, out, ref, score):
    g = sc(op).grade(sample_from_text(out), {"ref": ref})
    assert g.score == score
    assert g.errors == {}
    assert g.passed is (score == 1.0)


def test_string_check_missing_variable_flags_and_scores_zero():
    g = sc("ne").grade(sample_from_text("Paris"), {"nope": 1})
    assert g.score == 0.0 and g.errors == {"invalid_variable_error": True} and g.passed is False
    assert "item.ref: not found" in g.metadata["errors_detail"][0]


def test_string_check_pass_threshold_and_version():
    spec = {"type": "string_check", "name": "sc", "input": "a", "reference": "a", "operation": "eq"}
    g = build_grader(spec).grade(sample_from_text(""), {})
    assert g.score == 1.0 and g.version == grader_version(spec)
    # key order does not change the version; content does
    assert grader_version(dict(reversed(list(spec.items())))) == g.version
    assert grader_version({**spec, "reference": "b"}) != g.version


@pytest.mark.parametrize(
    "spec,needle",
    [
        ({"input": "a", "reference": "b", "operation": "contains"}, "grader.operation"),
        ({"reference": "b", "operation": "eq"}, "grader.input: required"),
        ({"input": "a", "reference": 3, "operation": "eq"}, "grader.reference: expected a string"),
        ({"input": "{{ foo.x }}", "reference": "b", "operation": "eq"}, "grader.input"),
        ({"input": "a", "reference": "b", "operation": "eq", "pass_threshold": "x"}, "grader.pass_threshold"),
    ],
)
def test_string_check_validate(spec, needle):
    with pytest.raises(GraderSpecError, match=needle):
        build_grader({"type": "string_check", "name": "x", **spec})


def test_unknown_type():
    with pytest.raises(GraderSpecError, match="unknown grader type"):
        build_grader({"type": "nope"})


# ---- python_function ----------------------------------------------------------------------------
def fn_float(sample, item):
    return 0.25 if sample["output_text"] == item["ref"] else 0.75


def fn_dict(sample, item):
    return {"score": 0.5, "why": "half", "passed": True, "turn_scores": [1, 0]}


def fn_raise(sample, item):
    raise ZeroDivisionError("boom")


def fn_str(sample, item):
    return "0.5"


def fn_bool(sample, item):
    return True


def fn_nan(sample, item):
    return float("nan")


def fn_nodict(sample, item):
    return {"value": 1}


def pf(fn, **kw):
    return build_grader({"type": "python_function", "name": "pf", "function": f"{__name__}:{fn}", **kw})


def test_python_function_float_and_dict():
    assert pf("fn_float").grade(sample_from_text("a"), {"ref": "a"}).score == 0.25
    assert pf("fn_float").grade(sample_from_text("b"), {"ref": "a"}).score == 0.75
    g = pf("fn_dict").grade(sample_from_text("b"), {})
    assert g.score == 0.5 and g.metadata == {"why": "half"} and g.passed is True and g.turn_scores == [1.0, 0.0]
    assert pf("fn_float", pass_threshold=0.5).grade(sample_from_text("a"), {"ref": "a"}).passed is False


@pytest.mark.parametrize("fn,needle", [("fn_raise", "ZeroDivisionError: boom"), ("fn_str", "returned str"),
                                       ("fn_bool", "returned bool"), ("fn_nan", "finite"),
                                       ("fn_nodict", "without 'score'")])
def test_python_function_errors(fn, needle):
    g = pf(fn).grade(sample_from_text("a"), {})
    assert g.score == 0.0 and g.errors == {"python_grader_runtime_error": True}
    assert needle in g.metadata["errors_detail"][0]


def test_python_function_bad_reference():
    with pytest.raises(GraderSpecError, match="grader.function"):
        pf("does_not_exist")
    with pytest.raises(GraderSpecError, match="cannot import"):
        build_grader({"type": "python_function", "function": "no_such_mod_xyz:f"})


def test_templates_over_a_real_trajectory_sample():
    from agentrft.graders.base import sample_from_trajectory
    from agentrft.types import ToolCall, Trajectory, Turn

    call = ToolCall(call_id="call_1", name="lookup", arguments='{"id": 7}', output="found")
    t = Trajectory(trace_id="trace_x", row_index=0, turns=[Turn(index=0, start=0, end=0, text="", tool_calls=[call])],
                   messages=[{"role": "assistant", "content": '{"answer": "Paris", "n": 2}'}])
    rf = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    s = sample_from_trajectory(t, rf)
    assert render("{{ sample.output_json.answer }}/{{ sample.output_tools[0].function.name }}", s, {}) == "Paris/lookup"
    assert render("{{ sample.trajectory.tool_calls[0].output }}", s, {}) == "found"
    g = build_grader({"type": "string_check", "name": "x", "input": "{{ sample.output_json.answer }}",
                      "reference": "{{ item.city }}", "operation": "eq"})
    assert g.grade(s, {"city": "Paris"}).score == 1.0
    # without a response format there is no output_json: flagged, not rendered empty
    r = g.grade(sample_from_trajectory(t), {"city": "Paris"})
    assert r.errors == {"invalid_variable_error": True} and "response format" in r.metadata["errors_detail"][0]
