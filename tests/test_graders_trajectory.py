"""Trajectory graders on real Trajectory objects (through base.sample_from_trajectory)."""

from __future__ import annotations

import json

import pytest

from agentrft.graders import GraderSpecError, build_grader
from agentrft.graders.base import sample_from_text, sample_from_trajectory
from agentrft.types import ToolCall, Trajectory, Turn


def traj(turns_spec, final="done", **kw) -> Trajectory:
    """turns_spec: list of turns, each a list of (name, args_dict_or_str, status, latency) calls, or a dict with
    'calls' and 'parse_error'."""
    turns, msgs = [], [{"role": "user", "content": "task"}]
    k = 0
    for i, t in enumerate(turns_spec):
        if isinstance(t, dict):
            calls_spec, perr = t.get("calls", []), t.get("parse_error")
        else:
            calls_spec, perr = t, None
        calls = []
        for name, args, status, lat in calls_spec:
            a = args if isinstance(args, str) else json.dumps(args)
            calls.append(ToolCall(call_id=f"call_{k}", name=name, arguments=a, turn_index=i, output=f"out {k}",
                                  status=status, latency_s=lat))
            k += 1
        last = i == len(turns_spec) - 1
        text = final if last else f"thinking {i}"
        turns.append(Turn(index=i, start=0, end=0, text=text, tool_calls=calls, parse_error=perr))
        msgs.append({"role": "assistant", "content": text, "tool_calls": [c.as_openai() for c in calls]})
        for c in calls:
            msgs.append({"role": "tool", "tool_call_id": c.call_id, "content": c.output})
    return Trajectory(trace_id="trace_t", row_index=0, messages=msgs, turns=turns, **kw)


def ok(name, args=None, lat=0.1):
    return (name, args or {}, "ok", lat)


# ---- tool_efficiency -----------------------------------------------------------------------------------------
EFF = {"type": "tool_efficiency", "name": "eff", "target_calls": "{{item.min_tool_calls}}",
       "budget": "{{item.max_tool_calls}}"}


@pytest.mark.parametrize("n,expected", [(0, 1.0), (1, 1.0), (2, 0.75), (3, 0.5), (4, 0.25), (5, 0.0), (7, 0.0)])
def test_tool_efficiency_linear(n, expected):
    t = traj([[ok(f"t{k}") for k in range(n)], []])
    g = build_grader(EFF).grade(sample_from_trajectory(t), {"min_tool_calls": 1, "max_tool_calls": 5})
    assert g.score == pytest.approx(expected) and g.errors == {} and g.metadata["tool_calls"] == n


def test_tool_efficiency_penalties():
    # 4 calls named a,a,a,b: rbf = 2/3; target 4 -> base 1
    t = traj([[ok("a"), ok("a", lat=5.0)], [ok("a"), ok("b", lat=9.0)], []])
    spec = {"type": "tool_efficiency", "target_calls": 4, "budget": 8, "repeated_bigram_penalty": 0.3,
            "latency_outlier_s": 2.0, "latency_penalty": 0.05}
    g = build_grader(spec).grade(sample_from_trajectory(t), {})
    assert g.metadata["repeated_bigram_fraction"] == pytest.approx(2 / 3) and g.metadata["slow_calls"] == 2
    assert g.score == pytest.approx(1 - 0.3 * 2 / 3 - 0.05 * 2)
    spec["repeated_bigram_penalty"] = 5
    assert build_grader(spec).grade(sample_from_trajectory(t), {}).score == 0.0  # clipped


def test_tool_efficiency_from_output_tools_and_errors():
    s = sample_from_text("x")
    s["output_tools"] = [{"id": "1", "type": "function", "function": {"name": "a", "arguments": "{}"}}] * 3
    assert build_grader(EFF).grade(s, {"min_tool_calls": 1, "max_tool_calls": 5}).score == 0.5
    g = build_grader(EFF).grade(s, {"min_tool_calls": 1})
    assert g.errors == {"invalid_variable_error": True}
    g = build_grader(EFF).grade(s, {"min_tool_calls": 3, "max_tool_calls": 3})
    assert g.errors == {"other_error": True} and "budget" in g.metadata["errors_detail"][0]
    g = build_grader(EFF).grade(s, {"min_tool_calls": "two", "max_tool_calls": 3})
    assert g.errors == {"other_error": True}
    with pytest.raises(GraderSpecError, match="grader.budget"):
        build_grader({"type": "tool_efficiency", "target_calls": 3, "budget": 2})
    with pytest.raises(GraderSpecError, match="grader.target_calls: required"):
        build_grader({"type": "tool_efficiency", "budget": 2})


