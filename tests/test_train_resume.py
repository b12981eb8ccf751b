"""A training run killed mid-way (SIGKILL, a real subprocess) resumes and finishes with every step's
trajectories recorded exactly once."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import lookup_task
from agentrft.store import RunStore

TESTS = Path(__file__).parent


def _config(tmp: Path, model: Path, files: dict[str, Path], steps: int, save_interval_s: float = 0.0) -> Path:
    cfg = {
        "name": "resume-test",
        "model": str(model),
        "training_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "tools": ["lookup_task:lookup"],
        "grader": lookup_task.GRADER,
        "output_dir": str(tmp / "runs"),
        "hyperparameters": {
            "max_steps": steps, "batch_size": 2, "group_size": 2, "eval_interval": 3, "eval_samples": 1,
            "max_new_tokens": 12, "max_turns": 2, "learning_rate": 1e-3, "seed": 3, "keep_checkpoints": 2,
            "save_interval_s": save_interval_s,  # 0: `latest` after every step, so the kill lands between saves
            "max_signal_free_steps": 0,  # an untrained model earns no reward: keep running anyway (resume is tested)
        },
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _agentrft(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "agentrft.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_kill_and_resume(tiny_model, tmp_path):
    files = lookup_task.write_task(tmp_path / "data", n_train=8, n_valid=3, n_demos=1)
    cfg = _config(tmp_path, tiny_model, files, steps=6)
    store_url = "sqlite:///" + str(tmp_path / "runs" / "agentrft.db")

    # the kill lands at a known moment, whatever the machine's speed: the run waits (the checkpoint writer's test
    # hook) when it starts writing step 4's `latest`, after step 4's records are in the store — so `latest` holds
    # step 3 and the resume must delete step 4's records and run it again
    paused = tmp_path / "paused"
    proc = _agentrft("train", str(cfg), "--no-progress", env={
        "AGENTRFT_TEST_CHECKPOINT_PAUSE": "writing", "AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP": "4",
        "AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE": str(paused)})
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not paused.exists():
        time.sleep(0.2)
    assert paused.exists(), "the run never reached step 4's save: " + (proc.stdout.read() if proc.poll() is not None else "")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    st = RunStore(store_url)
    run_id = st.list_runs()[0]["id"]
    before = {m["step"] for m in st.step_metrics(run_id, split="train")}
    assert before == {1, 2, 3, 4}
    st.close()

    proc = _agentrft("train", str(cfg), "--no-progress", "--resume", run_id[:12])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"resuming {run_id} at step 4 (removed " in out  # step 4 came after `latest`: deleted, run again

    st = RunStore(store_url)
    assert st.get_run(run_id)["status"] == "succeeded"
    assert [m["step"] for m in st.step_metrics(run_id, split="train")] == [1, 2, 3, 4, 5, 6]
    assert [m["step"] for m in st.step_metrics(run_id, split="valid")] == [0, 3, 6]
    trajs = st.trajectories(run_id)
    assert len({t["trace_id"] for t in trajs}) == len(trajs)
    per_step: dict[tuple[str, int], list] = {}
    for t in trajs:
        per_step.setdefault((t["split"], t["step"]), []).append((t["row_index"], t["sample_index"], t["group_id"]))
    for step in range(1, 7):
        keys = per_step[("train", step)]
        assert len(keys) == 4 and len(set(keys)) == 4  # batch 2 × group 2, none duplicated, none missing
    for step in (0, 3, 6):
        assert len(per_step[("valid", step)]) == 3
    state = json.loads((tmp_path / "runs" / run_id / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 6
    kept = [c for c in st.checkpoints(run_id) if c["kept"]]
    assert len(kept) == 2 and all(Path(c["path"]).exists() for c in kept)


@pytest.mark.parametrize("interval, saved", [(0.0, [1, 2, 3, 4, 5]), (3600.0, [2, 4, 5])])
def test_latest_is_saved_after_evals_at_the_end_and_by_interval(tiny_model, tmp_path, monkeypatch, interval, saved):
    """``latest`` is written after each eval and at the end; between them only once ``save_interval_s`` passed."""
    from agentrft.config import load_config
    from agentrft.rl.trainer import Trainer, train

    files = lookup_task.write_task(tmp_path / "data", n_train=8, n_valid=2, n_demos=1)
    cfg = load_config(_config(tmp_path, tiny_model, files, steps=5, save_interval_s=interval))
    cfg.hyperparameters.eval_interval = 2
    steps: list[int] = []
    frozen: list[int] = []
    orig = Trainer._save_latest

    def spy(self, step: int) -> None:
        steps.append(step)
        frozen.append(gc.get_freeze_count())  # agentrft.heap: the loaded model etc. are out of the collector's way
        orig(self, step)

    monkeypatch.setattr(Trainer, "_save_latest", spy)
    run_id = train(cfg, progress=False)
    assert steps == saved
    assert min(frozen) > 10_000 and gc.get_freeze_count() == 0
    state = json.loads((tmp_path / "runs" / run_id / "latest" / "trainer_state.json").read_text())
    assert state["step"] == 5


def test_a_failed_background_step_record_fails_the_run(tiny_model, tmp_path, monkeypatch):
    """Train-step records are written by a background thread; a write that fails fails the run (at the latest
    when the next step's record is handed over), with the original error, and nothing after it is recorded."""
    from agentrft.config import load_config
    from agentrft.rl.trainer import train
    from agentrft.store import RunStore as Store

    files = lookup_task.write_task(tmp_path / "data", n_train=8, n_valid=2, n_demos=1)
    cfg = load_config(_config(tmp_path, tiny_model, files, steps=5, save_interval_s=3600.0))
    orig = Store.record_step
    threads: set[str] = set()

    def flaky(self, run_id, step, split, metrics, trajs):  # noqa: ANN001
        if split == "train":
            threads.add(threading.current_thread().name)
            if step == 2:
                raise OSError("disk full")
        return orig(self, run_id, step, split, metrics, trajs)

    monkeypatch.setattr(Store, "record_step", flaky)
    with pytest.raises(OSError, match="disk full"):
        train(cfg, progress=False)
    st = Store("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"))
    run = st.list_runs()[0]
    assert run["status"] == "failed"
    assert [m["step"] for m in st.step_metrics(run["id"], split="train")] == [1]
    assert threads and all(t.startswith("agentrft-store") for t in threads)
    st.close()
