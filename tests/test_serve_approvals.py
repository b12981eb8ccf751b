"""Production approvals end to end: a real `agentrft serve` on loopback whose tiny tool model calls `lookup`, declared
`requires_approval`; the `openai` client's request waits while another process (`agentrft approvals` as a
subprocess) approves or denies the held call; the pending shape, the poll, `/v1/approvals`, and who/when in the
store."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

import serve_helpers as h
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer
from agentrft.store import RunStore

TOKEN = "appr-token"


def _serve(tiny_model, tmp_path_factory, wait_s: float, store_url: str | None = None):
    tool_model = h.tool_model_dir(tiny_model, tmp_path_factory)
    url = store_url or f"sqlite:///{tmp_path_factory.mktemp('appr-store') / 'store.db'}"
    cfg = ServeConfig(model=str(tool_model), model_name="tool", store=url, token=TOKEN, slots=4,
                      tools=[{"name": "lookup", "requires_approval": True}],
                      approvals={"wait_s": wait_s, "poll_s": 0.1})
    app = create_app(cfg)
    srv = BackgroundServer(app).start()
    srv.store_url = url
    srv.close_state = app.state.serve.close
    return srv


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    srv = _serve(tiny_model, tmp_path_factory, wait_s=120)
    yield srv
    srv.stop()
    srv.close_state()


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=180)


def _cli(*args: str, store: str) -> subprocess.CompletedProcess:
    """`agentrft approvals ...` in another process (each pays the CLI's imports, ~5-10 s on this loaded machine)."""
    return subprocess.run([sys.executable, "-m", "agentrft.cli", "approvals", *args, "--store", store],
                          capture_output=True, text=True, timeout=120)


class _Ran:
    def __init__(self, res):
        self.returncode = res.exit_code
        self.stdout = res.stdout
        self.stderr = res.stderr if res.stderr_bytes is not None else ""


def _cli_here(*args: str, store: str) -> _Ran:
    """The same typer app in this process (decisions still go through the store, which the server polls)."""
    from typer.testing import CliRunner

    from agentrft.cli import app

    return _Ran(CliRunner().invoke(app, ["approvals", *args, "--store", store]))


def _pending_for(store_url: str, trace_id: str, timeout: float = 120) -> dict:
    st = RunStore(store_url, mode="read")
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            rows = [a for a in st.list_approvals("pending") if a["trace_id"] == trace_id]
            if rows:
                return rows[0]
            time.sleep(0.1)
    finally:
        st.close()
    raise AssertionError(f"no pending approval for {trace_id}")


def _ask_in_thread(server, trace_id: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["raw"] = _client(server).chat.completions.with_raw_response.create(
                model="tool", messages=h.ONE, tools=h.TOOLS, temperature=0, max_tokens=60,
                extra_headers={"X-Trace-Id": trace_id})
        except Exception as e:  # noqa: BLE001 - reported by the test
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_call_needing_approval_waits_and_is_returned_after_approval_from_another_process(server):
    t, out = _ask_in_thread(server, "conv-appr-1")
    pending = _pending_for(server.store_url, "conv-appr-1")
    assert pending["tool_name"] == "lookup" and json.loads(pending["arguments"]) == {"key": "K3"}
    time.sleep(0.5)
    assert t.is_alive() and "raw" not in out, "the client must not have the call before a decision"
    listed = _cli_here("list", store=server.store_url)
    assert listed.returncode == 0 and f"#{pending['id']} pending" in listed.stdout, listed.stderr
    done = _cli("approve", str(pending["id"]), "--by", "alice", store=server.store_url)
    assert done.returncode == 0 and "approved by alice" in done.stdout, done.stderr
    t.join(timeout=120)
    assert "error" not in out, out.get("error")
    raw = out["raw"]
    assert raw.http_response.status_code == 200
    r = raw.parse()
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in ch.message.tool_calls] == \
        [("lookup", {"key": "K3"})]
    (a,) = r.model_extra["approvals"]
    assert (a["id"], a["status"], a["decided_by"], a["tool_call_id"]) == \
        (pending["id"], "approved", "alice", ch.message.tool_calls[0].id)
    st = RunStore(server.store_url, mode="read")
    try:
        rec = st.get_approval(pending["id"])
        assert rec["decided_by"] == "alice" and rec["decided_at"] >= rec["requested_at"]
        # the trace keeps what the model wrote, and which approval held it
        deadline = time.monotonic() + 30
        while not st.traces(trace_id="conv-appr-1") and time.monotonic() < deadline:
            time.sleep(0.1)
        (tr,) = st.traces(trace_id="conv-appr-1")
        assert tr["choices"][0]["approvals"][0]["id"] == pending["id"]
    finally:
        st.close()


def test_a_denied_call_becomes_a_refusal_the_client_can_show(server):
    t, out = _ask_in_thread(server, "conv-appr-2")
    pending = _pending_for(server.store_url, "conv-appr-2")
    no_reason = _cli_here("deny", str(pending["id"]), "--reason", " ", store=server.store_url)
    assert no_reason.returncode != 0 and "say why" in no_reason.stdout + no_reason.stderr
    denied = _cli_here("deny", str(pending["id"]), "--reason", "K3 is a restricted key", "--by", "bob",
                  store=server.store_url)
    assert denied.returncode == 0, denied.stderr
    t.join(timeout=120)
    r = out["raw"].parse()
    ch = r.choices[0]
    assert not ch.message.tool_calls and ch.finish_reason == "stop"
    assert ch.message.refusal == 'The call to lookup({"key": "K3"}) was denied by bob: K3 is a restricted key'
    again = _cli_here("approve", str(pending["id"]), "--by", "carol", store=server.store_url)
    assert again.returncode == 2 and "already denied by bob" in again.stderr


def test_api_decisions_and_errors(server):
    t, out = _ask_in_thread(server, "conv-appr-3")
    pending = _pending_for(server.store_url, "conv-appr-3")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        listed = c.get("/approvals").json()["data"]
        mine = [a for a in listed if a["id"] == pending["id"]]
        assert mine and mine[0]["object"] == "approval" and mine[0]["completion_id"].startswith("chatcmpl-")
        for path, body, status, param in (
                (f"/approvals/{pending['id']}/approve", {}, 400, "decided_by"),
                (f"/approvals/{pending['id']}/deny", {"decided_by": "dan"}, 400, "reason"),
                ("/approvals/999999/approve", {"decided_by": "dan"}, 404, "approval_id"),
                ("/approvals/abc/approve", {"decided_by": "dan"}, 400, "approval_id")):
            r = c.post(path, json=body)
            assert r.status_code == status and r.json()["error"]["param"] == param, (path, r.text)
        assert c.get("/approvals", params={"status": "maybe"}).json()["error"]["param"] == "status"
        ok = c.post(f"/approvals/{pending['id']}/approve", json={"decided_by": "dan", "reason": "routine"})
        assert ok.status_code == 200 and ok.json()["status"] == "approved"
        t.join(timeout=120)
        assert out["raw"].parse().choices[0].message.tool_calls
        twice = c.post(f"/approvals/{pending['id']}/deny", json={"decided_by": "eve", "reason": "late"})
        assert twice.status_code == 409 and "already approved by dan" in twice.json()["error"]["message"]
        assert c.get(f"/approvals/{pending['id']}").json()["decided_by"] == "dan"
        # a request without the held tool is not held
        plain = c.post("/chat/completions", json={"model": "tool", "messages": h.PLAIN, "max_tokens": 8,
                                                  "temperature": 0})
        assert plain.status_code == 200 and "approvals" not in plain.json()


def test_a_streamed_request_is_held_whole_then_streamed(server):
    out: dict = {}

    def run() -> None:
        with _client(server).chat.completions.stream(
                model="tool", messages=h.TWO, tools=h.TOOLS, temperature=0, max_tokens=60,
                stream_options={"include_usage": True}, extra_headers={"X-Trace-Id": "conv-appr-s"}) as stream:
            out["events"] = list(stream)
            out["final"] = stream.get_final_completion()

    t = threading.Thread(target=run)
    t.start()
    first = _pending_for(server.store_url, "conv-appr-s")
    time.sleep(0.3)
    assert "events" not in out  # nothing of the call was streamed before the decisions
    st = RunStore(server.store_url, mode="existing")
    try:
        both = [a for a in st.list_approvals("pending") if a["trace_id"] == "conv-appr-s"]
        assert [json.loads(a["arguments"])["key"] for a in both] == ["K1", "K5"] and both[0]["id"] == first["id"]
        st.decide_approval(both[0]["id"], "approved", decided_by="heidi")
        st.decide_approval(both[1]["id"], "denied", decided_by="heidi", reason="K5 is private")
    finally:
        st.close()
    t.join(timeout=120)
    final = out["final"]
    msg = final.choices[0].message
    assert [json.loads(c.function.arguments) for c in msg.tool_calls] == [{"key": "K1"}]
    assert msg.refusal == 'The call to lookup({"key": "K5"}) was denied by heidi: K5 is private'
    assert final.choices[0].finish_reason == "tool_calls" and final.usage.completion_tokens > 0
    last = [e.chunk for e in out["events"] if e.type == "chunk"][-1]
    assert [(a["status"], a["decided_by"]) for a in last.model_extra["approvals"]] == \
        [("approved", "heidi"), ("denied", "heidi")]


def test_undecided_in_time_answers_202_pending_then_the_poll_gives_the_decided_call(tiny_model, tmp_path_factory):
    srv = _serve(tiny_model, tmp_path_factory, wait_s=0.5)
    try:
        client = _client(srv)
        raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.ONE, tools=h.TOOLS,
                                                               temperature=0, max_tokens=60)
        assert raw.http_response.status_code == 202
        r = raw.parse()
        assert r.model_extra["status"] == "pending_approval"
        assert r.choices[0].finish_reason == "pending_approval" and not r.choices[0].message.tool_calls
        (a,) = r.model_extra["approvals"]
        assert a["status"] == "pending" and a["tool_name"] == "lookup"
        polled = client.chat.completions.with_raw_response.retrieve(r.id)
        assert polled.http_response.status_code == 202
        assert _cli_here("approve", str(a["id"]), "--by", "frank", store=srv.store_url).returncode == 0
        final = client.chat.completions.with_raw_response.retrieve(r.id)
        assert final.http_response.status_code == 200
        done = final.parse()
        assert done.id == r.id and "status" not in done.model_extra
        assert [json.loads(c.function.arguments) for c in done.choices[0].message.tool_calls] == [{"key": "K3"}]
        assert done.model_extra["approvals"][0]["decided_by"] == "frank"
        with pytest.raises(openai.NotFoundError, match="no held chat completion"):
            client.chat.completions.retrieve("chatcmpl-unknown")
    finally:
        srv.stop()
        srv.close_state()


