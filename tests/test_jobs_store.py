"""The store's part of the fine-tuning API (files, jobs, events, leases) on SQLite and on the live PostgreSQL at
127.0.0.1:5432 (database ``test``; each test makes and drops its own schema)."""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from agentrft.store import RunStore
from agentrft.types import Trajectory

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _pg_schema():
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    name = f"jobs_{secrets.token_hex(4)}"
    conn.execute(f"CREATE SCHEMA {name}")
    return conn, name


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
        return
    conn, schema = _pg_schema()
    s = RunStore(f"{PG}?options=-csearch_path%3D{schema}")
    try:
        yield s
    finally:
        s.close()
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()


def test_files(store):
    a = store.add_file("file-a", filename="train.jsonl", purpose="fine-tune", nbytes=10, sha256="ab" * 32, path="/x/a",
                       rows=3, created_at=100.0)
    store.add_file("file-b", filename="r.csv", purpose="fine-tune-results", nbytes=5, sha256="cd" * 32, path="/x/b",
                   created_at=200.0)
    assert a["rows"] == 3 and store.get_file("file-a")["sha256"] == "ab" * 32
    assert [f["id"] for f in store.list_files()] == ["file-b", "file-a"]  # newest first
    assert [f["id"] for f in store.list_files("fine-tune")] == ["file-a"]
    assert store.delete_file("file-a")["path"] == "/x/a"
    assert store.get_file("file-a") is None and store.delete_file("file-a") is None


def test_jobs_list_update_and_events(store):
    for i, team in enumerate(["a", "b", "a"]):
        store.create_job(f"ftjob-{i}", status="queued", model="m", metadata={"team": team}, created_at=10.0 + i)
    jobs, more = store.list_jobs(limit=2)
    assert [j["id"] for j in jobs] == ["ftjob-2", "ftjob-1"] and more
    jobs, more = store.list_jobs(after="ftjob-1", limit=2)
    assert [j["id"] for j in jobs] == ["ftjob-0"] and not more
    assert [j["id"] for j in store.list_jobs(metadata={"team": "a"})[0]] == ["ftjob-2", "ftjob-0"]
    assert store.update_job("ftjob-0", expect_status=("queued",), status="paused")
    assert not store.update_job("ftjob-0", expect_status=("queued",), status="running")  # it is paused now
    assert store.get_job("ftjob-0")["status"] == "paused"
    store.add_job_event("ftjob-0", "one")
    store.add_job_event("ftjob-0", "two", level="warn", data={"k": [1, 2]})
    ev = store.job_events("ftjob-0")
    assert [(e["message"], e["level"]) for e in ev] == [("one", "info"), ("two", "warn")] and ev[1]["data"] == {"k": [1, 2]}
    assert ev[0]["seq"] < ev[1]["seq"]


def test_a_job_is_claimed_by_one_worker_only(store):
    for i in range(5):
        store.create_job(f"ftjob-{i}", status="queued", created_at=float(i))
    store.create_job("ftjob-paused", status="paused", created_at=0.5)
    store.create_job("ftjob-done", status="succeeded", created_at=0.6)
    got: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            j = store.claim_job(name, lease_s=60)
            if j is None:
                return
            with lock:
                got.setdefault(j["id"], []).append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [f"ftjob-{i}" for i in range(5)]  # paused and finished jobs are not taken
    assert all(len(v) == 1 for v in got.values()), got  # never two workers on one job
    for job_id, (owner,) in got.items():
        j = store.get_job(job_id)
        assert j["lease_owner"] == owner and j["attempts"] == 1


def test_an_expired_lease_is_taken_over_and_the_old_worker_loses_it(store):
    store.create_job("ftjob-x", status="queued", created_at=1.0)
    j = store.claim_job("old", lease_s=60)
    assert j["id"] == "ftjob-x"
    assert store.claim_job("new", lease_s=60) is None  # held
    assert store.renew_lease("ftjob-x", "old", 60) and not store.renew_lease("ftjob-x", "new", 60)
    store.update_job("ftjob-x", owner="old", status="running")
    # the old worker dies: no heartbeat; once the lease is past, a new worker takes the running job (to resume it)
    later = time.time() + 120
    j = store.claim_job("new", lease_s=60, now=later)
    assert j is not None and j["status"] == "running" and j["lease_owner"] == "new" and j["attempts"] == 2
    assert not store.renew_lease("ftjob-x", "old", 60)  # the old worker, if it comes back, sees it lost the job
    assert not store.update_job("ftjob-x", owner="old", status="failed")
    store.release_lease("ftjob-x", "old")  # not its lease: nothing happens
    assert store.get_job("ftjob-x")["lease_owner"] == "new"
    store.release_lease("ftjob-x", "new")
    assert store.get_job("ftjob-x")["lease_owner"] is None


def test_step_records_and_trained_tokens(store):
    run = store.create_run("r", {})
    t = Trajectory(trace_id=f"t-{secrets.token_hex(4)}", row_index=0, token_ids=list(range(30)))
    v = Trajectory(trace_id=f"v-{secrets.token_hex(4)}", row_index=0, token_ids=list(range(7)))
    store.record_step(run, 1, "train", {"reward_mean": 0.5}, [t])
    store.record_step(run, 1, "valid", {"reward_mean": 0.25}, [v])
    recs = store.step_records(run)
    assert [(r["step"], r["split"], r["metrics"]["reward_mean"]) for r in recs] == [(1, "train", 0.5), (1, "valid", 0.25)]
    assert all(abs(r["created_at"] - time.time()) < 3600 for r in recs)
    assert store.trained_tokens(run) == 30  # training trajectories only
