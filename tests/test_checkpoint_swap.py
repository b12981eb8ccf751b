"""The resume checkpoint's swap is crash-safe at every instant: a process SIGKILLed while paused at each point of
``Learner.save`` (``agentrft.policy.checkpoint_io``) leaves a checkpoint that the next resume finds — the newest
complete one — and no half-written or half-deleted directory survives the recovery. Runs that stop sending
heartbeats show as interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

import lookup_task
from agentrft.policy import checkpoint_io
from agentrft.store import RunStore

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"

# after the marker of the new checkpoint is written, the newest complete checkpoint is the new one
NEWEST = {"writing": 1, "written": 2, "moved_old": 2, "replaced": 2, "discarding": 2}

SAVE_SCRIPT = r"""
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from agentrft.policy.learner import Learner
model_dir, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(model_dir)
tok = AutoTokenizer.from_pretrained(model_dir)
learner = Learner(model, lora=None, learning_rate=1e-3)
for step in (1, 2):
    learner.save(out, tok, {"step": step, "cursor": {"epoch": 0, "offset": step}})
print("done")
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
            **extra}


def _wait_for(flag: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 240
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited ({proc.returncode}) before pausing: {proc.stdout.read()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError(f"{what} never reached its pause point")
        time.sleep(0.1)


def _debris(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith((".tmp", ".old")))


@pytest.mark.parametrize("point", checkpoint_io.POINTS)
def test_kill_at_each_point_of_the_swap_keeps_the_newest_complete_checkpoint(tiny_model, tmp_path, point):
    out = tmp_path / "run" / "latest"
    flag = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(tiny_model), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(AGENTRFT_TEST_CHECKPOINT_PAUSE=point, AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE=str(flag),
                                     AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP="2"))
    _wait_for(flag, proc, "the saving process")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    assert checkpoint_io.recover(out) == out
    assert _debris(out.parent) == []  # nothing half-written or half-deleted is left beside it
    assert checkpoint_io.is_complete(out)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == NEWEST[point]
    # and it loads: weights, tokenizer, optimizer and RNG
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.policy.learner import Learner

    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    assert Learner(model, lora=None, learning_rate=1e-3).load_state(out)["step"] == NEWEST[point]


def test_a_kill_in_the_first_save_leaves_nothing_that_looks_like_a_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "run" / "latest"
    flag = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", SAVE_SCRIPT, str(tiny_model), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=_env(AGENTRFT_TEST_CHECKPOINT_PAUSE="writing",
                                     AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE=str(flag), AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP="1"))
    _wait_for(flag, proc, "the saving process")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert (out.parent / "latest.tmp").exists() and not out.exists()
    assert checkpoint_io.recover(out) is None
    assert list(out.parent.iterdir()) == []


def _mk(d: Path, step: int, *, marker: bool = True, legacy_files: bool = True) -> Path:
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    if legacy_files:
        for name in ("optimizer.pt", "rng.pt", "config.json", "model.safetensors"):
            (d / name).write_text("x")
    if marker:
        (d / ".agentrft-checkpoint").touch()
        (d / checkpoint_io.MARKER).write_text(json.dumps({"step": step}))
    return d


@pytest.mark.parametrize("present, expect", [
    ({"latest": 3, "latest.old": 2}, 3),                  # killed while deleting .old (before its marker went)
    ({"latest.old": 2, "latest.tmp": 3}, 3),              # killed between the two renames (the case)
    ({"latest": 2, "latest.tmp": 3}, 3),                  # killed after the marker, before the first rename
    ({"latest": 2, "latest.tmp!": 3}, 2),                 # killed while writing the new one ("!": no marker)
    ({"latest.old": 2, "latest.tmp!": 3}, 2),             # only an unfinished new one beside the old one
    ({"latest": 4, "latest.tmp": 3}, 4),                  # a stale .tmp never wins over a newer checkpoint
])
def test_recover_picks_the_newest_complete_checkpoint(tmp_path, present, expect):
    for name, step in present.items():
        _mk(tmp_path / name.rstrip("!"), step, marker=not name.endswith("!"), legacy_files=not name.endswith("!"))
    out = checkpoint_io.recover(tmp_path / "latest")
    assert out is not None and checkpoint_io.checkpoint_step(out) == expect
    assert _debris(tmp_path) == []


