"""A script written for OpenAI RFT, run against `agentrft serve` — a real server process that spawns a real worker
process — with nothing changed but ``base_url`` and ``api_key`` (issue 16): upload, create a reinforcement job
with a ``multi`` grader and Agent RFT tools on a loopback tool server, poll events until it succeeds, list
checkpoints, chat with ``job.fine_tuned_model``. Then a supervised job chained into a reinforcement job. The events
and checkpoint metrics are compared with ``agentrft show`` for the same run."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import yaml

import lookup_task as lt
import serve_helpers as h
from proc_helpers import free_port, stop, wait_healthy
from proc_helpers import src_env as env
from agentrft.tools.registry import resolve_python_tool
from agentrft.tools.server import make_tool_server
from tool_servers.loopback import run_uvicorn

TOKEN = "e2e-token"


def start_server(config: Path, port: int) -> subprocess.Popen:
    """The server (restartable on the same port); its and its workers' output is appended to server-<port>.log."""
    log_path = config.parent / f"server-{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "serve", "--config", str(config), "--port",
                                 str(port)], env=env(AGENTRFT_TOKEN=TOKEN), stdout=log, stderr=subprocess.STDOUT)
    wait_healthy(proc, f"http://127.0.0.1:{port}", log_path.read_text)
    return proc


def wait_for(client: openai.OpenAI, job_id: str, statuses: tuple[str, ...], limit_s: float = 420):
    """Poll as an OpenAI script does; the limit only keeps a broken run from hanging the suite."""
    deadline = time.monotonic() + limit_s
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert job.status not in ("failed", "cancelled") or job.status in statuses, job.error
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.5)


def all_events(client: openai.OpenAI, job_id: str) -> list:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=5))  # auto-paginates through `after`


def show_json(store_url: str, run_id: str) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "show", run_id, "--store", store_url, "--json"],
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def stack(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-e2e")
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    files = lt.write_task(root / "data", seed=2, n_train=6, n_valid=2, n_demos=8)
    store = f"sqlite:///{root / 'store.db'}"
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump({"model": str(tool), "model_name": "tool", "store": store, "slots": 4,
                                      "jobs": {"workers": 1, "lease_s": 6, "poll_s": 0.3}}))
    port = free_port()
    with run_uvicorn(make_tool_server(resolve_python_tool("lookup_task:lookup"))) as tools_url:
        proc = start_server(config, port)
        try:
            yield {"url": f"http://127.0.0.1:{port}/v1", "store": store, "files": files, "tools_url": tools_url,
                   "root": root, "proc": proc}
        finally:
            stop(proc)


# ---------------------------------------------------------------------------------------------------------------
def openai_rft_script(client: openai.OpenAI, files: dict, tools_url: str, model: str = "tool"):
    """What a team's script does against OpenAI (Agent RFT): only the client's base_url and api_key differ."""
    train = client.files.create(file=open(files["train"], "rb"), purpose="fine-tune")
    valid = client.files.create(file=open(files["valid"], "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=model, training_file=train.id, validation_file=valid.id, suffix="lookup-agent", seed=11,
        method={"type": "reinforcement", "reinforcement": {
            "grader": lt.GRADER_SHAPED,
            "tools": [{"name": "lookup", "server_url": tools_url + "/", "headers": {"Authorization": "Bearer t"}}],
            "max_episode_steps": 3,
            "hyperparameters": {"batch_size": 2, "n_epochs": 1, "eval_interval": 1, "compute_multiplier": 0.5,
                                "eval_samples": 1,
                                # ours, for a test-sized run: 2 steps, short turns
                                "agentrft": {"max_steps": 2, "max_new_tokens": 24, "max_turns": 3}}}})
    seen = set()
    while job.status not in ("succeeded", "failed", "cancelled"):
        for ev in client.fine_tuning.jobs.list_events(job.id, limit=20).data:
            if ev.id not in seen:
                seen.add(ev.id)
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    return job


def test_openai_rft_script_runs_unchanged(stack):
    client = openai.OpenAI(base_url=stack["url"], api_key=TOKEN, max_retries=0, timeout=120)
    job = openai_rft_script(client, stack["files"], stack["tools_url"])
    assert job.status == "succeeded", job.error
    assert job.error is None and job.finished_at >= job.created_at and job.trained_tokens > 0
    run_id = job.model_extra["agentrft"]["run_id"]
    assert job.fine_tuned_model == f"ft:tool:lookup-agent:{run_id}"
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]

    # checkpoints, newest first, in the server's model ids
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in ckpts] == [2, 1, 0]
    paged = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=1))  # the SDK follows `after`
    assert [c.id for c in paged] == [c.id for c in ckpts]
    for c in ckpts:
        assert c.fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-{c.step_number}"
        assert c.fine_tuning_job_id == job.id and c.metrics.step == c.step_number

    # the fine-tuned model answers with tool calls, as any OpenAI model would
    r = client.chat.completions.create(model=job.fine_tuned_model, messages=h.ONE, tools=h.TOOLS, temperature=0,
                                       max_tokens=40)
    assert r.model == job.fine_tuned_model
    assert r.choices[0].message.tool_calls or r.choices[0].message.content

    # events: lifecycle messages, one metrics event per step, OpenAI's RFT payload
    events = all_events(client, job.id)
    assert len({e.id for e in events}) == len(events)
    metrics = sorted((e for e in events if e.type == "metrics"), key=lambda e: e.data["step"])
    assert [e.data["step"] for e in metrics] == [0, 1, 2]
    msgs = [e.message for e in events if e.type == "message"]
    assert sum(m == "Fine-tuning job started" for m in msgs) == 1
    assert any(m.startswith("The job has successfully completed") for m in msgs)
    for e in metrics:
        d = e.data
        assert d["total_steps"] == 2
        for k in ("train_mean_reward", "full_valid_mean_reward", "full_valid_mean_parse_error", "scores", "errors",
                  "timing", "usage", "tool_calls_per_rollout", "tool_errors_per_rollout", "tool_latency_mean",
                  "rollout_latency_mean"):
            assert k in d
        assert {g["name"] for g in d["scores"]["graders"]} >= {"lookup_shaped", "lookup_shaped.format"}
        assert set(d["timing"]["step"]) >= {"sampling", "training", "eval", "full_iteration"}
        assert "train_sample_parse_error_count" in d["errors"]["graders"][0]
        assert e.message.startswith(f"Step {d['step']}/2")

    # ... and they agree with `agentrft show` for the same run
    shown = show_json(stack["store"], run_id)
    by = {(r["step"], r["split"]): r for r in shown}
    assert {s for s, _ in by} == {0, 1, 2}
    for e in metrics:
        s, d = e.data["step"], e.data
        train, valid = by.get((s, "train")), by.get((s, "valid"))
        assert (d["train_mean_reward"] is None) == (train is None)
        if train is not None:
            assert d["train_mean_reward"] == pytest.approx(train["reward_mean"])
            assert d["tool_calls_per_rollout"] == pytest.approx(train["tool_calls_per_traj"])
            assert d["rollout_latency_mean"] > 0 and d["tool_errors_per_rollout"] >= 0
            assert d["timing"]["step"]["full_iteration"] == pytest.approx(train["time/full_iteration"])
            assert d["usage"]["samples"]["train_trajectories"] == train["trajectories"] == 2 * 2
        assert d["full_valid_mean_reward"] == pytest.approx(valid["reward_mean"])
        assert d["scores"]["valid_reward_mean"] == pytest.approx(valid["reward_mean"])
    for c in ckpts:
        valid = by[(c.step_number, "valid")]
        m = c.metrics.model_dump()
        assert m["full_valid_mean_reward"] == pytest.approx(valid["reward_mean"])
        train = by.get((c.step_number, "train"))
        assert m["train_mean_reward"] == (pytest.approx(train["reward_mean"]) if train else None)

    # the result file: the same per-step metrics as CSV
    (fid,) = job.result_files
    rows = list(csv.DictReader(io.StringIO(client.files.content(fid).text)))
    assert [(int(r["step"]), r["split"]) for r in rows] == [(r["step"], r["split"]) for r in shown]
    assert [float(r["reward_mean"]) for r in rows] == pytest.approx([r["reward_mean"] for r in shown])


