"""The rollout controller on served traces recorded in a real store (SQLite and the live PostgreSQL), graded by the
real online graders: a candidate that calls a forbidden tool is rolled back at its first violation with the evidence
in the events and the ledger; a good one walks the weight schedule to full; a slower one trips the latency guard; a
worse KPI rolls back through the sequential test; drift holds the canary; a new controller (a restarted server)
continues from the stored state; by-hand steps and their errors. The served end-to-end version is
tests/test_deploy_serve.py."""

from __future__ import annotations

import json
import uuid

import pytest

from agentrft.gate import rollout as ro

FORBIDDEN = "export_customers"
POLICY = {
    "name": "test",
    "schedule": [0.1, 0.5, 1.0],
    "shadow": {"fraction": 1.0, "min_samples": 10},
    "min_samples": 10,
    "max_samples": 200,
    "graders": [{"type": "safety", "name": "safety", "forbidden_tools": [FORBIDDEN], "pii_patterns": ["email"]},
                {"type": "tool_efficiency", "name": "efficiency", "target_calls": 1, "budget": 4}],
    "safety": {"graders": ["safety"], "max_violation_rate": 0.0},
    "kpis": [{"name": "efficiency", "margin": 0.2}],
    "guards": {"min_samples": 10, "max_error_rate": 0.2, "max_latency_p95_ratio": 3.0},
}


def call(name: str) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps({"key": "K1"})}}


def serve(st, dep: str, arm: str, *, tools=("lookup",), text="", latency=0.1, status=200, conv=None, user="q",
          ckpt=None) -> str:
    """Record one served request the way the server's trace writer does."""
    tid = conv or f"trace_{uuid.uuid4().hex[:10]}"
    calls = [call(t) for t in tools]
    st.record_traces([{"request_id": f"req_{uuid.uuid4().hex}", "trace_id": tid, "model": dep, "deployment": dep,
                       "arm": arm, "checkpoint_id": ckpt or arm, "status": status, "latency_s": latency,
                       "messages": [{"role": "user", "content": user}],
                       "choices": [{"index": 0, "finish_reason": "tool_calls" if calls else "stop",
                                    "message": {"role": "assistant", "content": text or None,
                                                "tool_calls": calls or None}}],
                       "tool_calls": calls}])
    return tid


def traffic(st, dep, n, weight, **cand_kw):
    """``n`` requests split like the server splits them (every 1/weight-th to the candidate)."""
    every = max(1, round(1 / weight))
    for i in range(n):
        if i % every == 0:
            serve(st, dep, "candidate", **cand_kw)
        else:
            serve(st, dep, "production")


@pytest.fixture()
def st(store_url):
    from agentrft.store import RunStore

    s = RunStore(store_url)
    yield s
    s.close()


def test_forbidden_tool_rolls_back_at_the_first_violation_with_evidence(st):
    ro.create_deployment(st, "agent", production="prod-ckpt", candidate="bad-ckpt", mode="canary", policy=POLICY,
                         actor="alice")
    judges: dict = {}
    traffic(st, "agent", 30, 0.1)  # 3 clean candidate answers
    assert ro.tick(st, "agent", judges)["action"] == "none"
    serve(st, "agent", "candidate", tools=("lookup", FORBIDDEN))
    traffic(st, "agent", 5, 0.5)
    d = ro.tick(st, "agent", judges)
    assert d["action"] == "rollback" and d["rule"] == "safety"
    dep = st.get_deployment("agent")
    assert dep["status"] == "rolled_back" and dep["candidate"] is None and dep["production"] == "prod-ckpt"
    assert dep["mode"] == "full" and dep["state"]["rolled_back"] == "bad-ckpt"
    assert dep["state"]["safety"]["n"] == 7 and dep["state"]["safety"]["violations"] == 1
    (ev,) = st.deployment_events("agent", kind="rollback")
    assert ev["data"]["auto"] is True and ev["data"]["rule"] == "safety" and ev["actor"] == "controller"
    (rec,) = st.ledger(kind="deployment_rollback")
    assert rec["subject"] == "agent" and rec["data"]["rolled_back"] == "bad-ckpt"
    fv = rec["data"]["evidence"]["safety"]["first_violations"][0]
    assert fv["violations"][0]["violations"][0]["kind"] == "forbidden_tool"
    assert rec["data"]["evidence"]["arms"]["candidate"]["safety_violations"] == 1
    assert [r["kind"] for r in st.ledger()] == ["deployment_create", "deployment_rollback"]
    assert st.verify_ledger()["ok"]
    # nothing more to decide, and by hand there is no candidate left to advance or roll back to
    assert ro.tick(st, "agent", judges) is None
    with pytest.raises(ro.DeployError, match="no candidate to advance"):
        ro.advance(st, "agent")


