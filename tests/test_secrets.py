"""Secrets are never recorded (issue 14, class 6): literal header values, keys and URL passwords are stored
redacted in the run record and the run directory's config.json (the rule the tool backends' repr uses); a token
for the tool server can come from an environment variable or a file instead of the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lookup_task
from agentrft.redact import redact_config, redact_value
from agentrft.store import RunStore

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
SECRET = "sk-abc123DONOTSTORE"


def test_redact_value_is_the_tool_backends_rule():
    from agentrft.tools.common import redact as _redact

    for v in (f"Bearer {SECRET}", SECRET, "Bearer ${TOOLS_TOKEN}", "${A}", f"${{A}}-{SECRET}", ""):
        assert redact_value(v) == _redact(v)
    assert redact_value(f"Bearer {SECRET}") == "<redacted>"
    assert redact_value("Bearer ${TOOLS_TOKEN}") == "Bearer ${TOOLS_TOKEN}"  # a reference is safe as written
    assert redact_value(f"${{A}}:{SECRET}") == "<redacted; uses ${A}>"


def test_redact_config_covers_headers_env_keys_and_url_passwords():
    cfg = {
        "tools": ["mod:*", {"name": "get_order", "server_url": "http://127.0.0.1:8000/",
                            "headers": {"Authorization": f"Bearer {SECRET}", "X-Ref": "Bearer ${TOKEN}"}},
               {"mcp": "npx server", "env": {"GITHUB_TOKEN": SECRET}, "headers": {"Cookie": SECRET}}],
        "grader": {"type": "multi", "graders": {"e": {"type": "endpoint", "url": "https://g.example/",
                                                      "headers": {"X-Api-Key": SECRET}}},
                   "judge": {"api_key": SECRET, "base_url": f"https://user:{SECRET}@judge.example/v1"}},
        "store": f"postgresql+psycopg://agentrft:{SECRET}@db:5432/runs",
        "hyperparameters": {"max_tokens": 5, "max_context_tokens": 100, "tokenizer": "keep-me", "seed": 1},
    }
    original = json.dumps(cfg)
    out = redact_config(cfg)
    assert json.dumps(cfg) == original  # the config itself is untouched
    text = json.dumps(out)
    assert SECRET not in text
    assert out["tools"][1]["headers"] == {"Authorization": "<redacted>", "X-Ref": "Bearer ${TOKEN}"}
    assert out["tools"][2]["env"] == {"GITHUB_TOKEN": "<redacted>"}
    assert out["store"] == "postgresql+psycopg://agentrft:***@db:5432/runs"
    assert out["hyperparameters"] == cfg["hyperparameters"]  # *_tokens, tokenizer: not secrets
    assert out["tools"][0] == "mod:*" and out["tools"][1]["server_url"] == "http://127.0.0.1:8000/"


def test_every_run_record_is_redacted_by_the_store(tmp_path):
    st = RunStore("sqlite:///" + str(tmp_path / "s.db"))
    rid = st.create_run("r", {"tools": [{"name": "t", "server_url": "http://x/", "headers": {"Authorization": SECRET}}]},
                        base_model=f"https://u:{SECRET}@hub.example/model")
    st.close()
    assert SECRET.encode() not in (tmp_path / "s.db").read_bytes()
    st = RunStore("sqlite:///" + str(tmp_path / "s.db"), mode="read")
    run = st.get_run(rid)
    assert run["config"]["tools"][0]["headers"] == {"Authorization": "<redacted>"}
    st.close()


def test_a_literal_tool_header_never_reaches_the_store_or_the_run_directory(tiny_model, tmp_path, monkeypatch):
    from agentrft.config import RunConfig
    from agentrft.rl.trainer import train

    monkeypatch.setenv("ORDERS_TOKEN", "tok-from-env-DONOTSTORE")
    files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    cfg = RunConfig(
        name="secrets", model=str(tiny_model), training_file=str(files["train"]), validation_file=None,
        tools=["lookup_task:lookup",
               {"name": "get_order", "server_url": "http://127.0.0.1:9/",
                "headers": {"Authorization": f"Bearer {SECRET}", "X-Env": "Bearer ${ORDERS_TOKEN}"}}],
        grader=lookup_task.GRADER, output_dir=str(tmp_path / "runs"), base_dir=str(tmp_path),
        hyperparameters={"max_steps": 1, "batch_size": 2, "group_size": 2, "max_new_tokens": 8, "max_turns": 2})
    run_id = train(cfg, progress=False)
    dumped = json.loads((tmp_path / "runs" / run_id / "config.json").read_text())
    http = next(t for t in dumped["tools"] if isinstance(t, dict) and "server_url" in t)
    assert http["headers"] == {"Authorization": "<redacted>", "X-Env": "Bearer ${ORDERS_TOKEN}"}
    for f in (tmp_path / "runs").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".db", ".txt", "") or f.name.endswith(("-wal",)):
            blob = f.read_bytes()
            assert SECRET.encode() not in blob, f
            assert b"tok-from-env-DONOTSTORE" not in blob, f
    st = RunStore(cfg.store_url, mode="read")
    assert SECRET not in json.dumps(st.get_run(run_id)["config"])
    st.close()


# ---------------------------------------------------------------------------------------------------------------
# tokens on the command line
# ---------------------------------------------------------------------------------------------------------------


def _tools_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "AGENTRFT_TOOLS_TOKEN"}
    e.update({"PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
              "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "agentrft.cli", "tools", *args], env=e, capture_output=True,
                          text=True, timeout=120)


def test_the_help_says_where_else_a_token_can_come_from():
    res = _tools_cli("serve", "--help")
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "AGENTRFT_TOOLS_TOKEN" in text and "--token-file" in text and "ps" in text


@pytest.mark.parametrize("how", ["env", "file", "argv"])
def test_the_token_is_taken_from_env_file_or_argv(tmp_path, how):
    """Binding beyond loopback needs a token: each way of giving it gets past that check (the unknown
    environment is then the error), and only the command line draws a warning."""
    tok = tmp_path / "token"
    tok.write_text("tok-in-file\n")
    args = ["serve", "no_such_env", "--host", "0.0.0.0", "--port", "1"]
    env = None
    if how == "env":
        env = {"AGENTRFT_TOOLS_TOKEN": "tok-in-env"}
    elif how == "file":
        args += ["--token-file", str(tok)]
    else:
        args += ["--token", "tok-in-argv"]
    res = _tools_cli(*args, env=env)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "without a token" not in res.stderr and "no_such_env" in res.stderr, res.stderr
    assert ("visible to other users" in res.stderr) == (how == "argv")


def test_a_bad_token_file_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for f, why in ((empty, "empty"), (tmp_path / "missing", "cannot read")):
        res = _tools_cli("serve", "x", "--host", "0.0.0.0", "--token-file", str(f))
        assert res.returncode == 2 and str(f) in res.stderr and why in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
