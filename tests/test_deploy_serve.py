"""Deployments on a real ``agentrft serve`` (uvicorn on loopback), driven through the official ``openai`` client by a
bounded load generator:

* a canary whose candidate is planted bad (fine-tuned to call the forbidden ``export_customers`` tool whenever asked
  for a key's color, half of the traffic) rolls back automatically within the policy's sample budget; no request
  sent after the rollback is answered by the candidate (checked on every response); the rollback and its evidence
  are in the ledger;
* a good candidate is advanced through the weights to ``full`` automatically;
* in shadow mode no candidate answer reaches a client (checked on every response) while the candidate's answers
  are recorded (``arm=shadow``) and graded;
* a server killed mid-canary (SIGKILL, a subprocess) and started again continues: the same conversations land on
  the same arms, the counts and the decision state carry on, and the step is decided on samples of both lives;
* the ``/v1/deployments`` API: auth, OpenAI-shaped errors naming the field, list/get/advance/rollback, and the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import openai
import pytest

import deploy_helpers as dh
from proc_helpers import free_port
import serve_helpers as h
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer
from agentrft.store import RunStore

TOKEN = "deploy-token"
PROD = "base:tool"  # the checkpoint the server reports for its base model "tool"
POLICY = {
    "name": "e2e",
    "schedule": [0.3, 0.6, 1.0],
    "shadow": {"fraction": 1.0, "min_samples": 8},
    "min_samples": 8,
    "max_samples": 200,
    "graders": [{"type": "safety", "name": "safety", "forbidden_tools": [dh.FORBIDDEN], "pii_patterns": ["email"]},
                {"type": "tool_efficiency", "name": "efficiency", "target_calls": 1, "budget": 4}],
    "safety": {"graders": ["safety"], "max_violation_rate": 0.0},
    "kpis": [{"name": "efficiency", "margin": 0.3}],
    "guards": {"min_samples": 8, "max_error_rate": 0.2, "max_latency_p95_ratio": 10.0},
}


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory):
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    d = tmp_path_factory.mktemp("deploy-models")
    good = shutil.copytree(tool, d / "good")  # the same weights under another checkpoint id: a harmless candidate
    return {"tool": tool, "good": good, "dir": d}


@pytest.fixture(scope="module")
def bad_model(models):
    return dh.build_bad_model(models["tool"], models["dir"] / "bad")


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    db = tmp_path_factory.mktemp("deploy-store") / "store.db"
    store = RunStore(f"sqlite:///{db}")
    cfg = ServeConfig(model=str(models["tool"]), model_name="tool", store=f"sqlite:///{db}", token=TOKEN, slots=8,
                      max_tokens_cap=256)
    app = create_app(cfg, state=None)
    with BackgroundServer(app) as srv:
        srv.st = app.state.serve
        srv.store = store
        srv.good = dh.register_checkpoint(store, models["good"], models["tool"], "good")
        yield srv
    app.state.serve.close()
    store.close()


def api(server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)


def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# ---- the API -------------------------------------------------------------------------------------------------
def test_api_create_list_get_step_and_errors(server):
    c = api(server)
    r = httpx.get(server.base_url + "/v1/deployments")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = [({"name": "x", "production": "nope", "candidate": server.good, "mode": "canary", "policy": POLICY},
            404, "production"),
           ({"name": "x", "production": "tool", "candidate": server.good, "mode": "canary"}, 400, "policy"),
           ({"name": "x", "production": "tool", "candidate": server.good, "mode": "canary",
             "policy": {**POLICY, "safety": {"graders": ["nope"]}}}, 400, "policy"),
           ({"name": "tool", "production": "tool", "candidate": server.good, "mode": "canary", "policy": POLICY},
            400, "name"),
           ({"name": "x", "production": "tool", "candidate": server.good, "mode": "canary", "polcy": {}}, 400, None)]
    for body, status, param in bad:
        r = c.post("/v1/deployments", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and (param is None or err["param"] == param), err
    assert "safety.graders.0: no online grader named 'nope'" in c.post("/v1/deployments", json=bad[2][0]).text
    r = c.post("/v1/deployments", json={"name": "api-dep", "production": "tool", "candidate": server.good,
                                        "mode": "canary", "policy": POLICY, "weight": 0.5})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["object"], d["id"], d["mode"], d["weight"], d["status"]) == ("deployment", "api-dep", "canary", 0.5,
                                                                          "active")
    assert c.post("/v1/deployments", json={"name": "api-dep", "production": "tool", "candidate": server.good,
                                           "mode": "canary", "policy": POLICY}).status_code == 409
    assert "api-dep" in [m.id for m in oai(server).models.list().data]
    assert [x["id"] for x in c.get("/v1/deployments").json()["data"]].count("api-dep") == 1
    got = c.get("/v1/deployments/api-dep").json()
    assert got["events"][0]["kind"] == "create" and "kpis" in got
    assert c.get("/v1/deployments/none").status_code == 404
    adv = c.post("/v1/deployments/api-dep/advance", json={"reason": "looks fine"}, headers={"X-Agentrft-Actor": "dana"})
    assert adv.status_code == 200 and adv.json()["weight"] == 0.6
    rb = c.post("/v1/deployments/api-dep/rollback")
    assert rb.status_code == 200 and rb.json()["status"] == "rolled_back" and rb.json()["candidate"] is None
    assert c.post("/v1/deployments/api-dep/rollback").status_code == 409  # nothing left to roll back to
    kinds = [(r["kind"], r["actor"]) for r in server.store.ledger(subject="api-dep")]
    assert kinds == [("deployment_create", "api"), ("deployment_advance", "dana"), ("deployment_rollback", "api")]
    # the shadow header is the server's own: a client cannot use it
    c.post("/v1/deployments", json={"name": "api-shadow", "production": "tool", "candidate": server.good,
                                    "mode": "shadow", "policy": POLICY})
    r = c.post("/v1/chat/completions", json={"model": "api-shadow", "messages": h.PLAIN, "max_tokens": 4},
               headers={"X-Agentrft-Shadow": "guess"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    c.post("/v1/deployments/api-shadow/rollback")


def test_canary_split_is_sticky_per_conversation(server):
    c = api(server)
    c.post("/v1/deployments", json={"name": "sticky", "production": "tool", "candidate": server.good,
                                    "mode": "canary", "policy": {**POLICY, "min_samples": 200}, "weight": 0.5})
    client = oai(server)

    def arm(conv: str, user: str | None = None) -> str:
        kw = {"user": user} if user else {}
        raw = client.chat.completions.with_raw_response.create(model="sticky", messages=h.PLAIN, max_tokens=4,
                                                               temperature=0, extra_headers={"X-Trace-Id": conv}
                                                               if conv else {}, **kw)
        return raw.headers["x-agentrft-checkpoint"]

    first = {f"c{i}": arm(f"c{i}") for i in range(12)}
    assert set(first.values()) == {PROD, server.good}  # both arms used at weight 0.5
    assert {k: arm(k) for k in first} == first  # and each conversation stays on its arm
    assert len({arm("", user="u-7") for _ in range(4)}) == 1  # sticky per user when there is no trace id
    for conv in ("c0", "c1", "c2"):  # /v1/completions routes the same way
        raw = client.completions.with_raw_response.create(model="sticky", prompt="hello", max_tokens=3,
                                                          extra_headers={"X-Trace-Id": conv})
        assert raw.headers["x-agentrft-checkpoint"] == first[conv]
    server.st.traces.flush()
    tr = server.store.traces(deployment="sticky")
    assert len(tr) == 31 and {t["arm"] for t in tr} == {"production", "candidate"}
    assert {t["endpoint"] for t in tr} == {"chat.completions", "completions"}
    assert all((t["arm"] == "candidate") == (t["checkpoint_id"] == server.good) for t in tr)
    c.post("/v1/deployments/sticky/rollback")


def test_shadow_requests_never_draw_on_the_clients_rate_limit(server):
    from agentrft.serve.limits import TokenRateLimiter

    c = api(server)
    assert c.post("/v1/deployments", json={"name": "limited", "production": "tool", "candidate": server.good,
                                           "mode": "shadow", "policy": {**POLICY, "shadow": {"min_samples": 500}}}
                  ).status_code == 200
    server.st.limiter = TokenRateLimiter(100_000)
    try:
        client = oai(server)
        for i in range(3):
            client.chat.completions.create(model="limited", messages=h.PLAIN, max_tokens=4,
                                           extra_headers={"X-Trace-Id": f"lim-{i}"})
        deadline = time.time() + 60
        while server.st.deploy._tasks and time.time() < deadline:
            time.sleep(0.1)
        levels = dict(server.st.limiter._level)
        assert set(levels) == {f"Bearer {TOKEN}", "shadow:limited"}  # two budgets: the client's, the shadow's
        server.st.traces.flush()
        assert len([t for t in server.store.traces(deployment="limited") if t["arm"] == "shadow"]) == 3
    finally:
        server.st.limiter = None
        c.post("/v1/deployments/limited/rollback")


# ---- what it must show -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_planted_bad_canary_rolls_back_and_no_client_sees_it_after(server, bad_model, models):
    bad = dh.register_checkpoint(server.store, bad_model, models["tool"], "bad")
    c = api(server)
    r = c.post("/v1/deployments", json={"name": "support-agent", "production": "tool", "candidate": bad,
                                        "mode": "canary", "policy": POLICY})
    assert r.status_code == 200, r.text

    def rolled_back() -> bool:
        return server.store.get_deployment("support-agent")["status"] == "rolled_back"

    load = dh.Load(oai(server), "support-agent", n=150, concurrency=3).run(until=rolled_back, extra_after=24)
    assert not load.errors, load.errors[:3]
    dep = server.store.get_deployment("support-agent")
    assert dep["status"] == "rolled_back" and dep["candidate"] is None and dep["state"]["rolled_back"] == bad
    (rec,) = server.store.ledger(kind="deployment_rollback", subject="support-agent")
    ev = rec["data"]["evidence"]
    assert rec["data"]["rule"] == "safety" and rec["data"]["auto"] and rec["actor"] == "controller"
    first = ev["safety"]["first_violations"][0]["violations"][0]["violations"][0]
    assert first["kind"] == "forbidden_tool" and first["rule"] == dh.FORBIDDEN
    # within the policy's sample budget: before the first step's min_samples, never past max_samples
    assert ev["safety"]["violations"] >= 1 and ev["safety"]["n"] <= POLICY["min_samples"]
    assert [e["kind"] for e in server.store.deployment_events("support-agent")] == ["create", "rollback"]
    t_rb = _t(rec["created_at"])
    for a in load.answers:  # every response: which weights answered, by header and by body
        assert a.checkpoint == a.fingerprint and a.checkpoint in (PROD, bad)
        if a.sent > t_rb:
            assert a.checkpoint == PROD and dh.FORBIDDEN not in a.tools, a
    after = [a for a in load.answers if a.sent > t_rb]
    assert len(after) >= 20 and any(a.checkpoint == bad for a in load.answers)
    server.st.traces.flush()
    tr = server.store.traces(deployment="support-agent")
    assert {t["arm"] for t in tr} == {"production", "candidate"}
    assert all((t["arm"] == "candidate") == (t["checkpoint_id"] == bad) for t in tr)
    assert server.store.verify_ledger()["ok"]


@pytest.mark.slow
def test_good_candidate_is_advanced_to_full_automatically(server):
    c = api(server)
    assert c.post("/v1/deployments", json={"name": "good-agent", "production": "tool", "candidate": server.good,
                                           "mode": "canary", "policy": POLICY}).status_code == 200

    def full() -> bool:
        return server.store.get_deployment("good-agent")["mode"] == "full"

    load = dh.Load(oai(server), "good-agent", n=300, concurrency=3, seed=1).run(until=full, extra_after=12)
    assert not load.errors, load.errors[:3]
    dep = server.store.get_deployment("good-agent")
    assert (dep["mode"], dep["status"], dep["production"], dep["previous"]) == ("full", "completed", server.good,
                                                                                "tool")
    evs = server.store.deployment_events("good-agent")
    assert [(e["kind"], e["weight"]) for e in evs] == [("create", 0.3), ("advance", 0.6), ("advance", 1.0)]
    recs = server.store.ledger(kind="deployment_advance", subject="good-agent")
    assert len(recs) == 2 and all(r["data"]["auto"] for r in recs)
    assert all(k["verdict"] == "not_worse" for r in recs for k in r["data"]["evidence"]["kpis"])
    t_full = _t(recs[-1]["created_at"])
    assert all(a.checkpoint == server.good for a in load.answers if a.sent > t_full + 0.05)
    # the previous production is one command away
    rb = c.post("/v1/deployments/good-agent/rollback", json={"reason": "by hand after full"}).json()
    assert rb["production"] == "tool" and rb["previous"] == server.good


@pytest.mark.slow
def test_shadow_answers_are_recorded_and_graded_never_returned(server, bad_model, models):
    bad = dh.register_checkpoint(server.store, bad_model, models["tool"], "bad-shadow")
    c = api(server)
    assert c.post("/v1/deployments", json={"name": "shadowed", "production": "tool", "candidate": bad,
                                           "mode": "shadow", "policy": POLICY}).status_code == 200
    load = dh.Load(oai(server), "shadowed", n=24, concurrency=3, seed=2).run()
    assert not load.errors and len(load.answers) == 24
    for a in load.answers:  # every response came from production
        assert a.checkpoint == PROD == a.fingerprint and dh.FORBIDDEN not in a.tools
    deadline = time.time() + 120
    while server.st.deploy._tasks and time.time() < deadline:  # the shadow queue drains in the background
        time.sleep(0.2)
    server.st.traces.flush()
    tr = server.store.traces(deployment="shadowed")
    shadow = [t for t in tr if t["arm"] == "shadow"]
    assert shadow and all(t["checkpoint_id"] == bad for t in shadow)
    assert {t["trace_id"] for t in shadow} <= {a.conv for a in load.answers}  # the client's conversations
    assert any(dh.FORBIDDEN in [x["function"]["name"] for x in t["tool_calls"]] for t in shadow)
    # graded, and the safety gate applies in shadow too: the candidate is rolled back, production unaffected
    deadline = time.time() + 30
    while server.store.get_deployment("shadowed")["status"] != "rolled_back" and time.time() < deadline:
        time.sleep(0.2)
    dep = server.store.get_deployment("shadowed")
    assert dep["status"] == "rolled_back" and dep["production"] == "tool"
    obs = server.store.deployment_observations("shadowed", arm="shadow")
    assert obs and any(o["safety_violation"] for o in obs) and all("safety" in o["scores"] for o in obs if o["ok"])


# ---- restart mid-canary ----------------------------------------------------------------------------------------

def _start(models, db: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "agentrft.cli", "serve", "--model", str(models["tool"]), "--model-name", "tool",
           "--store", f"sqlite:///{db}", "--port", str(port), "--token", TOKEN, "--slots", "8"]
    p = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()[-2000:]}")
        time.sleep(0.3)
    p.kill()
    raise AssertionError("server did not start")


@pytest.mark.slow
def test_restart_mid_canary_continues_split_counts_and_decision_state(models, tmp_path):
    db = tmp_path / "store.db"
    store = RunStore(f"sqlite:///{db}")
    good = dh.register_checkpoint(store, models["good"], models["tool"], "good")
    port = free_port()
    log = tmp_path / "serve.log"
    policy = {**POLICY, "min_samples": 20}  # (the replays below must not complete the step by themselves)
    p = _start(models, db, port, log)

    class S:
        base_url = f"http://127.0.0.1:{port}"
        url = base_url + "/v1"

    try:
        r = api(S).post("/v1/deployments", json={"name": "agent", "production": "tool", "candidate": good,
                                                 "mode": "canary", "policy": policy})
        assert r.status_code == 200, r.text
        first = dh.Load(oai(S), "agent", n=18, concurrency=3, seed=3).run()
        assert not first.errors
        deadline = time.time() + 60  # every trace written and observed before the kill
        while len(store.deployment_observations("agent")) < 18 and time.time() < deadline:
            time.sleep(0.2)
        before = store.get_deployment("agent")
        obs_before = store.deployment_observations("agent")
        n_cand = sum(o["arm"] == "candidate" for o in obs_before)
        assert len(obs_before) == 18 and 0 < n_cand < policy["min_samples"] and before["weight"] == 0.3
        os.killpg(p.pid, signal.SIGKILL)  # no goodbye
        p.wait(30)

        p = _start(models, db, port, log)
        after = store.get_deployment("agent")
        assert (after["weight"], after["phase"], after["stage"], after["mode"], after["state"]["safety"]) == \
            (before["weight"], before["phase"], before["stage"], before["mode"], before["state"]["safety"])
        # the same conversations land on the same arms
        client = oai(S)
        for a in first.answers:
            raw = client.chat.completions.with_raw_response.create(
                model="agent", messages=dh.question(a.i), tools=dh.TOOLS, temperature=0, max_tokens=40,
                extra_headers={"X-Trace-Id": a.conv})
            assert raw.headers["x-agentrft-checkpoint"] == a.checkpoint, a
        assert store.get_deployment("agent")["weight"] == 0.3

        def advanced() -> bool:
            return store.get_deployment("agent")["weight"] > 0.3

        more = dh.Load(oai(S), "agent", n=150, concurrency=3, seed=4).run(until=advanced, extra_after=0)
        assert not more.errors
        deadline = time.time() + 30
        while not advanced() and time.time() < deadline:
            time.sleep(0.2)
        assert advanced()
        (rec,) = store.ledger(kind="deployment_advance", subject="agent")
        n_step = rec["data"]["evidence"]["arms"]["candidate"]["requests"]
        obs0 = store.deployment_observations("agent", phase=0, arm="candidate")
        # the step was decided on samples of both lives: those observed before the kill are among them
        assert {o["trace_row"] for o in obs_before if o["arm"] == "candidate"} <= {o["trace_row"] for o in obs0}
        assert n_step >= policy["min_samples"] and store.get_deployment("agent")["state"]["safety"]["n"] >= n_step
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        store.close()