def test_a_checkpoint_from_before_the_marker_still_counts_and_a_half_deleted_one_does_not(tmp_path):
    _mk(tmp_path / "latest", 5, marker=False)  # written by an older version: every file there, no marker
    assert checkpoint_io.is_complete(tmp_path / "latest")
    half = _mk(tmp_path / "other", 6, marker=False)
    (half / "optimizer.pt").unlink()
    assert not checkpoint_io.is_complete(half)
    new = _mk(tmp_path / "new", 7)
    (new / checkpoint_io.MARKER).unlink()  # a new-style directory loses its marker first when it is deleted
    assert not checkpoint_io.is_complete(new)


# ---------------------------------------------------------------------------------------------------------------
# the whole CLI: a training run killed at each point of a `latest` swap resumes after the newest complete step
# ---------------------------------------------------------------------------------------------------------------


def _config(tmp: Path, model: Path, files: dict[str, Path], steps: int) -> Path:
    cfg = {
        "name": "swap-test", "model": str(model), "training_file": str(files["train"]),
        "validation_file": str(files["valid"]), "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER,
        "output_dir": str(tmp / "runs"),
        "hyperparameters": {"max_steps": steps, "batch_size": 2, "group_size": 2, "eval_interval": 10,
                            "eval_samples": 1, "max_new_tokens": 8, "max_turns": 2, "learning_rate": 1e-3, "seed": 3,
                            "keep_checkpoints": 1, "save_interval_s": 0.0,
                            "max_signal_free_steps": 0},  # an untrained model: no reward signal, by design
    }
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _train(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agentrft.cli", "train", *args, "--no-progress"],
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# the case (between the two renames) runs by default; every point of the swap is also covered above by a
# SIGKILLed save, and the whole-CLI run at the other points is in the slow suite (~15 s each)
@pytest.mark.parametrize("point", [p if p == "moved_old" else pytest.param(p, marks=pytest.mark.slow)
                                   for p in checkpoint_io.POINTS])
def test_training_killed_at_each_point_of_the_swap_resumes_from_the_newest_checkpoint(tiny_model, tmp_path, point):
    files = lookup_task.write_task(tmp_path / "data", n_train=8, n_valid=1, n_demos=1)
    cfg = _config(tmp_path, tiny_model, files, steps=3)
    flag = tmp_path / "paused"
    proc = _train(str(cfg), AGENTRFT_TEST_CHECKPOINT_PAUSE=point, AGENTRFT_TEST_CHECKPOINT_PAUSE_FILE=str(flag),
                  AGENTRFT_TEST_CHECKPOINT_PAUSE_STEP="2")
    _wait_for(flag, proc, "agentrft train")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    st = RunStore("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"))
    run_id = st.list_runs()[0]["id"]
    assert [m["step"] for m in st.step_metrics(run_id, split="train")] == [1, 2]  # records flushed before the save
    st.close()

    proc = _train(str(cfg), "--resume", run_id)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    resumed_at = NEWEST[point] + 1
    assert f"resuming {run_id} at step {resumed_at}" in out, out  # never back at step 1 on the base model
    st = RunStore("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"))
    assert st.get_run(run_id)["status"] == "succeeded"
    assert [m["step"] for m in st.step_metrics(run_id, split="train")] == [1, 2, 3]
    trajs = st.trajectories(run_id, split="train")
    assert len(trajs) == 3 * 4 and len({t["trace_id"] for t in trajs}) == len(trajs)
    st.close()
    run_dir = tmp_path / "runs" / run_id
    assert _debris(run_dir) == []
    assert json.loads((run_dir / "latest" / "trainer_state.json").read_text())["step"] == 3


