"""The run store on real SQLite files: round-trips, idempotent steps, resume, threads, and SIGKILL mid-write."""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
import threading
import time

import numpy as np
import pytest

from agentrft.store import AmbiguousRunId, RunNotFound, RunStore, StoreError
from agentrft.types import Grade, ToolCall, Trajectory, Turn, new_call_id, new_trace_id

UNICODE = "Grüße — 你好 — مرحبا — 🚀 \u2028 \"quoted\" \\ back"


def make_traj(row: int, sample: int = 0, n_calls: int = 2, *, step_tag: str = "", reward: float = 0.5) -> Trajectory:
    calls = [ToolCall(call_id=new_call_id(), name=f"tool_{k % 2}", arguments='{"q": "%s"}' % k, turn_index=k,
                      output=f"out {k} {UNICODE}{step_tag}", status="ok" if k % 3 else "error",
                      error=None if k % 3 else "boom", latency_s=0.01 * k, retries=k % 2,
                      meta={"approval": "approved" if k else {"decision": "auto"}, "nested": {"k": [k, UNICODE]}})
             for k in range(n_calls)]
    turns = [Turn(index=k, start=10 + k * 5, end=14 + k * 5, text=f"turn {k}", tool_calls=[c])
             for k, c in enumerate(calls)]
    turns.append(Turn(index=n_calls, start=100, end=103, text="final", parse_error=None))
    return Trajectory(
        trace_id=new_trace_id(), row_index=row, group_id=f"g{row}", sample_index=sample,
        messages=[{"role": "user", "content": UNICODE}, {"role": "assistant", "content": f"done {step_tag}"}],
        token_ids=list(range(120)), loss_mask=[0] * 100 + [1] * 20, logprobs=[0.0] * 120, prompt_len=90,
        turns=turns, reward=reward, advantage=reward - 0.25, latency_s=1.5, tool_time_s=0.2,
        checkpoint_id="ckpt-0",
        grades=[Grade("exact", "string_check", "v-abc", 1.0, passed=True),
                Grade("judge", "score_model", "v-def", 0.25, errors={"model_grader_parse_error": True},
                      sub_rewards={"a": 0.5}, turn_scores=[0.1, 0.2], metadata={"why": UNICODE},
                      execution_time_s=0.3)],
    )


@pytest.fixture
def store(tmp_path):
    s = RunStore.for_path(tmp_path / "deep" / "dir" / "agentrft.db")
    yield s
    s.close()


def test_sqlite_file_is_wal_with_foreign_keys_and_busy_timeout(tmp_path, store):
    assert (tmp_path / "deep" / "dir" / "agentrft.db").exists()
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("foreign_keys") == 1
    assert store.pragma("busy_timeout") == 30000
    store.create_run("x", {})
    # an independent connection sees WAL too (the mode is stored in the file, not per connection)
    con = sqlite3.connect(tmp_path / "deep" / "dir" / "agentrft.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= {
        "runs", "steps", "trajectories", "tool_calls", "grades", "checkpoints", "registry", "audits"}
    con.close()
    # a plain path is a SQLite file too
    other = RunStore(str(tmp_path / "plain.db"))
    assert other.pragma("journal_mode") == "wal"
    other.close()


