"""The agentrft command as a user runs it: errors before any model loads, eval, runs, show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

import lookup_task

TESTS = Path(__file__).parent


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _config(tmp: Path, model: str, train: Path, valid: Path, **hp) -> Path:
    cfg = {
        "model": model, "training_file": str(train), "validation_file": str(valid),
        "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER, "output_dir": str(tmp / "runs"),
        "hyperparameters": {"max_new_tokens": 12, "max_turns": 2, "eval_samples": 2, **hp},
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_bad_dataset_is_reported_whole_before_the_model_loads(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
        "not json\n"
        '{"messages": [{"role": "bot", "content": "x"}]}\n'
        '{"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function", "function": {"name": "search"}}]}\n'
        '{"tools": []}\n'
    )
    valid = tmp_path / "valid.jsonl"
    valid.write_text('{"messages": "nope"}\n')
    # the model does not exist: if the data were checked after loading it, this would be a model error
    cfg = _config(tmp_path, str(tmp_path / "no-such-model"), train, valid)
    r = run_cli("train", str(cfg), "--no-progress")
    assert r.returncode == 2, r.stderr
    err = r.stderr
    assert "5 problems in the dataset" in err
    assert f"{train}:2:" in err and "not valid JSON" in err
    assert f"{train}:3:" in err and "'bot'" in err
    assert f"{train}:4:" in err and "search" in err and "lookup" in err  # unknown tool, known ones listed
    assert f"{train}:5:" in err and "messages" in err
    assert f"{valid}:1:" in err
    assert "Traceback" not in err and "no-such-model" not in err


def test_bad_config_names_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: m\ntraining_file: t.jsonl\ngrader: {type: string_check}\nhyperparameters: {group_size: 1}\n")
    r = run_cli("train", str(p))
    assert r.returncode == 2
    assert "hyperparameters.group_size" in r.stderr and "Traceback" not in r.stderr


def test_eval_runs_show(tiny_model, lookup_files, tmp_path):
    cfg = _config(tmp_path, str(tiny_model), lookup_files["train"], lookup_files["valid"])
    out = tmp_path / "m.json"
    r = run_cli("eval", "--model", str(tiny_model), "--data", str(lookup_files["valid"]), "--config", str(cfg),
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    n_valid = len(lookup_files["valid"].read_text().splitlines())
    assert m["trajectories"] == 2 * n_valid
    assert 0.0 <= m["reward_mean"] <= 1.0 and "tool_calls_per_traj" in m and "grader/answer" in m
    r = run_cli("runs", "--config", str(cfg))
    assert r.returncode == 0 and "eval model on valid.jsonl" in r.stdout
    run_id = next(tok for tok in r.stdout.split() if tok.startswith("run-"))
    r = run_cli("show", run_id, "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows[0]["split"] == "eval:valid" and rows[0]["trajectories"] == 2 * n_valid
    r = run_cli("show", "run-nope", "--config", str(cfg))
    assert r.returncode == 2 and "no run" in r.stderr


def test_eval_model_names_a_run_or_its_checkpoint(tiny_model, lookup_files, tmp_path):
    """``eval --model RUN`` is the run's best checkpoint, ``RUN:step-N`` one of its kept ones, ``baseline`` the
    config's model; a checkpoint the run does not have is an error naming the ones it has, never a hub lookup."""
    from agentrft.config import load_config
    from agentrft.evals.run_eval import resolve_eval_model
    from agentrft.rl.trainer import train

    cfg_path = _config(tmp_path, str(tiny_model), lookup_files["train"], lookup_files["valid"], max_steps=2,
                       batch_size=2, group_size=2, eval_interval=2, eval_samples=1, eval_rows=3)
    cfg = load_config(cfg_path)
    run_id = train(cfg, progress=False)
    from agentrft.store import RunStore

    st = RunStore(cfg.store_url, mode="read")
    assert [m["trajectories"] for m in st.step_metrics(run_id, split="valid")] == [3, 3]  # eval_rows: 3 rows each eval
    st.close()
    step2 = str(tmp_path / "runs" / run_id / "checkpoints" / "step-000002")
    assert resolve_eval_model(cfg, run_id) in {step2, str(tmp_path / "runs" / run_id / "checkpoints" / "step-000000")}
    assert resolve_eval_model(cfg, f"{run_id}:step-2") == step2
    assert resolve_eval_model(cfg, "baseline") == str(tiny_model)
    assert resolve_eval_model(cfg, "Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # a HF id, as given
    r = run_cli("eval", "--model", f"{run_id}:step-99", "--data", str(lookup_files["valid"]), "--config", str(cfg_path))
    assert r.returncode == 2 and f"has no checkpoint 'step-99' (it has: " in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "m.json"
    r = run_cli("eval", "--model", run_id, "--data", str(lookup_files["valid"]), "--config", str(cfg_path),
                "--max-rows", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["trajectories"] == 2
