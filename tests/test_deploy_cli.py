"""``agentrft deploy create | list | status | advance | rollback`` over a real SQLite store (and ``--store`` errors),
run through the real command tree; one run as a subprocess, as users run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from agentrft.cli import app
from agentrft.store import RunStore

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollout.yaml"


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def test_deploy_commands_over_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    st = RunStore(url)
    run_id = st.create_run("cand", {})
    ck_dir = tmp_path / "ck"
    ck_dir.mkdir()
    st.record_checkpoint(run_id, f"{run_id}:step-4", 4, ck_dir, {}, 0.7, kept=True)
    st.record_checkpoint(run_id, f"{run_id}:step-2", 2, tmp_path / "gone", {}, 0.2, kept=False)
    ck = f"{run_id}:step-4"
    r = run("deploy", "create", "support-agent", "--production", "base", "--candidate", ck, "--mode", "canary",
            "--policy", str(EXAMPLE), "--actor", "erin", "--store", url)
    assert r.exit_code == 0, r.output
    assert "support-agent: canary at 5% (active); production base, candidate " + ck in r.output.replace("\n", "")
    assert "not a checkpoint id in this store" in r.output  # "base" is the server's to resolve
    r = run("deploy", "list", "--store", url)
    assert r.exit_code == 0 and "support-agent" in r.output and "canary" in r.output
    r = run("deploy", "advance", "support-agent", "--reason", "metrics fine", "--store", url)
    assert r.exit_code == 0 and "at 25%" in r.output
    r = run("deploy", "status", "support-agent", "--json", "--store", url)
    s = json.loads(r.output)
    assert s["weight"] == 0.25 and [e["kind"] for e in s["events"]] == ["create", "advance"]
    assert s["events"][1]["data"]["reason"] == "metrics fine" and s["policy"]["name"] == "support-agent"
    r = run("deploy", "rollback", "support-agent", "--store", url)
    assert r.exit_code == 0 and "full (rolled_back); production base" in r.output.replace("\n", " ")
    assert [(x["kind"], x["actor"]) for x in st.ledger()] == [("deployment_create", "erin"),
                                                              ("deployment_advance", "cli"),
                                                              ("deployment_rollback", "cli")]
    # errors are one line and exit 2
    bad_policy = tmp_path / "bad.yaml"
    bad_policy.write_text(yaml.safe_dump({**yaml.safe_load(EXAMPLE.read_text()), "schedule": [0.5, 0.1]}))
    for args, want in [
        (["create", "x", "--production", "base", "--candidate", ck, "--mode", "canary", "--policy", str(bad_policy)],
         "bad.yaml: schedule: weight 1 (0.1) is not above weight 0"),
        (["create", "x", "--production", "base", "--candidate", f"{run_id}:step-2", "--mode", "canary", "--policy",
          str(EXAMPLE)], "is not kept on disk"),
        (["create", "x", "--production", "base", "--candidate", ck, "--mode", "canary"], "needs a rollout policy"),
        (["advance", "nope"], "no deployment named 'nope'"),
        (["rollback", "support-agent"], "nothing to roll back to"),
    ]:
        r = run("deploy", *args, "--store", url)
        assert r.exit_code == 2 and want in r.output.replace("\n", " "), (args, r.output)
    r = run("deploy", "list", "--store", str(tmp_path / "missing.db"))
    assert r.exit_code == 2 and "error" in r.output
    st.close()


def test_deploy_as_a_subprocess(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    RunStore(url).close()
    p = subprocess.run([sys.executable, "-m", "agentrft.cli", "deploy", "create", "d", "--production", "base",
                        "--mode", "full", "--store", url], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "d: full (active); production base" in p.stdout