def test_write_transactions_take_the_lock_up_front(tmp_path, store):
    """BEGIN IMMEDIATE: once a write transaction has read anything, another writer cannot even begin."""
    from agentrft.store.schema import Run

    with store._write() as s:
        assert s.get(Run, "run-none") is None  # a read only; a deferred BEGIN would not hold the write lock yet
        con = sqlite3.connect(tmp_path / "deep" / "dir" / "agentrft.db", timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            con.execute("BEGIN IMMEDIATE")
        con.close()
    with store._read() as s:  # readers do not take it
        assert s.get(Run, "run-none") is None
        con = sqlite3.connect(tmp_path / "deep" / "dir" / "agentrft.db", timeout=0, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        con.close()


def test_runs_ids_prefix_and_listing(store):
    a = store.create_run("first", {"lr": 1e-5, "name": UNICODE}, base_model="tiny", output_dir="/tmp/o")
    time.sleep(1.05)  # ids carry the second they were made in
    b = store.create_run("second", {})
    assert re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", a) and a < b
    run = store.get_run(a)
    assert run["config"] == {"lr": 1e-5, "name": UNICODE} and run["status"] == "queued"
    assert run["base_model"] == "tiny" and run["output_dir"] == "/tmp/o" and run["latest_step"] is None
    assert store.get_run(a[:-2])["id"] == a  # a unique prefix
    assert store.get_run("run-1999") is None
    with pytest.raises(AmbiguousRunId, match="matches several runs"):
        store.get_run("run-")
    store.set_status(a, "running")
    assert store.get_run(a)["status"] == "running"
    with pytest.raises(ValueError, match="unknown run status 'bogus'"):
        store.set_status(a, "bogus")
    with pytest.raises(RunNotFound):
        store.set_status("run-nope", "failed")

    store.record_step(a, 1, "train", {"reward_mean": 0.1}, [])
    store.record_step(a, 2, "valid", {"valid_reward_mean": 0.4}, [])
    store.record_step(a, 4, "valid", {"valid_reward_mean": 0.3}, [])
    store.record_step(b, 1, "train", {}, [])
    runs = store.list_runs()
    assert [r["id"] for r in runs] == [b, a]  # newest first
    assert runs[1]["latest_step"] == 4 and runs[1]["best_valid_reward"] == 0.4  # from valid metrics
    assert runs[0]["latest_step"] == 1 and runs[0]["best_valid_reward"] is None
    store.record_checkpoint(a, "ckpt-a2", 2, "/ck/2", {"x": 1}, 0.35)
    assert store.get_run(a)["best_valid_reward"] == 0.35  # checkpoints, when there are any, are the source


def test_record_step_round_trip(store):
    run = store.create_run("r", {})
    t1, t2 = make_traj(0, 0, n_calls=3), make_traj(1, 1, n_calls=0)
    t2.outcome, t2.drop_reason, t2.reward = "dropped", "tool server 503 after 3 retries", None
    metrics = {"train_reward_mean": 0.5, "per_grader": {"exact": {"mean": 1.0}}, "note": UNICODE,
               "np_float": np.float32(0.25), "np_int": np.int64(7), "arr": np.arange(3), "nan": float("nan"),
               "bytes": b"ok\xff", "obj": ValueError("x")}
    store.record_step(run, 3, "train", metrics, [t1, t2])

    (m,) = store.step_metrics(run)
    assert m["step"] == 3 and m["split"] == "train" and m["note"] == UNICODE
    assert m["np_float"] == 0.25 and m["np_int"] == 7 and m["arr"] == [0, 1, 2] and math.isnan(m["nan"])
    assert m["bytes"] == "ok\\xff" and m["obj"].startswith("<ValueError: ")
    rows = store.trajectories(run)
    assert [r["trace_id"] for r in rows] == [t1.trace_id, t2.trace_id]
    r1 = store.trajectory(t1.trace_id)
    assert r1 == rows[0]
    assert r1["messages"] == t1.messages and r1["messages"][0]["content"] == UNICODE
    assert (r1["prompt_tokens"], r1["completion_tokens"], r1["total_tokens"]) == (90, 20, 120)
    assert (r1["num_turns"], r1["num_tool_calls"], r1["tool_errors"]) == (4, 3, 1)
    assert r1["reward"] == 0.5 and r1["advantage"] == 0.25 and r1["checkpoint_id"] == "ckpt-0"
    assert r1["group_id"] == "g0" and r1["split"] == "train" and r1["step"] == 3
    assert [u["tool_call_ids"] for u in r1["turns"]] == [[c.call_id] for c in t1.tool_calls] + [[]]
    calls = r1["tool_calls"]
    assert [c["seq"] for c in calls] == [0, 1, 2]
    for c, orig in zip(calls, t1.tool_calls):
        assert (c["call_id"], c["name"], c["arguments"], c["output"]) == (orig.call_id, orig.name, orig.arguments,
                                                                          orig.output)
        assert c["output_sha256"] == hashlib.sha256(orig.output.encode()).hexdigest()
        assert c["output_bytes"] == len(orig.output.encode()) and c["meta"] == orig.meta
        assert (c["status"], c["error"], c["retries"]) == (orig.status, orig.error, orig.retries)
    assert [c["approval"] for c in calls] == ["auto", "approved", "approved"]
    g = {x["grader_name"]: x for x in r1["grades"]}
    assert g["exact"]["passed"] is True and g["exact"]["version"] == "v-abc" and g["exact"]["score"] == 1.0
    assert g["judge"]["errors"] == {"model_grader_parse_error": True} and g["judge"]["turn_scores"] == [0.1, 0.2]
    assert g["judge"]["metadata"] == {"why": UNICODE} and g["judge"]["sub_rewards"] == {"a": 0.5}
    r2 = rows[1]
    assert r2["outcome"] == "dropped" and r2["reward"] is None and r2["tool_calls"] == [] and len(r2["grades"]) == 2
    # the audit query, and counts
    audit = store.tool_calls(run_id=run)
    assert [c["call_id"] for c in audit] == [c.call_id for c in t1.tool_calls] and audit[0]["step"] == 3
    assert store.tool_calls(trace_id=t2.trace_id) == []
    with pytest.raises(ValueError):
        store.tool_calls()
    assert store.count_trajectories(run) == 2 and store.count_trajectories(run, "valid") == 0


def test_the_stores_converter_gives_back_the_trajectory_it_recorded(store_url):
    """One trajectory shape above the store: ``trajectory_from_record`` rebuilds what was recorded (all but the token
    ids and log-probs, which are not stored), so a comparison reads a stored rollout as it read the live one."""
    from dataclasses import asdict

    from agentrft.evals.compare import traj_view
    from agentrft.store.records import trajectory_from_record

    store = RunStore(store_url)
    run = store.create_run("r", {})
    t1, t2 = make_traj(0, 0, n_calls=3), make_traj(1, 1, n_calls=0)
    t1.turns[1].finish_reason, t1.turns[1].parse_error, t1.turns[1].gen_latency_s = "length", "bad JSON", 0.125
    t2.outcome, t2.drop_reason, t2.reward = "dropped", "tool server 503 after 3 retries", None
    store.record_step(run, 3, "train", {}, [t1, t2])
    records = store.trajectories(run)
    store.close()

    assert [r["trace_id"] for r in records] == [t1.trace_id, t2.trace_id]
    for orig, rec in zip((t1, t2), records):
        back = trajectory_from_record(rec)
        got, want = asdict(back), asdict(orig)
        for d in (got, want):
            for key in ("token_ids", "loss_mask", "logprobs"):
                d.pop(key)
            for g in d["grades"]:
                g.pop("execution_time_s")  # timing of the grader, kept in metrics, not per grade
        assert got == want
        assert back.completion_tokens == orig.completion_tokens and back.tool_errors == orig.tool_errors
        assert traj_view(rec) == traj_view(orig)


def test_record_step_is_idempotent_and_errors_write_nothing(store):
    run = store.create_run("r", {})
    store.record_step(run, 1, "train", {"v": 1}, [make_traj(i) for i in range(4)])
    store.record_step(run, 1, "valid", {"v": 9}, [make_traj(0)])
    again = [make_traj(i, n_calls=1) for i in range(3)]
    store.record_step(run, 1, "train", {"v": 2}, again)  # a resumed run records step 1 again
    assert store.count_trajectories(run, "train") == 3 and store.count_trajectories(run, "valid") == 1
    assert [m["v"] for m in store.step_metrics(run)] == [2, 9]
    assert store.step_metrics(run, "valid") == [{"v": 9, "step": 1, "split": "valid"}]
    assert len(store.tool_calls(run_id=run)) == 3 + 2  # old calls of step 1/train are gone
    store.record_step(run, 1, "train", {"v": 2}, again)  # a retried write of the very same trajectories
    assert store.count_trajectories(run, "train") == 3 and len(store.tool_calls(run_id=run)) == 5
    # a trace id already stored under another step: a clear error, and nothing of the step is written
    with pytest.raises(StoreError, match=f"{again[0].trace_id} is already stored under run {run}, step 1"):
        store.record_step(run, 2, "train", {"v": 3}, [make_traj(9), again[0]])
    assert [m["step"] for m in store.step_metrics(run)] == [1, 1]
    assert store.count_trajectories(run) == 4
    dup = make_traj(5)
    with pytest.raises(StoreError, match="repeated"):
        store.record_step(run, 2, "train", {}, [dup, dup])
    with pytest.raises(RunNotFound):
        store.record_step("run-nope", 1, "train", {}, [])
    with pytest.raises(ValueError, match="unknown split 'eval'"):
        store.record_step(run, 1, "eval", {}, [])
    store.record_step(run, 1, "eval:heldout", {"x": 1}, [make_traj(0)])
    assert store.trajectories(run, split="eval:heldout")[0]["split"] == "eval:heldout"


def test_delete_after_and_checkpoints(store):
    run = store.create_run("r", {})
    for step in range(1, 5):
        store.record_step(run, step, "train", {"s": step}, [make_traj(0, n_calls=2), make_traj(1, n_calls=1)])
        store.record_checkpoint(run, f"{run}-ck{step}", step, f"/ck/{step}", {"s": step}, 0.1 * step, kept=step > 2)
    other = store.create_run("other", {})
    store.record_step(other, 9, "train", {}, [make_traj(0)])
    # step 4 and 3 go: per step 1 metrics row, 2 trajectories, 3 tool calls, 4 grades, 1 checkpoint = 11
    assert store.delete_after(run, 2) == 22
    assert [m["step"] for m in store.step_metrics(run)] == [1, 2]
    assert {t["step"] for t in store.trajectories(run)} == {1, 2}
    assert [c["step"] for c in store.checkpoints(run)] == [1, 2]
    assert store.count_trajectories(other) == 1  # other runs untouched
    assert store.delete_after(run, 2) == 0
    ck = store.checkpoints(run)
    assert [c["kept"] for c in ck] == [False, False] and ck[0]["val_reward"] == pytest.approx(0.1)
    store.set_checkpoint_kept(f"{run}-ck1", True)
    store.record_checkpoint(run, f"{run}-ck2", 2, "/ck/2b", {"s": 22}, None)  # same id: replaced
    ck = store.checkpoints(run)
    assert ck[0]["kept"] is True and ck[1]["path"] == "/ck/2b" and ck[1]["val_reward"] is None
    with pytest.raises(StoreError, match="no checkpoint"):
        store.set_checkpoint_kept("nope", False)
    with pytest.raises(StoreError, match="already belongs"):
        store.record_checkpoint(other, f"{run}-ck1", 1, "/x", {}, None)
    assert store.add_audit(ck[0]["id"], "ok", reviewer="me", note=UNICODE) >= 1
    assert store.audits(ck[0]["id"])[0]["note"] == UNICODE


def test_two_threads_write_and_read(tmp_path):
    """The lead records steps from a background thread while the main thread reads and writes checkpoints."""
    store = RunStore.for_path(tmp_path / "threads.db", busy_timeout_s=20)
    run = store.create_run("r", {})
    errors: list[BaseException] = []

    def writer():
        try:
            for step in range(25):
                store.record_step(run, step, "train", {"step": step}, [make_traj(i, n_calls=2) for i in range(8)])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=writer)
    th.start()
    seen = 0
    while th.is_alive():
        for r in store.trajectories(run, limit=50):
            assert len(r["tool_calls"]) == 2 and len(r["grades"]) == 2  # a reader never sees half a trajectory
        n = store.count_trajectories(run)
        assert n % 8 == 0 and n >= seen  # nor half a step
        seen = n
        store.record_checkpoint(run, f"ck-{seen}", seen, "/p", {}, None)
    th.join()
    assert not errors, errors
    assert store.count_trajectories(run) == 200 and len(store.step_metrics(run)) == 25
    store.close()


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import make_traj
    from agentrft.store import RunStore

    store = RunStore.for_path(sys.argv[1], busy_timeout_s=30)
    run = store.create_run(sys.argv[2], {{}})
    for step in range(15):
        store.record_step(run, step, "train", {{"n": 6}}, [make_traj(i) for i in range(6)])
        store.record_checkpoint(run, run + "-" + str(step), step, "/p", {{}}, 0.1)
    print(run)
""")


def test_two_processes_write_one_file(tmp_path):
    """Training and an evaluation process writing to the same SQLite file at once: both finish, nothing lost."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=os.path.dirname(__file__)))
    db = tmp_path / "shared.db"
    RunStore.for_path(db).close()
    procs = [subprocess.Popen([sys.executable, str(script), str(db), name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in ("train", "eval")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    store = RunStore.for_path(db)
    for out, _ in outs:
        run = out.strip()
        assert store.count_trajectories(run) == 90 and len(store.checkpoints(run)) == 15
    store.close()


def test_in_memory_store_is_shared_across_threads():
    store = RunStore("sqlite://")
    run = store.create_run("mem", {})
    th = threading.Thread(target=store.record_step, args=(run, 0, "train", {}, [make_traj(0)]))
    th.start()
    th.join()
    assert store.count_trajectories(run) == 1


CHILD = textwrap.dedent("""
    import sys, time
    from sqlalchemy import event
    sys.path.insert(0, {tests!r})
    from test_store import make_traj
    from agentrft.store import RunStore

    db, run, start, hang_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = RunStore.for_path(db)
    current = [None]

    @event.listens_for(store.engine, "before_cursor_execute")
    def hang(conn, cursor, statement, parameters, context, executemany):
        # the step's last insert (its grades) is about to run: everything else of the step has been sent
        if current[0] == hang_at and statement.startswith("INSERT INTO grades"):
            print(f"hanging {{hang_at}}", flush=True)
            time.sleep(60)

    step = start
    while True:
        current[0] = step
        print(f"begin {{step}}", flush=True)
        n = 30 + step % 7
        store.record_step(run, step, "train", {{"n": n, "calls": n * 3}},
                          [make_traj(i, n_calls=3, step_tag=str(step)) for i in range(n)])
        print(f"done {{step}}", flush=True)
        step += 1
""")


def _run_child(tmp_path, db, run, start, hang_at, kill_after_begin=None, rng=None):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__)))
    proc = subprocess.Popen([sys.executable, str(script), str(db), run, str(start), str(hang_at)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("hanging"):
                break
            if kill_after_begin is not None and line.startswith(f"begin {kill_after_begin}"):
                time.sleep(rng.uniform(0.0, 0.08))  # somewhere inside the step's transaction, or just after it
                break
        else:
            pytest.fail(f"child ended early: {proc.stderr.read()}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _assert_steps_complete(store, run):
    steps = store.step_metrics(run)
    for m in steps:
        trajs = store.trajectories(run, step=m["step"])
        assert len(trajs) == m["n"], f"step {m['step']} is partial"
        assert sum(len(t["tool_calls"]) for t in trajs) == m["calls"]
        assert all(len(t["grades"]) == 2 and t["messages"][1]["content"] == f"done {m['step']}" for t in trajs)
    # no trajectory without its step row
    assert {t["step"] for t in store.trajectories(run)} == {m["step"] for m in steps}
    return [m["step"] for m in steps]


def test_sigkill_mid_write_leaves_whole_steps_and_resume_works(tmp_path):
    db = tmp_path / "kill.db"
    store = RunStore.for_path(db)
    run = store.create_run("killed", {})
    store.close()

    # 1. killed deterministically inside the transaction of step 3, before its last insert
    _run_child(tmp_path, db, run, 0, hang_at=3)
    store = RunStore.for_path(db)
    assert store.pragma("integrity_check") == "ok"
    assert _assert_steps_complete(store, run) == [0, 1, 2]

    # 2. resume from a checkpoint at step 1: drop what came after, then record on; killed at random moments
    assert store.delete_after(run, 1) > 0
    assert _assert_steps_complete(store, run) == [0, 1]
    store.close()
    rng = random.Random(1234)
    start = 2
    for _ in range(3):
        _run_child(tmp_path, db, run, start, hang_at=-1, kill_after_begin=start + 1, rng=rng)
        store = RunStore.for_path(db)
        assert store.pragma("integrity_check") == "ok"
        steps = _assert_steps_complete(store, run)
        assert steps == list(range(len(steps))) and len(steps) >= start + 1  # contiguous, nothing lost
        start = steps[-1] + 1
        store.close()


# ---------------------------------------------------------------------------------------------------------------
# Postgres: the same store by URL, on a private throwaway cluster (slow: initdb takes seconds)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_url(tmp_path):
    import shutil
    import socket

    pytest.importorskip("psycopg")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no Postgres server binaries (initdb, pg_ctl)")
    import tempfile

    as_user: list[str] = []
    top = tempfile.mkdtemp(prefix="agentrft-pg-")  # pytest's tmp_path is private to its user; Postgres runs as another
    data = Path(top) / "pg"
    data.mkdir()
    if os.geteuid() == 0:  # Postgres refuses to run as root
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        os.chmod(top, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "agentrft", "--no-sync"],
                   check=True, capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={data} -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-w", "-l", str(data / "log"), "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://agentrft@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.slow
def test_postgres_by_url(postgres_url):
    store = RunStore(postgres_url)
    assert not store.is_sqlite
    a = store.create_run("pg", {"note": UNICODE})
    b = store.create_run("pg2", {})
    assert store.get_run(a[:-1])["id"] == a  # prefix lookup (LIKE with escapes) works on Postgres too
    t = make_traj(0, n_calls=3)
    store.record_step(a, 1, "train", {"m": 0.5, "nan": float("nan"), "np": np.float32(0.5)}, [t, make_traj(1)])
    store.record_step(a, 1, "train", {"m": 0.6}, [make_traj(0), make_traj(1), make_traj(2)])
    store.record_step(a, 2, "valid", {"valid_reward_mean": 0.7, "inf": float("inf")}, [make_traj(0)])
    assert store.count_trajectories(a) == 4 and store.count_trajectories(b) == 0
    assert store.step_metrics(a, "valid") == [{"valid_reward_mean": 0.7, "inf": "Infinity", "step": 2, "split": "valid"}]
    row = store.trajectories(a, step=2)[0]
    assert row["messages"][0]["content"] == UNICODE and len(row["tool_calls"]) == 2 and len(row["grades"]) == 2
    assert row["grades"][0]["passed"] is True
    with pytest.raises(StoreError, match="already stored"):
        store.record_step(a, 3, "train", {}, [make_traj(5), make_traj(6)] + [
            Trajectory(trace_id=row["trace_id"], row_index=0)])
    assert [m["step"] for m in store.step_metrics(a)] == [1, 2]
    store.record_checkpoint(a, "ck", 2, "/p", {}, 0.65)
    assert store.list_runs()[1]["best_valid_reward"] == 0.65
    assert store.delete_after(a, 1) == 1 + 1 + 2 + 2 + 1

    def writer(run):
        for step in range(5):
            store.record_step(run, step, "train", {}, [make_traj(i) for i in range(4)])

    threads = [threading.Thread(target=writer, args=(r,)) for r in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert store.count_trajectories(b) == 20
    store.close()
