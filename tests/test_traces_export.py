"""`agentrft traces export` over a real store (SQLite and the live PostgreSQL): served requests recorded as the server
and a deployment's router record them (production and shadow arms), feedback, then selection, reference fields,
de-duplication against a training file and PII redaction; the files load with the project's dataset loader."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from agentrft.data import load_dataset
from agentrft.store import RunStore
from agentrft.store.schema import utcnow
from agentrft.traces.export import ExportSpec, export, parse_time
from agentrft.traces.pii import Redactor, luhn_ok, redact_pii

SYSTEM = {"role": "system", "content": "You are the support agent."}
TOOLS = [{"type": "function", "function": {"name": "get_order", "description": "an order",
                                           "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}]


def _call(i: int, oid: str) -> dict:
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": "get_order", "arguments": json.dumps({"id": oid})}}


def _episode(st: RunStore, conv: str, question: str, answer: str, *, arm: str | None = "production",
             deployment: str | None = "support-agent", shadow_answer: str | None = None, status: int = 200,
             metadata: dict | None = None) -> None:
    """One agentic conversation as served: the call turn, then the answer turn after the tool result."""
    first = [SYSTEM, {"role": "user", "content": question}]
    call = {"role": "assistant", "content": None, "tool_calls": [_call(0, "O-1")]}
    second = first + [call, {"role": "tool", "tool_call_id": "call_0", "content": "O-1 shipped"}]
    base = {"trace_id": conv, "endpoint": "chat.completions", "model": "support-agent", "tools": TOOLS,
            "deployment": deployment, "arm": arm, "metadata": metadata or {}}
    rows = [{**base, "request_id": f"{conv}-r1", "messages": first, "status": 200,
             "choices": [{"index": 0, "message": call, "finish_reason": "tool_calls"}]},
            {**base, "request_id": f"{conv}-r2", "messages": second, "status": status,
             "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]
             if status == 200 else [], "error": None if status == 200 else "generation failed"}]
    if shadow_answer is not None:
        rows.append({**base, "arm": "shadow", "request_id": f"{conv}-s2", "messages": second, "status": 200,
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": shadow_answer}}]})
    st.record_traces(rows)


@pytest.fixture
def store(store_url):
    st = RunStore(store_url)
    _episode(st, "c-good", "Where is order O-1? Mail me at jane.doe@example.com", "It shipped.",
             shadow_answer="  it SHIPPED. ", metadata={"expected_status": "shipped"})
    _episode(st, "c-bad", "Where is order O-2? Call +1 (415) 555-0132", "No idea.", shadow_answer="It shipped.")
    _episode(st, "c-err", "Refund card 4111 1111 1111 1111 please", "", status=503)
    _episode(st, "c-other", "Where is order O-3?", "It shipped.", deployment="other-agent")
    _episode(st, "c-dup", "where is ORDER o-9?", "It shipped.")
    st.add_feedback("c-good", score=1.0, label="shipped", actor="alice")
    st.add_feedback("c-bad", score=1.0)
    st.add_feedback("c-bad", score=0.0, label="wrong_answer", comment="it had shipped")  # the newest counts
    yield st
    st.close()


def test_selection_references_and_demos_load_as_datasets(store, tmp_path):
    rows, demos = tmp_path / "rows.jsonl", tmp_path / "demos.jsonl"
    rep = export(store, ExportSpec(rows=str(rows), demos=str(demos), deployment="support-agent", status="ok",
                                   reference_from={"reference": "label", "expected_status": "metadata.expected_status",
                                                   "served": "answer"}))
    assert rep["conversations"] == 4 and rep["selected"] == 3 and rep["skipped"] == {"a request failed": 1}
    got = {r["source_trace_id"]: r for r in (json.loads(x) for x in rows.read_text().splitlines())}
    assert set(got) == {"c-good", "c-bad", "c-dup"}
    good = got["c-good"]
    # the conversation up to the user's turn, the tools as offered, references from feedback and metadata
    assert [m["role"] for m in good["messages"]] == ["system", "user"] and good["tools"] == TOOLS
    assert (good["reference"], good["expected_status"], good["served"]) == ("shipped", "shipped", "It shipped.")
    assert got["c-bad"]["reference"] == "wrong_answer" and "reference" not in got["c-dup"]
    ds = load_dataset(rows)
    assert len(ds) == 3 and ds[0].tool_names == ["get_order"]
    demo_ds = load_dataset(demos, allow_demos=True)
    assert len(demo_ds) == 3
    d = next(r for r in demo_ds if r.item["source_trace_id"] == "c-good")
    assert [m["role"] for m in d.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert d.messages[-1]["content"] == "It shipped." and d.messages[2]["tool_calls"][0]["function"]["name"] == \
        "get_order"


@pytest.mark.parametrize("spec, expected", [
    (dict(min_score=0.5), {"c-good"}),
    (dict(max_score=0.5), {"c-bad"}),
    (dict(labels=["wrong_answer", "other"]), {"c-bad"}),
    (dict(feedback="without"), {"c-err", "c-other", "c-dup"}),
    (dict(status="error"), {"c-err"}),
    (dict(disagreement=True), {"c-bad"}),  # c-good's shadow differed only in case and spaces
    (dict(deployment="other-agent"), {"c-other"}),
    (dict(arm="candidate"), set()),
])
def test_filters(store, tmp_path, spec, expected):
    out = tmp_path / "rows.jsonl"
    export(store, ExportSpec(rows=str(out), **spec))
    assert {json.loads(x)["source_trace_id"] for x in out.read_text().splitlines()} == expected


def test_time_window(store, tmp_path):
    out = tmp_path / "rows.jsonl"
    rep = export(store, ExportSpec(rows=str(out), until=utcnow() - timedelta(hours=1)))
    assert rep["conversations"] == 0 and out.read_text() == ""
    rep = export(store, ExportSpec(rows=str(out), since=parse_time("1h")))
    assert rep["selected"] == 5
    assert parse_time("2026-11-29T18:00:00Z").isoformat() == "2026-11-29T18:00:00+00:00"
    with pytest.raises(ValueError, match="neither an ISO time"):
        parse_time("yesterday")


def test_dedupe_against_the_training_set_and_within_the_export(store, tmp_path):
    train = tmp_path / "train.jsonl"
    # the same prompt as c-dup but for case and whitespace: a duplicate
    train.write_text(json.dumps({"messages": [SYSTEM, {"role": "user", "content": "Where is  order O-9? "}]}) + "\n")
    out = tmp_path / "rows.jsonl"
    rep = export(store, ExportSpec(rows=str(out), status="ok", dedupe_against=[str(train)]))
    assert rep["duplicates"] == 1
    assert "c-dup" not in {json.loads(x)["source_trace_id"] for x in out.read_text().splitlines()}
    _episode(store, "c-dup2", "Where is order O-3?", "It shipped.", deployment="other-agent")  # = c-other's
    rep = export(store, ExportSpec(rows=str(out), deployment="other-agent"))
    assert (rep["selected"], rep["duplicates"]) == (1, 1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "nope"}\n')
    with pytest.raises(Exception, match="bad.jsonl:1"):
        export(store, ExportSpec(rows=str(out), dedupe_against=[str(bad)]))


def test_pii_is_redacted_in_rows_demos_and_references(store, tmp_path):
    rows, demos = tmp_path / "rows.jsonl", tmp_path / "demos.jsonl"
    rep = export(store, ExportSpec(rows=str(rows), demos=str(demos), reference_from={"note": "comment"}))
    text = rows.read_text() + demos.read_text()
    for pii in ("jane.doe@example.com", "555-0132", "4111 1111 1111 1111"):
        assert pii not in text
    assert "<EMAIL>" in text and "<PHONE>" in text and "<CARD>" in text and rep["redactions"] >= 3
    assert "O-1" in text and "O-2" in text  # order ids are not personal data and stay


def test_builtin_redaction_rules():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    cases = {
        "mail jane.doe+x@mail.example.co.uk now": "mail <EMAIL> now",
        "card 4111-1111-1111-1111.": "card <CARD>.",
        "not a card 4111 1111 1111 1112": "not a card 4111 1111 1111 1112",
        "call +44 20 7946 0958 or (415) 555-0132": "call <PHONE> or <PHONE>",
        "order O-1001 placed 2026-11-29, key K3, 12345678": "order O-1001 placed 2026-11-29, key K3, 12345678",
    }
    for raw, want in cases.items():
        assert redact_pii(raw)[0] == want, raw


def test_a_redaction_hook_runs_after_the_builtin(store, tmp_path, monkeypatch):
    (tmp_path / "my_redact.py").write_text("import re\n\ndef scrub(text):\n"
                                           "    return re.sub(r'O-\\d+', '<ORDER>', text)\n"
                                           "\ndef broken(text):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from agentrft.traces.pii import load_hook

    out = tmp_path / "rows.jsonl"
    export(store, ExportSpec(rows=str(out)), Redactor(load_hook("my_redact:scrub")))
    text = out.read_text()
    assert "O-1" not in text and "<ORDER>" in text and "<EMAIL>" in text
    export(store, ExportSpec(rows=str(out)), Redactor(load_hook("my_redact:scrub"), default=False))
    assert "jane.doe@example.com" in out.read_text()
    with pytest.raises(ValueError, match="returned NoneType, expected str"):
        export(store, ExportSpec(rows=str(out)), Redactor(load_hook("my_redact:broken"), hook_name="my_redact:broken"))
    with pytest.raises(ValueError, match="has no function 'nope'"):
        load_hook("my_redact:nope")
    with pytest.raises(ValueError, match="expected module:function"):
        load_hook("my_redact")


def test_cli_export_report_and_errors(tmp_path):
    """One real `agentrft traces export` subprocess (on SQLite: the store code is covered on both backends above);
    the refusals through the same typer app in-process (each subprocess pays the CLI's torch import)."""
    from typer.testing import CliRunner

    from agentrft.cli import app

    st = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    _episode(st, "c-good", "Where is order O-1?", "It shipped.")
    _episode(st, "c-err", "Where is order O-2?", "", status=503)
    st.close()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    out = tmp_path / "rows.jsonl"
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "traces", "export", "--store", url, "--rows", str(out),
                        "--deployment", "support-agent", "--status", "ok", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["rows"] == 1 and rep["skipped"] == {"a request failed": 1} and len(out.read_text().splitlines()) == 1
    runner = CliRunner()
    for args, words in ((["--status", "fine", "--rows", str(out)], "--status must be ok, error or any"),
                        ([], "give --rows FILE"),
                        (["--rows", str(out), "--reference-from", "x"], "expected KEY=SOURCE"),
                        (["--rows", str(out), "--reference-from", "x=grade"], "the source must be one of"),
                        (["--rows", str(out), "--since", "last week"], "neither an ISO time"),
                        (["--rows", str(out), "--redact", "nosuchmod:f"], "cannot import nosuchmod")):
        res = runner.invoke(app, ["traces", "export", "--store", url, *args])
        said = " ".join((res.output + (res.stderr if res.stderr_bytes is not None else "")).split())
        assert res.exit_code == 2 and words in said, (args, said)
        assert res.exception is None or isinstance(res.exception, SystemExit)


def test_an_empty_selection_writes_an_empty_file(store, tmp_path):
    out = tmp_path / "nothing.jsonl"
    rep = export(store, ExportSpec(rows=str(out), labels=["no-such-label"]))
    assert rep["rows"] == 0 and out.exists() and out.read_text() == ""
    assert not list(Path(tmp_path).glob(".nothing.jsonl.*"))  # no temporary file left behind