def test_supervised_then_reinforcement_chained_through_fine_tuned_model(stack):
    client = openai.OpenAI(base_url=stack["url"], api_key=TOKEN, max_retries=0, timeout=120)
    demos = client.files.create(file=open(stack["files"]["demos"], "rb"), purpose="fine-tune")
    sft = client.fine_tuning.jobs.create(model="tool", training_file=demos.id, suffix="warm", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4,
                                                                 "learning_rate_multiplier": 0.1}}})
    sft = wait_for(client, sft.id, ("succeeded", "failed"))
    assert sft.status == "succeeded", sft.error
    sft_run = sft.model_extra["agentrft"]["run_id"]
    assert sft.fine_tuned_model == f"ft:tool:warm:{sft_run}:ckpt-step-2"  # 8 demos / batch 4, one epoch
    assert sft.fine_tuned_model in [m.id for m in client.models.list().data]
    losses = sorted((e for e in all_events(client, sft.id) if e.type == "metrics"), key=lambda e: e.data["step"])
    shown = show_json(stack["store"], sft_run)
    assert [e.data["train_loss"] for e in losses] == pytest.approx([r["loss"] for r in shown])
    (ck,) = client.fine_tuning.jobs.checkpoints.list(sft.id).data
    assert ck.fine_tuned_model_checkpoint == sft.fine_tuned_model and ck.metrics.train_loss == pytest.approx(
        shown[-1]["loss"])

    # reinforcement from the supervised job's model
    job = openai_rft_script(client, stack["files"], stack["tools_url"], model=sft.fine_tuned_model)
    assert job.status == "succeeded", job.error
    assert job.model == sft.fine_tuned_model
    run_id = job.model_extra["agentrft"]["run_id"]
    assert job.fine_tuned_model == f"ft:tool:lookup-agent:{run_id}"
    from agentrft.store import RunStore

    st = RunStore(stack["store"])
    sft_ckpt = st.checkpoints(sft_run)[0]["path"]
    assert st.get_job(job.id)["config"]["run_config"]["model"] == sft_ckpt  # it started from the SFT weights
    assert st.get_job(job.id)["config"]["run_config"]["hyperparameters"]["lora"] is None
    st.close()
    r = client.chat.completions.create(model=job.fine_tuned_model, messages=h.ONE, tools=h.TOOLS, temperature=0,
                                       max_tokens=40)
    assert r.model == job.fine_tuned_model and r.choices[0].finish_reason in ("tool_calls", "stop", "length")


def _worker_children(pid: int) -> set[int]:
    """The job-worker processes whose parent is ``pid`` (read from /proc)."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (d / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"agentrft.serve.job_worker" in cmd:
            out.add(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_the_server_restarts_a_worker_that_dies(stack):
    """``jobs.workers`` processes are kept running: one SIGKILLed is replaced by a new one."""
    import signal

    (old,) = _worker_children(stack["proc"].pid)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while not (_worker_children(stack["proc"].pid) - {old}):
        assert time.monotonic() < deadline, "no new worker"
        time.sleep(0.3)
    assert len(_worker_children(stack["proc"].pid)) == 1
