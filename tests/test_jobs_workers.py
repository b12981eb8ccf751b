"""Job workers as separate `agentrft worker` processes sharing the server's store (issue 16): pause and resume, a
worker SIGKILLed mid-job and the server restarted — the next worker takes the job over when its lease expires and
resumes it from its last checkpoint with no step, event or trajectory twice — and cancel."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import openai
import pytest
import yaml

import lookup_task as lt
import serve_helpers as h
from agentrft.store import RunStore
from agentrft.tools.registry import resolve_python_tool
from agentrft.tools.server import make_tool_server
from test_jobs_e2e import TOKEN, all_events, env, free_port, start_server, stop, wait_for
from tool_servers.loopback import run_uvicorn


def start_worker(config) -> subprocess.Popen:
    log = open(config.parent / "workers.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "agentrft.cli", "worker", "--config", str(config)], env=env(),
                            stdout=log, stderr=subprocess.STDOUT)


def wait_until(pred, what: str, limit_s: float = 300):
    deadline = time.monotonic() + limit_s
    while not pred():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.3)


def train_steps(store: RunStore, run_id: str) -> list[int]:
    return [r["step"] for r in store.step_records(run_id) if r["split"] == "train"]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-workers")
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    files = lt.write_task(root / "data", seed=3, n_train=8, n_valid=2, n_demos=4)
    store = f"sqlite:///{root / 'store.db'}"
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump({"model": str(tool), "model_name": "tool", "store": store, "slots": 4,
                                      "jobs": {"workers": 0, "lease_s": 2, "poll_s": 0.3}}))
    with run_uvicorn(make_tool_server(resolve_python_tool("lookup_task:lookup"))) as tools_url:
        yield {"root": root, "files": files, "store": store, "config": config, "tools_url": tools_url}


def _create(client, files, tools_url, steps: int, **extra):
    train = client.files.create(file=open(files["train"], "rb"), purpose="fine-tune")
    valid = client.files.create(file=open(files["valid"], "rb"), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model="tool", training_file=train.id, validation_file=valid.id, method={
        "type": "reinforcement", "reinforcement": {
            "grader": lt.GRADER_SHAPED, "tools": [{"name": "lookup", "server_url": tools_url + "/"}],
            "hyperparameters": {"batch_size": 2, "eval_interval": 2, "compute_multiplier": 0.5,
                                "agentrft": {"max_steps": steps, "max_new_tokens": 16, "max_turns": 3,
                                             "save_interval_s": 0,
                                             # an untrained tiny model may earn no reward 3 steps running:
                                             # these tests are about the job's lifecycle, not its signal
                                             "max_signal_free_steps": 0, **extra}}}})


def test_pause_resume_kill_restart_resume(setup):
    config, store_url = setup["config"], setup["store"]
    port = free_port()
    server = start_server(config, port)
    workers = [start_worker(config)]
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        job = _create(client, setup["files"], setup["tools_url"], steps=6)
        run_id = job.model_extra["agentrft"]["run_id"]
        st = RunStore(store_url)

        # pause while running: the worker stops after its step, with its checkpoint saved
        wait_until(lambda: len(train_steps(st, run_id)) >= 1, "a first training step")
        paused = client.fine_tuning.jobs.pause(job.id)
        assert paused.status in ("pausing", "paused")
        wait_for(client, job.id, ("paused",))
        wait_until(lambda: st.get_job(job.id)["lease_owner"] is None, "the worker releasing the paused job")
        at_pause = train_steps(st, run_id)
        assert at_pause == list(range(1, len(at_pause) + 1)) and len(at_pause) < 6
        assert st.get_run(run_id)["status"] == "paused"
        assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # nobody took it while paused
        assert train_steps(st, run_id) == at_pause

        # resume; once it has gone one step further, SIGKILL the worker and restart the server
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"
        wait_until(lambda: len(train_steps(st, run_id)) > len(at_pause), "a step after resuming")
        step1 = {t["trace_id"] for t in st.trajectories(run_id, step=1, split="train")}
        running = client.fine_tuning.jobs.retrieve(job.id)  # >= 2 steps done: a finish time is extrapolated
        assert running.status == "running" and running.estimated_finish >= running.created_at
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=30)
        killed_at = train_steps(st, run_id)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # as far as the store knows
        stop(server)
        server = start_server(config, port)  # a server restart loses no job
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
        workers.append(start_worker(config))
        job = wait_for(client, job.id, ("succeeded", "failed"))
        assert job.status == "succeeded", job.error

        # every step, trajectory and event exactly once
        assert len(killed_at) < 6
        assert train_steps(st, run_id) == [1, 2, 3, 4, 5, 6]
        assert [r["step"] for r in st.step_records(run_id) if r["split"] == "valid"] == [0, 2, 4, 6]
        trajs = st.trajectories(run_id, split="train")
        assert len(trajs) == 6 * 2 * 2 and len({t["trace_id"] for t in trajs}) == len(trajs)
        assert {t["trace_id"] for t in trajs if t["step"] == 1} == step1  # resumed, not started over
        events = all_events(client, job.id)
        assert len({e.id for e in events}) == len(events)
        assert sorted(e.data["step"] for e in events if e.type == "metrics") == [0, 1, 2, 3, 4, 5, 6]
        msgs = [e.message for e in events if e.type == "message"]
        assert sum(m == "Fine-tuning job started" for m in msgs) == 1
        assert sum(m.startswith("Job resumed by worker") for m in msgs) == 2  # after the pause, after the kill
        assert sum(m.startswith("Job paused") for m in msgs) == 1
        assert sum(m.startswith("The job has successfully completed") for m in msgs) == 1
        assert st.get_job(job.id)["attempts"] == 3
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert ckpts and all(c.step_number in (0, 2, 4, 6) for c in ckpts)
        st.close()
    finally:
        for w in workers:
            stop(w)
        stop(server)


def test_cancel_a_running_job(setup):
    config, store_url = setup["config"], setup["store"]
    port = free_port()
    server = start_server(config, port)
    worker = start_worker(config)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        job = _create(client, setup["files"], setup["tools_url"], steps=40)
        run_id = job.model_extra["agentrft"]["run_id"]
        st = RunStore(store_url)
        wait_until(lambda: len(train_steps(st, run_id)) >= 1, "a first training step")
        c = client.fine_tuning.jobs.cancel(job.id)
        assert c.status == "cancelled" and c.finished_at is not None
        wait_until(lambda: st.get_job(job.id)["lease_owner"] is None, "the worker letting the job go")
        assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
        assert len(train_steps(st, run_id)) < 40 and st.get_run(run_id)["status"] == "cancelled"
        msgs = [e.message for e in all_events(client, job.id)]
        assert "Job cancelled; the worker stopped after its current step" in msgs
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.cancel(job.id)
        st.close()
    finally:
        stop(worker)
        stop(server)


def test_one_worker_runs_jobs_concurrency_jobs_at_once(setup):
    """``agentrft worker --concurrency 2`` holds two jobs at the same time (one lease owner), and both finish."""
    config, store_url = setup["config"], setup["store"]
    port = free_port()
    server = start_server(config, port)
    worker = None
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=TOKEN, max_retries=0, timeout=120)
        jobs = [_create(client, setup["files"], setup["tools_url"], steps=3) for _ in range(2)]
        st = RunStore(store_url)
        log = open(config.parent / "workers.log", "ab")
        worker = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "worker", "--config", str(config),
                                   "--concurrency", "2"], env=env(), stdout=log, stderr=subprocess.STDOUT)
        owners: set = set()

        def both_held() -> bool:
            held = [st.get_job(j.id)["lease_owner"] for j in jobs]
            owners.update(o for o in held if o)
            return all(held)

        wait_until(both_held, "both jobs held at once")
        assert len(owners) == 1  # by the one worker process
        for j in jobs:
            done = wait_for(client, j.id, ("succeeded", "failed"))
            assert done.status == "succeeded", done.error
        st.close()
    finally:
        if worker is not None:
            stop(worker)
        stop(server)