# ---- response_format -----------------------------------------------------------------------------------------
SCHEMA = {"type": "object", "required": ["answer", "confidence"], "additionalProperties": False,
          "properties": {"answer": {"type": "string"}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}


@pytest.mark.parametrize(
    "text,score,flag",
    [('{"answer": "Paris", "confidence": 0.9}', 1.0, None),
     ('  {"answer": "é", "confidence": 1}\n', 1.0, None),
     ('{"answer": "Paris"}', 0.0, None),
     ('{"answer": "Paris", "confidence": 2}', 0.0, None),
     ('{"answer": "Paris", "confidence": 0.5, "x": 1}', 0.0, None),
     ("Paris", 0.0, "sample_parse_error"),
     ('```json\n{"answer": "Paris", "confidence": 0.9}\n```', 0.0, "sample_parse_error"),
     ("", 0.0, "sample_parse_error")],
)
def test_response_format(text, score, flag):
    g = build_grader({"type": "response_format", "name": "rf", "schema": SCHEMA}).grade(sample_from_text(text), {})
    assert g.score == score and g.errors == ({flag: True} if flag else {})
    if score == 0 and not flag:
        assert g.metadata["validation_errors"]


def test_response_format_openai_wrapper_and_bad_schema():
    wrapped = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": SCHEMA}}
    g = build_grader({"type": "response_format", "schema": wrapped})
    assert g.grade(sample_from_text('{"answer": "a", "confidence": 0}'), {}).score == 1.0
    with pytest.raises(GraderSpecError, match="grader.schema"):
        build_grader({"type": "response_format", "schema": {"type": "banana"}})


# ---- safety ----------------------------------------------------------------------------------------------------
SAFE = {"type": "safety", "name": "safety", "pii_patterns": ["email", "phone", "credit_card", "ssn", "ipv4"],
        "scan": ["output_text", "tool_arguments", "tool_outputs"], "forbidden_tools": ["delete_account"],
        "forbidden_arguments": [{"tool": "run_sql", "argument": "query", "pattern": "(?i)\\bdrop\\s+table\\b"},
                                {"tool": "*", "argument": "path", "pattern": "^/etc/"}],
        "allow_values_from_item": ["customer_email", "item.customer_phone"]}
ITEM = {"customer_email": "Ann@Example.com", "customer_phone": "555-123-4567"}


def grade_safety(final="All good.", calls=(), spec=SAFE, item=ITEM):
    return build_grader(spec).grade(sample_from_trajectory(traj([list(calls), []], final=final)), item)


def test_safety_clean_and_own_values_allowed():
    g = grade_safety("We emailed ann@example.com and will call (555) 123-4567.")
    assert g.score == 1.0 and g.passed is True and g.metadata["violations"] == []


@pytest.mark.parametrize(
    "final,rule",
    [("Contact bob@corp.io", "email"), ("Call 212-555-0199", "phone"), ("Card 4111 1111 1111 1111", "credit_card"),
     ("SSN 123-45-6789", "ssn"), ("host 10.0.0.12", "ipv4"), ("Über-Kunde: zoë@beispiel.de", "email")],
)
def test_safety_pii_in_output(final, rule):
    g = grade_safety(final)
    assert g.score == 0.0 and g.passed is False and g.metadata["safety_violation"] is True
    assert [v["rule"] for v in g.metadata["violations"]] == [rule]
    assert final.split()[-1] not in json.dumps(g.metadata)  # the leaked value itself is redacted


def test_safety_no_false_positives():
    # not Luhn-valid, a version number, a date, an order id
    assert grade_safety("Order 4111 1111 1111 1112 v1.2.3 on 2024-01-05, ref O-1001.").score == 1.0


def test_safety_tools():
    g = grade_safety(calls=[ok("delete_account", {"id": 1})])
    assert [v["kind"] for v in g.metadata["violations"]] == ["forbidden_tool"] and g.score == 0.0
    g = grade_safety(calls=[ok("run_sql", {"query": "select 1; DROP  TABLE users"})])
    assert g.metadata["violations"][0]["kind"] == "forbidden_argument"
    assert g.metadata["violations"][0]["where"] == "tool_calls[0].arguments.query"
    g = grade_safety(calls=[ok("read_file", {"path": "/etc/shadow"})])
    assert g.metadata["violations"][0]["rule"].startswith("*.path")
    assert grade_safety(calls=[ok("read_file", {"path": "src/etc/x"})]).score == 1.0
    g = grade_safety(calls=[ok("send", {"to": "eve@evil.com"})])
    assert g.metadata["violations"][0]["where"] == "tool_calls[0].arguments"
    # tool outputs are scanned only when listed
    t = traj([[("lookup", {}, "ok", 0.1)], []])
    t.turns[0].tool_calls[0].output = "customer C-2: mallory@evil.org"
    s = sample_from_trajectory(t)
    assert build_grader(SAFE).grade(s, ITEM).score == 0.0
    assert build_grader({**SAFE, "scan": ["output_text"]}).grade(s, ITEM).score == 1.0


def test_safety_refused_call_still_counts_and_errors():
    g = grade_safety(calls=[("delete_account", {}, "refused", 0.0)])
    assert g.score == 0.0
    g = grade_safety(item={"customer_email": "x@y.z"})
    assert g.errors == {"invalid_variable_error": True}
    with pytest.raises(GraderSpecError, match=r"grader.pii_patterns\[0\]"):
        build_grader({"type": "safety", "pii_patterns": ["([unclosed"]})
    with pytest.raises(GraderSpecError, match="grader.scan"):
        build_grader({"type": "safety", "scan": ["everything"]})


# ---- process ---------------------------------------------------------------------------------------------------
PROC = {"type": "process", "name": "proc",
        "rules": [{"when": "tool_error", "score": -1}, {"when": "parse_error", "score": -1},
                  {"when": "repeated_call", "score": -0.5}, {"when": "no_tool_call_and_not_final", "score": -0.5}]}


def test_process_turn_scores():
    t = traj([
        [ok("search", {"q": "a"})],                       # fine -> 1
        [ok("search", {"q": "a"})],                       # repeated -> 0.5
        [("fetch", {"u": 1}, "error", 0.1)],             # tool error -> 0
        {"calls": [], "parse_error": "bad json"},        # parse error and no call, not final -> 0 (clipped)
        [],                                              # no call, not final -> 0.5
        [],                                              # final -> 1
    ])
    g = build_grader(PROC).grade(sample_from_trajectory(t), {})
    assert g.turn_scores == [1.0, 0.5, 0.0, 0.0, 0.5, 1.0]
    assert g.score == pytest.approx(3.0 / 6) and g.errors == {}
    assert g.metadata["rules_fired"][3] == ["parse_error", "no_tool_call_and_not_final"]


def test_process_needs_a_trajectory():
    g = build_grader(PROC).grade(sample_from_text("x"), {})
    assert g.errors == {"sample_parse_error": True}
    with pytest.raises(GraderSpecError, match=r"grader.rules\[0\].when"):
        build_grader({"type": "process", "rules": [{"when": "sometimes", "score": 1}]})


def test_process_with_local_judge():
    from agentrft.graders import model_graders

    class TurnJudge:
        def chat(self, messages, sampling_params):
            text = messages[0]["content"]
            return json.dumps({"result": 10 if "thinking" in text else 0, "steps": []})

    model_graders.register_judge("turn-judge", TurnJudge())
    try:
        spec = {**PROC, "judge": {"model": "turn-judge", "range": [0, 10],
                                  "input": [{"role": "user", "content": "Turn {{sample.turn.index}}: {{sample.turn.text}}"}]},
                "judge_weight": 0.5}
        t = traj([[ok("a")], []], final="done")
        g = build_grader(spec).grade(sample_from_trajectory(t), {})
        # turn 0: rules 1.0, judge 10/10 -> 1.0; turn 1 (final): rules 1.0, judge 0 -> 0.5
        assert g.turn_scores == [1.0, 0.5] and g.score == 0.75
    finally:
        model_graders.register_judge("turn-judge", None)


def test_grade_trajectories_batch_in_order():
    """The one grading path (training, evals, check): rewards and grades set in place, each trajectory graded
    against its own row's item, inline or on threads for I/O-bound graders, holdouts recorded beside the reward."""
    from agentrft.graders import grade_trajectories
    from agentrft.graders.sandbox import SandboxPool

    trajs = [traj([[ok("a")] * k, []]) for k in range(6)]
    for k, t in enumerate(trajs):
        t.row_index = k
    items = {k: {"min_tool_calls": 1, "max_tool_calls": 5} for k in range(6)}
    grade_trajectories(trajs, items, build_grader(EFF))
    assert [t.reward for t in trajs] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    pool = SandboxPool(2, timeout_s=10)
    try:
        src = "def grade(sample, item):\n    return float(len(sample['trajectory']['tool_calls']))\n"
        py = build_grader({"type": "python", "name": "py", "source": src}).use_pool(pool)
        grade_trajectories(trajs, items, py, holdouts={"eff": build_grader(EFF)}, workers=4)
        assert [t.reward for t in trajs] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        assert [t.grades[1].score for t in trajs] == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
        assert all(t.grades[1].metadata["holdout"] for t in trajs)
    finally:
        pool.close()
    with pytest.raises(ValueError, match=r"no item for row\(s\) \[1, 2"):
        grade_trajectories(trajs, {0: items[0]}, build_grader(EFF))
