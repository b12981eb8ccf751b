"""The store's part of the fine-tuning API (files, jobs, events, leases) on SQLite and on the live PostgreSQL at
127.0.0.1:5432 (database ``test``; each test makes and drops its own schema)."""

from __future__ import annotations

import secrets
import threading
import time

import pytest

from pg_helpers import pg_schema
from agentrft.store import RunStore
from agentrft.types import Trajectory


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
        yield s
        s.close()
        return
    with pg_schema("jobs") as (url, _schema, _conn):
        s = RunStore(url)
        try:
            yield s
        finally:
            s.close()


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


def test_a_job_runs_end_to_end_on_postgres(tiny_model, tmp_path_factory, tmp_path):
    """Server and worker sharing a PostgreSQL store (the multi-machine set-up): a small reinforcement job through
    the API, run by a worker, its metrics events equal to the run's step records."""
    import openai

    import lookup_task as lt
    import serve_helpers as h
    from agentrft.serve.app import create_app
    from agentrft.serve.config import ServeConfig
    from agentrft.serve.job_worker import JobWorker
    from agentrft.serve.server import BackgroundServer
    from agentrft.tools.registry import resolve_python_tool
    from agentrft.tools.server import make_tool_server
    from tool_servers.loopback import run_uvicorn

    with pg_schema("jobs") as (url, _schema, _conn):
        tool = h.tool_model_dir(tiny_model, tmp_path_factory)
        files = lt.write_task(tmp_path / "data", seed=5, n_train=4, n_valid=2, n_demos=2)
        cfg = ServeConfig(model=str(tool), model_name="tool", store=url, slots=2,
                          jobs={"workers": 0, "data_dir": str(tmp_path / "shared"), "poll_s": 0.1})
        app = create_app(cfg)
        with BackgroundServer(app) as srv, \
                run_uvicorn(make_tool_server(resolve_python_tool("lookup_task:lookup"))) as tools_url:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            tr = c.files.create(file=open(files["train"], "rb"), purpose="fine-tune")
            va = c.files.create(file=open(files["valid"], "rb"), purpose="fine-tune")
            job = c.fine_tuning.jobs.create(model="tool", training_file=tr.id, validation_file=va.id, suffix="pg",
                                            method={"type": "reinforcement", "reinforcement": {
                                                "grader": lt.GRADER, "tools": [{"name": "lookup",
                                                                                "server_url": tools_url + "/"}],
                                                "hyperparameters": {"batch_size": 2, "compute_multiplier": 0.5,
                                                                    "eval_interval": 2, "agentrft": {
                                                                        "max_steps": 2, "max_new_tokens": 16,
                                                                        "max_turns": 2}}}})
            JobWorker(url, jobs_cfg=cfg.jobs).serve(once=True)
            job = c.fine_tuning.jobs.retrieve(job.id)
            assert job.status == "succeeded", job.error
            run_id = job.model_extra["agentrft"]["run_id"]
            assert job.fine_tuned_model == f"ft:tool:pg:{run_id}"
            assert job.fine_tuned_model in [m.id for m in c.models.list().data]
            store = app.state.serve.store
            assert not store.is_sqlite
            steps = {(m["step"], m["split"]): m for m in store.step_metrics(run_id)}
            metrics = [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
            assert sorted(e.data["step"] for e in metrics) == [0, 1, 2]
            for e in metrics:
                train = steps.get((e.data["step"], "train"))
                if train is not None:
                    assert e.data["train_mean_reward"] == pytest.approx(train["reward_mean"])
            assert c.files.content(job.result_files[0]).text.startswith("step,split,")
        app.state.serve.close()