# ---------------------------------------------------------------------------------------------------------------
# heartbeats: a killed run shows as interrupted
# ---------------------------------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=_env(COLUMNS="200"),
                          capture_output=True, text=True, timeout=120)


def test_a_running_run_without_a_recent_heartbeat_is_shown_as_interrupted(tmp_path):
    from agentrft.store import run_store

    url = "sqlite:///" + str(tmp_path / "s.db")
    st = RunStore(url)
    alive, dead, done = (st.create_run(n, {}) for n in ("alive", "dead", "done"))
    for r in (alive, dead, done):
        st.set_status(r, "running")
    st.set_status(done, "succeeded")
    old = run_store.utcnow() - timedelta(seconds=run_store.STALE_AFTER_S + 60)
    st.heartbeat(dead, at=old)
    st.heartbeat(done, at=old)
    by_id = {r["id"]: r for r in st.list_runs()}
    assert [by_id[r]["interrupted"] for r in (alive, dead, done)] == [False, True, False]
    assert by_id[dead]["status"] == "running"  # the stored status is untouched; only what is shown changes
    st.close()

    res = _cli("runs", "--store", url)
    assert res.returncode == 0, res.stderr
    line = {r: next(ln for ln in res.stdout.splitlines() if r in ln) for r in (alive, dead, done)}
    assert "interrupted" in line[dead] and "running" in line[alive] and "succeeded" in line[done]
    res = _cli("show", dead, "--store", url)
    assert res.returncode == 0 and "interrupted" in res.stdout, res.stdout + res.stderr


def test_the_heartbeat_thread_touches_the_run(tmp_path):
    from agentrft.rl.run_lifecycle import Heartbeat
    from agentrft.store import run_store

    st = RunStore("sqlite:///" + str(tmp_path / "s.db"))
    rid = st.create_run("r", {})
    st.set_status(rid, "running")
    old = run_store.utcnow() - timedelta(days=1)
    st.heartbeat(rid, at=old)
    assert st.get_run(rid)["interrupted"]
    beat = Heartbeat(st, rid, interval_s=0.05).start()
    try:
        deadline = time.time() + 60
        while st.get_run(rid)["interrupted"] and time.time() < deadline:
            time.sleep(0.05)
    finally:
        beat.stop()
    assert not st.get_run(rid)["interrupted"]
    st.close()


def test_a_store_from_before_heartbeats_gets_the_column_and_keeps_its_runs(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    st = RunStore("sqlite:///" + str(path))
    rid = st.create_run("old", {})
    st.set_status(rid, "running")
    st.close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE runs DROP COLUMN heartbeat_at")
    con.execute("UPDATE store_meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    st = RunStore("sqlite:///" + str(path))
    run = st.get_run(rid)
    assert run["status"] == "running" and run["heartbeat_at"] is None and not run["interrupted"]
    st.heartbeat(rid)
    assert st.get_run(rid)["heartbeat_at"] is not None
    st.close()


# ---------------------------------------------------------------------------------------------------------------
# a full disk: a clear error, the run recorded failed, no chained traceback
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root with mount rights only): big enough for a run directory, too small for a checkpoint."""
    import shutil as sh

    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not sh.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_fails_the_run_with_a_clear_error(tiny_model, tmp_path, small_disk):
    files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    cfg = yaml.safe_load(_config(tmp_path, tiny_model, files, steps=2).read_text())
    cfg["output_dir"] = str(small_disk / "runs")
    cfg["store"] = "sqlite:///" + str(tmp_path / "store" / "agentrft.db")  # the store itself is on a roomy disk
    cfg["validation_file"] = None
    p = tmp_path / "full.yaml"
    p.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "agentrft.cli", "train", str(p), "--no-progress"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stdout + res.stderr
    said = " ".join(res.stderr.split())
    assert "Traceback" not in said and "No space left on device" in said and "cannot write checkpoint" in said, said
    st = RunStore(cfg["store"], mode="read")
    assert [r["status"] for r in st.list_runs()] == ["failed"]  # not `running` forever
    st.close()