def test_approvals_need_a_store():
    from agentrft.config import ConfigError
    from agentrft.serve.approvals import ApprovalHold

    cfg = ServeConfig(model="x", tools=[{"name": "lookup", "requires_approval": True}])
    with pytest.raises(ConfigError, match="require approval, which needs a store"):
        ApprovalHold(None, cfg)
    assert not ApprovalHold(None, ServeConfig(model="x", tools=[{"name": "lookup"}])).active


def test_a_run_configs_tools_needing_approval_are_held_when_it_is_served(tmp_path):
    """`agentrft serve --config run.yaml`: the run config's HTTP entries with requires_approval, and its Python tools
    declared @tool(requires_approval=True), become the server's held tools; others are not held."""
    from agentrft.serve.config import load_serve_config

    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    (tmp_path / "run.yaml").write_text(
        "model: some/model\ntraining_file: train.jsonl\n"
        "tools:\n  - agentrft.environments.support_desk.tools:*\n"
        "  - {name: wire_money, server_url: 'http://127.0.0.1:9/', requires_approval: true}\n"
        "  - {name: get_order, server_url: 'http://127.0.0.1:9/'}\n"
        "grader: {type: string_check, name: x, input: '{{ sample.output_text }}', reference: a, operation: eq}\n")
    cfg = load_serve_config(tmp_path / "run.yaml", {})
    assert sorted(t.name for t in cfg.tools if t.requires_approval) == ["refund_order", "wire_money"]
    # a Python tool module that cannot be imported might hold a tool needing approval: refused, not guessed
    (tmp_path / "run.yaml").write_text((tmp_path / "run.yaml").read_text().replace(
        "agentrft.environments.support_desk.tools:*", "no_such_tools_module:*"))
    from agentrft.config import ConfigError

    with pytest.raises(ConfigError, match="cannot import no_such_tools_module to read which of its tools require"):
        load_serve_config(tmp_path / "run.yaml", {})


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)  # the module's server covers SQLite
def test_the_hold_on_postgresql(tiny_model, tmp_path_factory, store_url):
    """The same hold with the queue on the live PostgreSQL: the waiting request sees a decision written through
    another connection."""
    srv = _serve(tiny_model, tmp_path_factory, wait_s=120, store_url=store_url)
    try:
        t, out = _ask_in_thread(srv, "conv-pg-1")
        pending = _pending_for(store_url, "conv-pg-1")
        st = RunStore(store_url, mode="existing")
        try:
            st.decide_approval(pending["id"], "denied", decided_by="grace", reason="not today")
        finally:
            st.close()
        t.join(timeout=120)
        ch = out["raw"].parse().choices[0]
        assert not ch.message.tool_calls and ch.message.refusal.endswith("denied by grace: not today")
    finally:
        srv.stop()
        srv.close_state()


def test_a_mistyped_approval_key_in_a_serve_config_gets_the_nearest_key(tmp_path):
    from agentrft.config import ConfigError
    from agentrft.serve.config import load_serve_config

    (tmp_path / "serve.yaml").write_text("model: x\nstore: sqlite:///s.db\ntools:\n"
                                         "  - {name: lookup, requires_aproval: true}\napprovals: {wait: 3}\n")
    with pytest.raises(ConfigError) as e:
        load_serve_config(tmp_path / "serve.yaml", {})
    said = str(e.value)
    assert "tools.0.requires_aproval: Extra inputs are not permitted (did you mean 'requires_approval'?" in said
    assert "approvals.wait: Extra inputs are not permitted (did you mean 'wait_s'?" in said