def test_good_candidate_walks_the_schedule_to_full(st):
    ro.create_deployment(st, "agent", production="v1", candidate="v2", mode="shadow", policy=POLICY)
    judges: dict = {}
    for _ in range(12):  # shadow: both answer every request
        tid = serve(st, "agent", "production")
        serve(st, "agent", "shadow", conv=tid)
    assert ro.tick(st, "agent", judges)["action"] == "advance"
    dep = st.get_deployment("agent")
    assert (dep["mode"], dep["weight"], dep["phase"]) == ("canary", 0.1, 1)
    traffic(st, "agent", 120, 0.1)
    assert ro.tick(st, "agent", judges)["action"] == "advance"
    assert st.get_deployment("agent")["weight"] == 0.5
    traffic(st, "agent", 24, 0.5)
    d = ro.tick(st, "agent", judges)
    assert d["action"] == "advance"
    dep = st.get_deployment("agent")
    assert (dep["mode"], dep["production"], dep["previous"], dep["candidate"], dep["status"]) == \
        ("full", "v2", "v1", None, "completed")
    assert [e["weight"] for e in st.deployment_events("agent")] == [0.0, 0.1, 0.5, 1.0]  # the weight's history
    assert [r["kind"] for r in st.ledger()] == ["deployment_create"] + ["deployment_advance"] * 3
    kpi = st.ledger()[-1]["data"]["evidence"]["kpis"][0]
    assert kpi["kpi"] == "efficiency" and kpi["verdict"] == "not_worse" and kpi["n_candidate"] >= 10
    # production alone is still graded and observed (its KPIs keep their history); nothing is decided
    n = len(st.deployment_observations("agent"))
    serve(st, "agent", "production", tools=("lookup", FORBIDDEN))
    assert ro.tick(st, "agent", judges) is None
    (last,) = st.deployment_observations("agent")[n:]
    assert last["arm"] == "production" and last["safety_violation"] and st.get_deployment("agent")["mode"] == "full"
    # the previous production is one command away
    back = ro.rollback(st, "agent", actor="bob", reason="customer complaints")
    assert (back["production"], back["previous"], back["status"]) == ("v1", "v2", "rolled_back")
    assert st.ledger()[-1]["data"]["reason"] == "customer complaints" and st.ledger()[-1]["actor"] == "bob"


def test_guards_and_kpis_roll_back(st):
    ro.create_deployment(st, "slow", production="v1", candidate="v2", mode="canary", policy=POLICY)
    for _ in range(12):
        serve(st, "slow", "candidate", latency=1.0)
        serve(st, "slow", "production", latency=0.1)
    d = ro.tick(st, "slow", {})
    assert d["rule"] == "guards.max_latency_p95_ratio" and "10.00x" in d["reason"]
    ro.create_deployment(st, "chatty", production="v1", candidate="v2", mode="canary", policy=POLICY)
    judges: dict = {}
    for i in range(200):  # the candidate calls 4 tools (efficiency 0), production 1 (efficiency 1)
        serve(st, "chatty", "candidate", tools=("lookup",) * 4)
        serve(st, "chatty", "production")
        if i % 20 == 19:
            d = ro.tick(st, "chatty", judges)
            if d and d["action"] != "none":
                break
    assert d["action"] == "rollback" and d["rule"] == "kpis.efficiency"
    k = d["evidence"]["kpis"][0]
    assert k["verdict"] == "worse" and k["hi"] < -0.2 and k["n_candidate"] == 20  # decided at the first look


def test_a_new_controller_continues_from_the_stored_state(st):
    """A restarted server builds a new controller: it must neither re-observe traces nor lose counts."""
    ro.create_deployment(st, "agent", production="v1", candidate="v2", mode="canary", policy=POLICY)
    traffic(st, "agent", 40, 0.1)
    ro.tick(st, "agent", {})
    before = st.get_deployment("agent")
    assert len(st.deployment_observations("agent")) == 40 and before["state"]["safety"]["n"] == 4
    ro.tick(st, "agent", {})  # a fresh controller, nothing new: nothing observed twice
    assert len(st.deployment_observations("agent")) == 40
    traffic(st, "agent", 80, 0.1)
    assert ro.tick(st, "agent", {})["action"] == "advance"  # 12 candidate samples now, from both lives
    assert st.get_deployment("agent")["state"]["safety"]["n"] == 12


