"""The OpenAI files, fine-tuning-jobs and graders API (issue 16) through the official `openai` client, on an
in-process server: uploads stored with size and sha256, every bad input rejected at create with an OpenAI-shaped
error naming the field or line, the hyperparameter mapping, and the graders endpoints answering as `agentrft grade`.
(Jobs running in real worker processes: tests/test_jobs_e2e.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest

import lookup_task as lt
import serve_helpers as h
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer

TOKEN = "jobs-token"
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def tool_model(tiny_model, tmp_path_factory):
    return h.tool_model_dir(tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return lt.write_task(tmp_path_factory.mktemp("jobs-data"), seed=4, n_train=6, n_valid=3, n_demos=8)


@pytest.fixture(scope="module")
def server(tool_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs-api")
    broken = root / "broken-model"  # allowed, but no weights: a job on it fails in the worker
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    cfg = ServeConfig(model=str(tool_model), model_name="tool", store=f"sqlite:///{root / 'store.db'}", token=TOKEN,
                      slots=4, jobs={"workers": 0, "data_dir": str(root / "data"), "allow_models": [str(broken)],
                                     "poll_s": 0.1})
    app = create_app(cfg)
    with BackgroundServer(app) as srv:
        srv.state = app.state.serve
        srv.root = root
        yield srv
    app.state.serve.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)


def _upload(client, path: Path, name: str | None = None):
    return client.files.create(file=(name or path.name, path.read_bytes()), purpose="fine-tune")


def _rl(grader=None, **hp):
    return {"type": "reinforcement", "reinforcement": {"grader": grader or lt.GRADER, "hyperparameters": hp}}


# ---- files ---------------------------------------------------------------------------------------------------
def test_files_round_trip_with_size_and_sha256(client, data, server):
    raw = data["train"].read_bytes()
    f = _upload(client, data["train"])
    assert f.object == "file" and f.purpose == "fine-tune" and f.filename == "train.jsonl" and f.bytes == len(raw)
    assert f.id.startswith("file-")
    row = server.state.store.get_file(f.id)
    assert row["sha256"] == hashlib.sha256(raw).hexdigest() and row["rows"] == 6
    assert Path(row["path"]).read_bytes() == raw and Path(row["path"]).is_relative_to(server.root / "data")
    assert client.files.retrieve(f.id).bytes == len(raw)
    assert f.id in [x.id for x in client.files.list().data]
    assert client.files.content(f.id).content == raw
    d = client.files.delete(f.id)
    assert d.deleted and d.id == f.id
    assert not Path(row["path"]).exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)


def test_invalid_upload_names_the_line(client, data, tmp_path, server):
    lines = data["train"].read_text().splitlines()
    bad = json.loads(lines[2])
    bad["messages"][1]["role"] = "bot"
    p = tmp_path / "broken.jsonl"
    p.write_text("\n".join([lines[0], lines[1], json.dumps(bad), "{not json"]) + "\n")
    before = len(server.state.store.list_files())
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, p)
    err = e.value.body
    assert err["param"] == "file" and err["code"] == "invalid_file"
    assert "broken.jsonl:3:" in err["message"] and "bot" in err["message"]
    assert "broken.jsonl:4:" in err["message"]
    assert len(server.state.store.list_files()) == before  # nothing of it kept
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="nonsense")
    assert e.value.body["param"] == "purpose"


# ---- create: everything wrong is a 400 naming the field or line -------------------------------------------------
@pytest.fixture(scope="module")
def files(server, data):
    c = openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)
    return {k: _upload(c, data[k]).id for k in ("train", "valid", "demos")}


@pytest.mark.parametrize("change,param,words", [
    ({"model": "gpt-4o-mini"}, "model", "not available for fine-tuning"),
    ({"model": "ft:tool:nope:run-20260101-000000-abcd"}, "model", "no such fine-tuned model"),
    ({"training_file": "file-missing"}, "training_file", "no file"),
    ({"method": _rl(grader={"type": "string_check", "name": "x", "input": "{{sample.output_text}}",
                            "reference": "a", "operation": "sounds_like"})}, "method.reinforcement.grader", "operation"),
    ({"method": _rl(grader={"type": "multi", "name": "m", "graders": {"a": lt.GRADER},
                            "calculate_output": "a +* 2"})}, "method.reinforcement.grader", "calculate_output"),
    ({"method": _rl(grader={"type": "endpoint", "name": "ep", "url": "ftp://grader"})}, "method.reinforcement.grader",
     "http(s) URL"),
    ({"method": _rl(batch_size=0)}, "method.reinforcement.hyperparameters.batch_size", "positive"),
    ({"method": _rl(n_epochs="many")}, "method.reinforcement.hyperparameters.n_epochs", "integer"),
    ({"method": _rl(learning_rate_multiplier=-1.0)}, "method.reinforcement.hyperparameters.learning_rate_multiplier",
     "positive"),
    ({"method": _rl(reasoning_effort="extreme")}, "method.reinforcement.hyperparameters.reasoning_effort", "one of"),
    ({"method": _rl(batch_size=1000)}, "method.reinforcement.hyperparameters.batch_size", "less than or equal"),
    ({"method": _rl(agentrft={"group_size": 1})}, "method.reinforcement.hyperparameters.compute_multiplier",
     "greater than or equal to 2"),
    ({"method": _rl(agentrft={"max_turns": 0})}, "method.reinforcement.hyperparameters.agentrft.max_turns",
     "greater than or equal"),
    ({"method": _rl(agentrft={"no_such_knob": 1})}, "method.reinforcement.hyperparameters.agentrft.no_such_knob",
     "unknown field"),
    ({"method": _rl(warmup=3)}, "method.reinforcement.hyperparameters.warmup", "unknown field"),
    ({"method": {"type": "dpo", "dpo": {}}}, "method.type", "not supported"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": lt.GRADER, "tools": [
        {"name": "lookup", "server_url": "ftp://x"}]}}}, "method.reinforcement.tools.0.server_url", "http"),
    ({"suffix": "x" * 65}, "suffix", "64"),
    ({"metadata": {"k": 3}}, "metadata.k", "strings"),
])
def test_create_rejects_with_the_field_named(client, files, change, param, words):
    body = {"model": "tool", "training_file": files["train"], "validation_file": files["valid"], "method": _rl()}
    body.update(change)
    n_before = len(client.fine_tuning.jobs.list(limit=100).data)
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(**body)
    err = e.value.body
    assert err["param"] == param, err
    assert words in err["message"], err
    assert len(client.fine_tuning.jobs.list(limit=100).data) == n_before  # no job was made


def test_create_rejects_a_dataset_naming_its_line(client, files, data, tmp_path):
    # valid as an upload (a demonstration) but not as an RL task: it names a tool the job does not offer
    row = json.loads(data["train"].read_text().splitlines()[0])
    row["tools"] = [{"type": "function", "function": {"name": "teleport", "parameters": {"type": "object"}}}]
    p = tmp_path / "tasks.jsonl"
    p.write_text(data["train"].read_text() + json.dumps(row) + "\n")
    fid = _upload(client, p).id
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tool", training_file=fid, method={
            "type": "reinforcement", "reinforcement": {"grader": lt.GRADER, "tools": [
                {"name": "lookup", "server_url": "http://127.0.0.1:9/"}]}})
    err = e.value.body
    assert err["param"] == "training_file" and "tasks.jsonl:7:" in err["message"], err


# ---- create: the mapping -----------------------------------------------------------------------------------
def test_create_maps_hyperparameters_and_warns_about_what_it_ignores(client, files, server):
    job = client.fine_tuning.jobs.create(
        model="tool", training_file=files["train"], validation_file=files["valid"], suffix="Lookup Bot", seed=7,
        metadata={"team": "search"}, integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
        method=_rl(batch_size=3, learning_rate_multiplier=2.0, compute_multiplier=1.5, n_epochs=2,
                   eval_samples="auto", reasoning_effort="high", agentrft={"max_new_tokens": 20}))
    assert job.status == "queued" and job.seed == 7 and job.metadata == {"team": "search"}
    assert job.fine_tuned_model is None and job.result_files == []
    hp = job.method.reinforcement.hyperparameters
    assert hp.batch_size == 3 and hp.n_epochs == 2 and hp.compute_multiplier == 1.5 and hp.eval_samples == 1
    stored = server.state.store.get_job(job.id)
    cfg = stored["config"]["run_config"]
    ours = cfg["hyperparameters"]
    assert ours["group_size"] == 6  # round(4 * 1.5)
    assert ours["learning_rate"] == pytest.approx(2.0 * stored["config"]["base_learning_rate"])
    assert stored["config"]["base_learning_rate"] == 1e-3  # LoRA row for < 100M parameters
    assert ours["batch_size"] == 3 and ours["n_epochs"] == 2 and ours["max_new_tokens"] == 20 and ours["seed"] == 7
    assert stored["total_steps"] == 4  # 2 epochs x ceil(6 / 3)
    assert ours["eval_interval"] == 1  # auto: ceil(4 / 5)
    run = server.state.store.get_run(stored["run_id"])
    assert run["name"] == "Lookup Bot" and run["base_model"] == server.state.cfg.model
    events = client.fine_tuning.jobs.list_events(job.id).data
    warns = [e.message for e in events if e.level == "warn"]
    assert any("reasoning_effort" in w for w in warns) and any("wandb" in w for w in warns)
    import importlib.util

    assert cfg["loggers"] == (["wandb"] if importlib.util.find_spec("wandb") else [])  # honoured where installed
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "search"}).data] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []
    # lifecycle without a worker: pause a queued job, resume it, cancel it
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    c = client.fine_tuning.jobs.cancel(job.id)
    assert c.status == "cancelled" and c.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-nope")


def test_every_hyperparameter_auto_becomes_the_documented_value(client, files, server):
    """docs/openai-api.md's "auto" column, on 6 training rows: batch_size min(8, rows), n_epochs 1, multiplier 1.0
    (the base rate), compute_multiplier 1.0 -> 4 rollouts per task, eval_interval ceil(steps / 5), eval_samples 1;
    reasoning_effort "auto" has nothing to apply, so no warning."""
    auto = {k: "auto" for k in ("batch_size", "n_epochs", "learning_rate_multiplier", "compute_multiplier",
                                "eval_interval", "eval_samples", "reasoning_effort")}
    job = client.fine_tuning.jobs.create(model="tool", training_file=files["train"], validation_file=files["valid"],
                                         method=_rl(**auto))
    stored = server.state.store.get_job(job.id)
    ours = stored["config"]["run_config"]["hyperparameters"]
    assert (ours["batch_size"], ours["n_epochs"], ours["group_size"], ours["eval_interval"], ours["eval_samples"]) \
        == (6, 1, 4, 1, 1)
    assert ours["learning_rate"] == pytest.approx(stored["config"]["base_learning_rate"]) and stored["total_steps"] == 1
    hp = job.method.reinforcement.hyperparameters
    assert (hp.batch_size, hp.n_epochs, hp.compute_multiplier, hp.eval_samples) == (6, 1, 1.0, 1)
    assert not [e.message for e in client.fine_tuning.jobs.list_events(job.id).data if e.level == "warn"]
    client.fine_tuning.jobs.cancel(job.id)


def test_an_endpoint_grader_goes_to_the_run_as_sent(client, files, server):
    """Agent RFT's ``endpoint`` grader (our own service scoring each rollout) is the run's grader unchanged."""
    g = {"type": "endpoint", "name": "ep", "url": "http://127.0.0.1:9/grade", "headers": {"Authorization": "Bearer x"},
         "timeout_s": 30}
    job = client.fine_tuning.jobs.create(model="tool", training_file=files["train"], method=_rl(grader=g))
    assert server.state.store.get_job(job.id)["config"]["run_config"]["grader"] == g
    assert job.method.reinforcement.grader.model_dump(exclude_none=True)["url"] == g["url"]
    client.fine_tuning.jobs.cancel(job.id)


def test_list_jobs_pages_newest_first(client, files):
    ids = [client.fine_tuning.jobs.create(model="tool", training_file=files["train"], method=_rl(),
                                          metadata={"batch": "paging"}).id for _ in range(3)]
    page1 = client.fine_tuning.jobs.list(limit=2, metadata={"batch": "paging"})
    assert [j.id for j in page1.data] == ids[::-1][:2] and page1.has_more
    page2 = client.fine_tuning.jobs.list(limit=2, after=page1.data[-1].id, metadata={"batch": "paging"})
    assert [j.id for j in page2.data] == [ids[0]] and not page2.has_more
    for i in ids:
        client.fine_tuning.jobs.cancel(i)


# ---- graders: the same answers as `agentrft grade` -----------------------------------------------------------
def _cli(tmp_path, *args):
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "grade", *args], capture_output=True, text=True,
                       env=env, timeout=120, cwd=tmp_path)
    return r.returncode, json.loads(r.stdout)


def test_graders_run_and_validate_answer_as_the_cli(client, tmp_path):
    grader = lt.GRADER_SHAPED
    item = {"answer": "ANSWER: red", "min_tool_calls": 1}
    (tmp_path / "g.json").write_text(json.dumps(grader))
    (tmp_path / "i.json").write_text(json.dumps(item))
    (tmp_path / "s.txt").write_text("ANSWER: red\n")
    rc, want = _cli(tmp_path, "run", "--grader", "g.json", "--item", "i.json", "--sample", "s.txt")
    raw = client.fine_tuning.alpha.graders.with_raw_response.run(grader=grader, model_sample="ANSWER: red", item=item)
    assert raw.parse().reward == want["reward"]  # the SDK reads it
    got = raw.http_response.json()
    for d in (want, got):
        d["metadata"].pop("execution_time")
    assert rc == 0 and got["reward"] == want["reward"] and got["sub_rewards"] == want["sub_rewards"]
    assert got["metadata"] == want["metadata"]
    rc, want_v = _cli(tmp_path, "validate", "g.json")
    v = client.fine_tuning.alpha.graders.with_raw_response.validate(grader=grader).http_response.json()
    assert rc == 0 and v["grader"] == want_v["grader"] == grader
    bad = {"type": "multi", "name": "m", "graders": {"a": lt.GRADER}, "calculate_output": "a +* 2"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    rc, want_bad = _cli(tmp_path, "validate", "bad.json")
    assert rc == 1 and not want_bad["valid"]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.alpha.graders.validate(grader=bad)
    assert e.value.body["param"] == "grader"
    assert want_bad["error"].split(": ", 1)[1] in e.value.body["message"]  # the same reason
    rc, want_run_bad = _cli(tmp_path, "run", "--grader", "bad.json", "--sample", "s.txt")
    got_bad = client.fine_tuning.alpha.graders.with_raw_response.run(grader=bad, model_sample="ANSWER: red")
    got_bad = got_bad.http_response.json()
    assert got_bad["metadata"]["errors"] == want_run_bad["metadata"]["errors"]
    assert got_bad["metadata"]["errors"]["formula_parse_error"] is True


@pytest.fixture
def hook():
    """A loopback receiver of webhooks: yields ``(url, got)``, ``got`` the (headers, body) of each POST."""
    from http.server import BaseHTTPRequestHandler

    from tool_servers.loopback import run_http_server

    got = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass

    with run_http_server(Hook) as (url, _):
        yield url + "/hook", got


WEBHOOK_KEY = b"0123456789abcdef0123456789abcdef"


def _check_signed(headers: dict, body: bytes) -> dict:
    """The Standard Webhooks check a receiver does, written here independently of the server's code: HMAC-SHA256
    over "id.timestamp.body" with the base64-decoded whsec_ key."""
    import base64
    import hmac

    payload = json.loads(body)
    assert headers["webhook-id"] == payload["id"]
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    want = base64.b64encode(hmac.new(WEBHOOK_KEY, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{want}"
    return payload


def _with_webhook(server, url: str):
    import base64

    jobs = server.state.cfg.jobs.model_copy(update={
        "webhook_url": url, "webhook_secret": "whsec_" + base64.b64encode(WEBHOOK_KEY).decode()})
    return server.state.cfg.model_copy(update={"jobs": jobs})


def test_terminal_webhook_is_signed_like_openais(files, server, hook):
    """Cancelling a job through the API of a server with ``jobs.webhook_url`` POSTs ``fine_tuning.job.cancelled``,
    signed; a webhook that cannot be delivered is a warning event on the job, not an error."""
    from agentrft.serve.app import ServerState
    from agentrft.serve.job_worker import send_webhook
    from agentrft.serve.jobs_config import JobsConfig

    url, got = hook
    cfg = _with_webhook(server, url)
    with BackgroundServer(create_app(cfg, state=ServerState(cfg, manager=server.state.manager))) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key=TOKEN, max_retries=0, timeout=120)
        job = c.fine_tuning.jobs.create(model="tool", training_file=files["train"], method=_rl())
        assert got == []  # only terminal states are sent
        c.fine_tuning.jobs.cancel(job.id)
    (headers, body), = got
    payload = _check_signed(headers, body)
    assert payload["type"] == "fine_tuning.job.cancelled" and payload["data"]["id"] == job.id
    assert payload["object"] == "event" and payload["created_at"] == int(headers["webhook-timestamp"])
    send_webhook(JobsConfig(webhook_url="http://127.0.0.1:9/nothing"), server.state.store, job.id)
    client = openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)
    assert any(e.level == "warn" and "webhook" in e.message for e in client.fine_tuning.jobs.list_events(job.id).data)


def test_a_job_that_fails_in_the_worker_reports_its_error(client, data, server, tmp_path, hook):
    """A model that is allowed but does not load: the job is accepted, the worker (in-process here) fails it with an
    OpenAI error object, an error event and a signed ``fine_tuning.job.failed`` webhook; its files cannot be deleted
    while it is queued."""
    from agentrft.serve.job_worker import JobWorker

    broken = Path(server.state.cfg.jobs.allow_models[0])
    train = _upload(client, data["train"]).id
    job = client.fine_tuning.jobs.create(model=str(broken), training_file=train, method=_rl(
        agentrft={"max_steps": 1, "group_size": 2}))
    assert job.status == "queued"
    with pytest.raises(openai.ConflictError) as e:
        client.files.delete(train)
    assert job.id in e.value.body["message"]
    JobWorker(server.state.store.url, jobs_cfg=_with_webhook(server, hook[0]).jobs).serve(once=True)
    (headers, body), = hook[1]
    payload = _check_signed(headers, body)
    assert payload["type"] == "fine_tuning.job.failed" and payload["data"]["id"] == job.id
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "failed" and job.finished_at is not None and job.fine_tuned_model is None
    assert job.error.code == "training_error" and job.error.param == "model" and str(broken) in job.error.message
    errs = [ev for ev in client.fine_tuning.jobs.list_events(job.id).data if ev.level == "error"]
    assert len(errs) == 1 and errs[0].message.startswith(f"Job failed: model '{broken}': cannot load")
    assert server.state.store.get_job(job.id)["lease_owner"] is None
    assert client.files.delete(train).deleted  # the job is over
