"""Progress off a terminal (issue 14): `train --no-progress` or a non-TTY stderr gets one plain line per step (step,
reward, timings, ETA); `sft` off a terminal gets plain lines with loss and ETA; bars stay for terminals."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import lookup_task as lt
import yaml
from rich.console import Console

from agentrft.progress import TrainProgress, sft_progress, step_line

TESTS = Path(__file__).parent
M = {"reward_mean": 0.25, "tool_calls_per_traj": 1.5, "zero_variance_fraction": 0.5, "time/sampling": 1.25,
     "time/grading": 0.5, "time/training": 2.0}


def test_step_line_has_step_reward_timings_and_eta():
    line = step_line(5, 20, M, elapsed=50.0, done=5, last_eval={"reward_mean": 0.75})
    assert line.startswith("step 5/20  reward 0.250  calls/traj 1.50  zero-var 0.50  valid 0.750")
    assert "sampling 1.25s grading 0.50s training 2.00s" in line
    assert "elapsed 50s ETA 2m30s" in line  # 10 s a step, 15 steps to go
    # a resumed session: the rate is from the steps this session ran
    assert "elapsed 20s ETA 30s" in step_line(12, 15, M, elapsed=20.0, done=2)  # 10 s a step, 3 to go


def test_off_a_terminal_each_step_is_a_line_and_no_bar():
    for enabled in (True, False):
        buf = io.StringIO()
        con = Console(file=buf, force_terminal=False, width=300)
        with TrainProgress(3, enabled=enabled, console=con) as p:
            p.advance_to(0)
            for s in (1, 2, 3):
                p.start_rollouts(4, "rollouts")
                p.step_done(s, M)
            p.eval_done(3, {"reward_mean": 0.5, "pass_rate": 0.5, "tool_calls_per_traj": 1.0, "latency_s_mean": 0.2})
        lines = buf.getvalue().splitlines()
        assert [ln.split("  ")[0] for ln in lines[:3]] == ["step 1/3", "step 2/3", "step 3/3"], lines
        assert lines[3].startswith("eval @ step 3: reward 0.500")
        assert "━" not in buf.getvalue()  # no bar characters in a log


def test_sft_off_a_terminal_prints_lines():
    buf = io.StringIO()
    with sft_progress("sft", console=Console(file=buf, force_terminal=False, width=300)) as on_step:
        for i in range(1, 41):
            on_step(i, 40, {"loss": 1.0 / i})
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("sft step 1/40  loss 1.000") and lines[-1].startswith("sft step 40/40  loss 0.025")
    assert all("ETA" in ln for ln in lines) and 2 < len(lines) <= 22


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_train_and_sft_commands_print_lines_to_a_pipe(tmp_path, tiny_model):
    files = lt.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=8)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(files["train"]), "tools": ["lookup_task:lookup"],
        "grader": lt.GRADER, "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "group_size": 2, "max_new_tokens": 8, "max_turns": 2,
                            "max_signal_free_steps": 0}}))
    r = _cli("train", str(cfg), "--no-progress")
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stderr.splitlines() if re.match(r"step \d/2  reward \d\.\d{3}", ln)]
    assert len(steps) == 2 and all("sampling" in s and "ETA" in s for s in steps), r.stderr

    sft = tmp_path / "sft.yaml"
    sft.write_text(yaml.safe_dump({"model": str(tiny_model), "demos_file": str(files["demos"]),
                                   "output_dir": str(tmp_path / "warm"),
                                   "hyperparameters": {"epochs": 1, "batch_size": 4}}))
    r = _cli("sft", "--config", str(sft))
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if re.match(r"sft step \d+/\d+  loss \d", ln)]
    assert lines and "ETA" in lines[-1], r.stderr
