"""The commands as a user runs them (mounted top-level with register()), on a real store and a real local model:
promote → registry → a grader changes → registry marks the entry → regress re-runs the evals and re-gates."""

from __future__ import annotations

import json
import shutil

import lookup_task as lt
import pytest
import typer
import yaml
from test_check import FUZZY
from test_monitors import ALL, EXACT, LOOPHOLE, honest
from test_promote import SCOPE, record_run, right
from typer.testing import CliRunner

from agentrft.data import load_dataset
from agentrft.evals.cli import register as register_evals
from agentrft.gate.cli import register as register_gate
from agentrft.store import RunStore

top = typer.Typer()
register_evals(top)
register_gate(top)
runner = CliRunner()

POLICY = {"safety": {"grader": "scope", "min_pass_rate": 1.0}, "min_lift": {"metric": "reward", "min_diff": 0.0},
          "efficiency": {"max_tool_calls_per_traj": 4}}


def invoke(*args):
    r = runner.invoke(top, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return lt.write_task(tmp_path_factory.mktemp("pcli"), seed=11, n_train=4, n_valid=4, n_demos=1)


def test_promote_registry_stale_regress(tmp_path, tiny_model, small):
    rows = list(load_dataset(small["valid"]))
    url = f"sqlite:///{tmp_path}/runs.db"
    store = RunStore(url)
    run, cfg = record_run(store, tmp_path, small, rows, grader=EXACT, holdouts=[SCOPE], base_fn=honest,
                          cand_fn=right, samples=2)
    shutil.copytree(tiny_model, tmp_path / "base")  # the run's base model and its checkpoint, on disk
    shutil.copytree(tiny_model, tmp_path / "run" / "step-2", dirs_exist_ok=True)
    pol = tmp_path / "policy.yaml"
    pol.write_text(yaml.safe_dump(POLICY))

    r = invoke("promote", run[:12], "--policy", pol, "--store", url)
    assert r.exit_code == 0, r.output
    assert "PROMOTED" in r.output and "registered as entry 1" in r.output
    r = invoke("registry", "--store", url, "--json")
    (entry,) = json.loads(r.output)
    assert entry["status"] == "promoted" and set(entry["grader_versions"]) == {"exact", "scope"}

    # the team changes its reward grader: the registry marks the entry for re-evaluation
    conf = tmp_path / "cfg.yaml"
    conf.write_text(yaml.safe_dump({
        "model": str(tmp_path / "base"), "training_file": str(small["train"]), "validation_file": str(small["valid"]),
        "tools": ["lookup_task:lookup"], "grader": FUZZY, "holdout_graders": {"scope": SCOPE}, "store": url,
        "output_dir": str(tmp_path / "out"),
        "hyperparameters": {"max_new_tokens": 8, "max_turns": 2, "max_episode_steps": 2, "eval_samples": 2}}))
    r = invoke("registry", "--config", conf, "--json")
    (entry,) = json.loads(r.output)
    assert entry["status"] == "needs_reeval"
    assert "exact: no longer configured" in entry["evidence"]["stale"]["reasons"]
    assert "fuzzy: new grader" in " ".join(entry["evidence"]["stale"]["reasons"])

    # regress: baseline and checkpoint evaluated again with the new graders (the same weights here: Δ = 0 exactly)
    r = invoke("regress", "--config", conf, "--policy", pol)
    assert r.exit_code == 0, r.output
    assert "entry 1: promoted" in r.output
    (entry,) = store.registry("promoted")
    assert set(entry["grader_versions"]) == {"fuzzy", "scope"}
    (again,) = entry["evidence"]["regressions"]
    assert again["promoted"] and again["intervals"]["reward"]["diff"] == 0.0
    assert store.count_trajectories(again["run_id"], "valid") == 2 * 4 * 2
    assert invoke("regress", "--config", conf, "--policy", pol).output.strip() == "nothing to re-evaluate"


def test_refusals_monitor_and_audit_commands(tmp_path, small):
    rows = list(load_dataset(small["valid"]))
    url = f"sqlite:///{tmp_path}/runs.db"
    store = RunStore(url)
    run, _ = record_run(store, tmp_path, small, rows, grader=LOOPHOLE, holdouts=[EXACT, SCOPE], base_fn=honest,
                        cand_fn=lambda r, k: ALL if k % 2 else right(r, k), samples=4)
    pol = tmp_path / "policy.yaml"
    pol.write_text(yaml.safe_dump(POLICY))
    r = invoke("promote", run, "--policy", pol, "--store", url)
    assert r.exit_code == 1 and "REFUSED" in r.output and "monitors" in r.output
    r = invoke("monitor", run, "--store", url, "--json")
    assert r.exit_code == 1 and "holdout_gap/exact" in {a["signal"] for a in json.loads(r.output)}
    r = invoke("registry", "--store", url, "--all", "--json")
    assert [e["status"] for e in json.loads(r.output)] == ["refused"]

    r = invoke("audit", "export", run, "-n", "3", "--step", "2", "--out", tmp_path / "aud", "--store", url)
    assert r.exit_code == 0 and "audit-step-000002.html" in r.output
    trace = json.loads((tmp_path / "aud" / "audit-step-000002.jsonl").read_text().splitlines()[0])["trace_id"]
    assert invoke("audit", "record", trace, "hack", "--note", "lists all", "--store", url).exit_code == 0
    assert "step 2: hack 1" in invoke("audit", "summary", run, "--store", url).output

    # user errors: one line, exit 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**POLICY, "waive": ["safety"]}))
    r = invoke("promote", run, "--policy", bad, "--store", url)
    assert r.exit_code == 2 and "safety gate cannot be waived" in r.output
    r = invoke("promote", "nope", "--policy", pol, "--store", url)
    assert r.exit_code == 2 and "no run 'nope'" in r.output
    r = invoke("audit", "record", "trace_x", "pass", "--store", url)
    assert r.exit_code == 2 and "no trajectory 'trace_x'" in r.output