def test_drift_holds_the_canary_and_advance_by_hand_releases_it(st, tmp_path):
    ref = tmp_path / "train.jsonl"
    ref.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"What color is K{i}?"}],
                                         "tools": [{"type": "function", "function": {"name": "lookup"}}]})
                             for i in range(20)) + "\n")
    pol = {**POLICY, "drift": {"reference": str(ref), "window": 10, "min_samples": 10}}
    ro.create_deployment(st, "agent", production="v1", candidate="v2", mode="canary", policy=pol)
    for i in range(10):
        serve(st, "agent", "production", user=f"What color is K{i}?")
    assert ro.tick(st, "agent", {})["action"] == "none" and st.get_deployment("agent")["status"] == "active"
    for i in range(12):  # another language entirely
        serve(st, "agent", "candidate" if i % 2 else "production", user="Bitte stornieren Sie meine Bestellung sofort")
    ro.tick(st, "agent", {})
    dep = st.get_deployment("agent")
    assert dep["status"] == "held"
    (hold,) = st.deployment_events("agent", kind="hold")
    assert hold["data"]["alerts"][0]["signal"] == "unseen_tokens" and st.ledger()[-1]["kind"] == "deployment_hold"
    traffic(st, "agent", 60, 0.5)  # plenty of clean samples: held, so no automatic advance
    assert ro.tick(st, "agent", {})["action"] == "held" and st.get_deployment("agent")["weight"] == 0.1
    dep = ro.advance(st, "agent", actor="carol", reason="drift reviewed: new market")
    assert dep["status"] == "active" and dep["weight"] == 0.5


def test_create_errors_are_answers(st):
    with pytest.raises(ro.DeployError, match="needs a rollout policy"):
        ro.create_deployment(st, "a", production="v1", candidate="v2", mode="canary")
    with pytest.raises(ro.DeployError, match="needs a candidate"):
        ro.create_deployment(st, "a", production="v1", mode="shadow", policy=POLICY)
    with pytest.raises(ro.DeployError, match="not one of shadow, canary, full"):
        ro.create_deployment(st, "a", production="v1", candidate="v2", mode="blue", policy=POLICY)
    with pytest.raises(ro.DeployError, match="use letters, digits"):
        ro.create_deployment(st, "a b", production="v1", candidate="v2", mode="canary", policy=POLICY)
    from agentrft.gate.rollout_policy import RolloutPolicyError

    with pytest.raises(RolloutPolicyError, match="safety.graders.0: no online grader named 'x'"):
        ro.create_deployment(st, "a", production="v1", candidate="v2", mode="canary",
                             policy={**POLICY, "safety": {"graders": ["x"]}})
    ro.create_deployment(st, "a", production="v1", candidate="v2", mode="canary", policy=POLICY)
    with pytest.raises(ro.DeployError, match="exists already") as e:
        ro.create_deployment(st, "a", production="v1", candidate="v2", mode="canary", policy=POLICY)
    assert e.value.status == 409
    with pytest.raises(ro.DeployError, match="no deployment named 'zz'") as e:
        ro.status(st, "zz")
    assert e.value.status == 404


def test_server_errors_count_against_the_arm_and_client_errors_do_not(st):
    ro.create_deployment(st, "agent", production="v1", candidate="v2", mode="canary", policy=POLICY)
    for i in range(12):
        serve(st, "agent", "candidate", status=400 if i % 2 else 200)  # 6 refused for the client's mistake
        serve(st, "agent", "production")
    assert ro.tick(st, "agent", {})["action"] == "none"
    assert len(st.deployment_observations("agent", arm="candidate")) == 6
    for _ in range(6):
        serve(st, "agent", "candidate", status=503)
    d = ro.tick(st, "agent", {})
    assert d["action"] == "rollback" and d["rule"] == "guards.max_error_rate"
    assert d["evidence"]["arms"]["candidate"]["error_rate"] == 0.5


def test_two_controllers_over_one_store_never_both_decide(store_url):
    """Two servers sharing a store run two controllers (own connection pools, own judges) over the same traces at
    once: every trace is observed once, and the rollback happens once (one event, one ledger record)."""
    import threading

    from agentrft.store import RunStore

    a, b = RunStore(store_url), RunStore(store_url)
    try:
        ro.create_deployment(a, "agent", production="v1", candidate="v2", mode="canary", policy=POLICY)
        for i in range(60):
            serve(a, "agent", "candidate" if i % 5 == 0 else "production",
                  tools=("lookup", FORBIDDEN) if i == 45 else ("lookup",))
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop(st) -> None:
            judges: dict = {}
            try:
                while not stop.is_set():
                    ro.tick(st, "agent", judges)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=loop, args=(s,)) for s in (a, b)]
        for t in ts:
            t.start()
        import time

        deadline = time.time() + 60
        while a.get_deployment("agent")["status"] != "rolled_back" and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in ts:
            t.join()
        assert not errors, errors
        obs = a.deployment_observations("agent")
        assert len(obs) == 60 and len({o["trace_row"] for o in obs}) == 60
        assert [e["kind"] for e in a.deployment_events("agent")] == ["create", "rollback"]
        assert [r["kind"] for r in a.ledger()] == ["deployment_create", "deployment_rollback"]
        safety = a.get_deployment("agent")["state"]["safety"]
        assert (safety["n"], safety["violations"]) == (12, 1)
        assert a.verify_ledger()["ok"]
    finally:
        a.close()
        b.close()
