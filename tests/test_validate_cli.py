"""``agentrft validate CONFIG`` (issue 14): datasets, graders, tools (with reachability), endpoint graders and the
model path, checked without loading a model; every problem printed at once, exit 2; exit 0 with a summary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lookup_task as lt
import yaml

TESTS = Path(__file__).parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "100",
         **(env or {})}
    for k in ("AGENTRFT_JUDGE_BASE_URL", "OPENAI_BASE_URL"):
        if k not in (env or {}):
            e.pop(k, None)
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=e, capture_output=True, text=True,
                          timeout=300)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write(tmp: Path, cfg: dict) -> Path:
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def fake_model(tmp: Path) -> Path:
    """A directory that looks like a model but cannot load: validate must not try."""
    d = tmp / "model"
    d.mkdir()
    (d / "config.json").write_text('{"model_type": "not-a-real-architecture"}')
    return d


def test_every_problem_is_printed_at_once(tmp_path):
    dead = closed_port()
    good = json.dumps({"messages": [{"role": "user", "content": "Color of K1?"}], "answer": "red"})
    (tmp_path / "train.jsonl").write_text(good + "\nnot json\n" + good.replace('"red"', "NaN") + "\n" + good + "\n")
    cfg = write(tmp_path, {
        "model": "./no-such-model", "training_file": "train.jsonl", "validation_file": "missing.jsonl",
        "tools": ["lookup_task:lookup", {"name": "remote", "server_url": f"http://127.0.0.1:{dead}/"}],
        "grader": {"type": "score_model", "name": "judge", "model": "gpt-4o-mini",
                   "input": [{"role": "user", "content": "{{sample.output_text}}"}]},
        "holdout_graders": {"ep": {"type": "endpoint", "url": f"http://127.0.0.1:{dead}/grade"},
                            "bad": {"type": "string_check", "input": "a", "reference": "b", "operation": "nope"}},
    })
    r = cli("validate", str(cfg), "--timeout", "2")
    out = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    expected = [
        f"{tmp_path / 'train.jsonl'}:2: not valid JSON",
        f"{tmp_path / 'train.jsonl'}:3: NaN is not JSON",
        f"{tmp_path / 'missing.jsonl'}: file not found",
        f"tools[1] (remote): server_url http://127.0.0.1:{dead}/: unreachable: cannot connect",
        "grader.model 'gpt-4o-mini': no judge endpoint is configured",
        f"holdout_graders.ep.url http://127.0.0.1:{dead}/grade: unreachable",
        "holdout_graders.bad: grader.operation",
        "model: './no-such-model': no such directory",
    ]
    for e in expected:
        assert e in out, f"missing {e!r} in:\n{r.stderr}"
    assert f"{len(expected)} problems in" in out


def test_a_good_config_passes_with_a_summary_without_loading_the_model(tmp_path):
    files = lt.write_task(tmp_path / "data", n_train=5, n_valid=3, n_demos=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts the probe's connection; nothing is read or answered
    try:
        cfg = write(tmp_path, {
            "model": str(fake_model(tmp_path)), "training_file": str(files["train"]),
            "validation_file": str(files["valid"]),
            "tools": ["lookup_task:lookup",
                      {"name": "remote", "server_url": f"http://127.0.0.1:{server.getsockname()[1]}/"}],
            "grader": lt.GRADER})
        r = cli("validate", str(cfg))
    finally:
        server.close()
    assert r.returncode == 0, r.stdout + r.stderr
    out = " ".join(r.stdout.split())
    assert ": ok —" in out and "(5 rows)" in out and "(3 rows)" in out and "tools: lookup, remote" in out
    assert "model directory" in out and "grader: string_check 'answer'" in out


def test_model_reference_kinds(tmp_path):
    files = lt.write_task(tmp_path / "data", n_train=2, n_valid=1, n_demos=1)
    base = {"training_file": str(files["train"]), "grader": lt.GRADER, "tools": ["lookup_task:lookup"]}
    r = cli("validate", str(write(tmp_path, {**base, "model": "Qwen/Qwen2.5-0.5B-Instruct"})))
    assert r.returncode == 0 and "Hugging Face id" in r.stdout, r.stderr
    (tmp_path / "empty").mkdir()
    r = cli("validate", str(write(tmp_path, {**base, "model": str(tmp_path / "empty")})))
    assert r.returncode == 2 and "no config.json or adapter_config.json" in r.stderr
    r = cli("validate", str(write(tmp_path, {**base, "model": "not an id!"})))
    assert r.returncode == 2 and "neither a model directory nor a Hugging Face id" in r.stderr


def test_a_config_that_does_not_parse_names_the_fields(tmp_path):
    cfg = write(tmp_path, {"model": "m", "training_file": "t.jsonl", "grader": {"type": "string_check"},
                           "hyperparameters": {"temperature": float("inf"), "max_steps": 10**12}})
    r = cli("validate", str(cfg))
    out = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "hyperparameters.temperature: Input should be a finite number" in out
    assert "hyperparameters.max_steps: Input should be less than or equal to" in out


def test_prompts_over_the_context_with_the_tokenizer_only(tmp_path, tiny_model):
    files = lt.write_task(tmp_path / "data", n_train=6, n_valid=2, n_demos=1)
    rows = [json.loads(x) for x in open(files["train"])]
    for i in (1, 4):
        rows[i]["messages"][-1]["content"] += " pad" * 600
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": str(tiny_model), "training_file": "long.jsonl", "grader": lt.GRADER,
            "tools": ["lookup_task:lookup"], "hyperparameters": {"max_context_tokens": 512}}
    r = cli("validate", str(write(tmp_path, base)))
    said = " ".join(r.stderr.split())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 6 rows have a prompt of at least hyperparameters.max_context_tokens (512) tokens (line 2:" in said

    all_long = [dict(r, messages=[{"role": "user", "content": "x" + " pad" * 600}]) for r in rows]
    (tmp_path / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_long))
    r = cli("validate", str(write(tmp_path, base)))
    assert r.returncode == 2 and "6 of 6 rows have a prompt" in " ".join(r.stderr.split()), r.stderr
