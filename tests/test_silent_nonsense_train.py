"""Runs that cannot learn say so (issue 14, class 2): an unreachable tool server stops the run as failed after
``max_signal_free_steps``; prompts longer than the context are warned about before training, and a run where every
training row is over stops before it starts."""

from __future__ import annotations

import json
import socket

import lookup_task as lt
import pytest

from agentrft.config import RunConfig
from agentrft.policy.sampler import Generation
from agentrft.rl.signal import SignalWatch, step_summary
from agentrft.rl.trainer import TrainingError, train
from agentrft.rollout.stack import RolloutStack
from agentrft.store import RunStore
from agentrft.types import ToolCall, Trajectory, Turn


class CallingSampler:
    """Always calls ``lookup`` (an untrained tiny model rarely writes a well-formed call)."""

    version = "calling"

    def __init__(self, renderer):
        text = '<tool_call>{"name": "lookup", "arguments": {"key": "K1"}}</tool_call>'
        self.ids = renderer.tok(text, add_special_tokens=False)["input_ids"] + [renderer.eos_id]

    def generate(self, prompts, params, generators, limits=None):
        return [Generation(list(self.ids), [-0.5] * len(self.ids), "stop") for _ in prompts]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return port


def _cfg(tmp_path, tiny_model, files, **hp):
    return RunConfig(
        name="sig", model=str(tiny_model), training_file=str(files["train"]), validation_file=None,
        tools=[{"name": "lookup", "server_url": f"http://127.0.0.1:{closed_port()}/"}],
        grader=lt.GRADER, output_dir=str(tmp_path / "runs"), base_dir=str(tmp_path),
        hyperparameters={"max_steps": 6, "batch_size": 2, "group_size": 2, "max_new_tokens": 24, "max_turns": 2,
                         "max_episode_steps": 2, "lora": None, "seed": 0, "tool_timeout_s": 5, **hp})


@pytest.fixture
def calling(monkeypatch):
    real = RolloutStack.attach

    def attach(self, policy, *, model=None, sampler=None, version=None):
        return real(self, policy, model=model, sampler=CallingSampler(policy.renderer), version=version)

    monkeypatch.setattr(RolloutStack, "attach", attach)


class Console:
    def __init__(self):
        self.lines = []

    def print(self, *a, **k):
        self.lines.append(" ".join(str(x) for x in a))


def test_unreachable_tool_server_stops_the_run_as_failed(tmp_path, tiny_model, calling):
    files = lt.write_task(tmp_path / "data", n_train=8, n_valid=1, n_demos=1)
    cfg = _cfg(tmp_path, tiny_model, files, max_signal_free_steps=2)
    console = Console()
    with pytest.raises(TrainingError) as e:
        train(cfg, progress=False, console=console)
    msg = str(e.value)
    assert "no trainable signal for 2 consecutive steps" in msg and "max_signal_free_steps = 2" in msg
    assert "4/4 rollouts dropped" in msg and "tool errors 4/4 calls (100%)" in msg
    assert "first drop reason: tool 'lookup'" in msg
    # said loudly while it happened, once per signal-free step
    assert [ln for ln in console.lines if "[signal] step 1: no trainable signal (1/2" in ln]
    store = RunStore(cfg.store_url, mode="read")
    (run,) = store.list_runs()
    assert run["status"] == "failed"
    assert sorted({t["step"] for t in store.trajectories(run["id"], split="train")}) == [1, 2]  # stopped at 2


def test_zero_disables_the_stop(tmp_path, tiny_model, calling):
    files = lt.write_task(tmp_path / "data", n_train=8, n_valid=1, n_demos=1)
    cfg = _cfg(tmp_path, tiny_model, files, max_signal_free_steps=0, max_steps=2)
    run_id = train(cfg, progress=False)
    assert RunStore(cfg.store_url, mode="read").get_run(run_id)["status"] == "succeeded"


def test_prompts_over_the_context_warn_and_all_over_stops(tmp_path, tiny_model, calling):
    files = lt.write_task(tmp_path / "data", n_train=8, n_valid=1, n_demos=1)
    rows = [json.loads(x) for x in open(files["train"])]
    rows[2]["messages"][-1]["content"] += " pad" * 3000
    rows[5]["messages"][-1]["content"] += " pad" * 3000
    (tmp_path / "data" / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tmp_path, tiny_model, files, max_steps=1, max_signal_free_steps=0)
    cfg.training_file = str(tmp_path / "data" / "long.jsonl")
    console = Console()
    train(cfg, progress=False, console=console)
    warned = [ln for ln in console.lines if "2 of 8 rows have a prompt of at least" in ln]
    assert warned and "max_context_tokens (2048)" in warned[0] and "long.jsonl" in warned[0]
    assert "line 3:" in warned[0]

    allover = [dict(r, messages=[{"role": "user", "content": "x" + " pad" * 3000}]) for r in rows]
    (tmp_path / "data" / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in allover))
    cfg.training_file = str(tmp_path / "data" / "all.jsonl")
    with pytest.raises(TrainingError, match=r"all\.jsonl: 8 of 8 rows have a prompt of at least "
                                            r"hyperparameters\.max_context_tokens"):
        train(cfg, progress=False)


def _traj(reward, *, dropped=False, ok=True):
    t = Trajectory(trace_id="t", row_index=0, reward=reward)
    t.turns = [Turn(index=0, start=0, end=0, text="", tool_calls=[ToolCall("c", "lookup", "{}", status="ok" if ok else "server_error",
                                                            error=None if ok else "connection refused")])]
    if dropped:
        t.outcome, t.drop_reason = "dropped", "tool 'lookup': connection refused"
    return t


def test_signal_watch_counts_consecutive_steps_and_resets():
    w = SignalWatch(3, TrainingError)
    flat = [_traj(0.0), _traj(0.0)]
    assert "1/3" in w.observe(1, flat) and "2/3" in w.observe(2, flat)
    learned = [_traj(1.0), _traj(0.0)]
    learned[0].advantage = 0.5
    assert w.observe(3, learned) is None and w.run == 0  # a step with signal resets the count
    w.observe(4, flat), w.observe(5, flat)
    with pytest.raises(TrainingError, match="no trainable signal for 3 consecutive steps"):
        w.observe(6, flat)
    assert "rewards all 0" in step_summary(flat) and "tool errors 0/2 calls (0%)" in step_summary(flat)
    s = step_summary([_traj(None, dropped=True, ok=False), _traj(0.0)])
    assert "1/2 rollouts dropped" in s and "tool errors 1/2 calls (50%)" in s and "first drop reason" in s


def test_cli_train_without_signal_exits_2_and_says_why(tmp_path, tiny_model):
    """An untrained model earns reward 0 everywhere: `agentrft train` stops after max_signal_free_steps, exit 2."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    files = lt.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(files["train"]), "tools": ["lookup_task:lookup"],
        "grader": lt.GRADER, "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_steps": 5, "batch_size": 2, "group_size": 2, "max_new_tokens": 8, "max_turns": 2,
                            "max_signal_free_steps": 2}}))
    tests = str(Path(__file__).parent)
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "train", str(cfg), "--no-progress"], capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": tests + os.pathsep + os.environ.get("PYTHONPATH", "")})
    said = " ".join(r.stderr.split())
    assert r.returncode == 2, r.stdout + r.stderr
    assert "[signal] step 1: no trainable signal (1/2" in said
    assert "error: no trainable signal for 2 consecutive steps" in said and "rewards all 0" in said
    assert "Traceback" not in r.stderr
    (run,) = RunStore("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"), mode="read").list_runs()
    assert run["status"] == "failed"
