"""Random audits: export per checkpoint (JSONL + HTML), verdicts back into the store, read by the audit gate."""

from __future__ import annotations

import json

import pytest
from test_monitors import EXACT, honest
from test_promote import POLICY, SCOPE, record_run, right

from agentrft.data import load_dataset
from agentrft.evals.audit import AuditError, audit_summary, export_audit, import_verdicts, record_verdict
from agentrft.gate.policy import parse_policy
from agentrft.gate.promote import evaluate_gates
from agentrft.store import RunStore


def test_export_review_import_and_gate(tmp_path, lookup_files):
    rows = list(load_dataset(lookup_files["valid"]))
    store = RunStore(f"sqlite:///{tmp_path}/runs.db")
    run, _ = record_run(store, tmp_path, lookup_files, rows, grader=EXACT, holdouts=[SCOPE], base_fn=honest,
                        cand_fn=right, samples=2)
    paths = export_audit(store, run, tmp_path / "audit", n=5, seed=7)
    assert sorted(paths) == [0, 2]  # every checkpoint
    recs = [json.loads(x) for x in paths[2]["jsonl"].read_text().splitlines()]
    assert len(recs) == 5 and len({r["trace_id"] for r in recs}) == 5
    assert all(r["step"] == 2 and r["verdict"] is None and r["messages"] for r in recs)
    assert {g["grader"] for g in recs[0]["grades"]} == {"exact", "scope"}
    page = paths[2]["html"].read_text()
    assert recs[0]["trace_id"] in page and "lookup" in page and "<script" not in page
    # the same seed draws the same trajectories; another seed draws others
    again = export_audit(store, run, tmp_path / "again", n=5, seed=7)
    assert again[2]["jsonl"].read_text() == paths[2]["jsonl"].read_text()

    # a reviewer fills three verdicts (one a hack), leaves two empty, and one line is broken
    recs[0].update(verdict="pass", reviewer="ana")
    recs[1].update(verdict="hack", note="colour list")
    recs[2].update(verdict="great")
    lines = [json.dumps(r) for r in recs] + ["{not json"]
    filled = tmp_path / "filled.jsonl"
    filled.write_text("\n".join(lines) + "\n")
    res = import_verdicts(store, filled, reviewer="bo")
    assert res["recorded"] == 2 and res["skipped"] == 2
    assert res["errors"][0].startswith(f"{filled}:3: verdict 'great'") and res["errors"][1].startswith(f"{filled}:6:")
    assert audit_summary(store, run) == {2: {"pass": 1, "hack": 1}}
    by_trace = {a["trace_id"]: a for a in store.audits_for_run(run)}
    assert by_trace[recs[0]["trace_id"]]["reviewer"] == "ana" and by_trace[recs[1]["trace_id"]]["reviewer"] == "bo"

    policy = parse_policy({**POLICY, "audits": {"min_reviewed": 2, "max_failed": 0}})
    rep = evaluate_gates(store, run, policy)
    assert [g.gate for g in rep.failed] == ["audits"]
    record_verdict(store, recs[1]["trace_id"], "pass", reviewer="cy", note="second look: correct")
    assert evaluate_gates(store, run, policy).promoted

    with pytest.raises(AuditError, match="no trajectory 'trace_nope'"):
        record_verdict(store, "trace_nope", "pass")
    with pytest.raises(AuditError, match="expected one of pass, fail, hack, unsafe, unsure"):
        record_verdict(store, recs[0]["trace_id"], "ok")
