"""The dashboard's pages, queries and actions over a synthetic store (fast; the browser tests are test_ui_browser.py).

Pages are requested through FastAPI's TestClient: each page's content is checked against the store, every bad input
gets an error page with a 4xx status, POSTs need the form key and a same-origin Origin, the token guards every page,
and the trajectory browser's keyset pages visit every matching trajectory exactly once — on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from agentrft.store import RunStore, StoreError
from agentrft.ui import make_ui_app
from agentrft.ui.cli import check_bind
from agentrft.ui.queries import FilterError, TrajFilter, list_trajectories
from agentrft.ui.synthetic import fill_run

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def store(tmp_path):
    s = RunStore.for_path(tmp_path / "agentrft.db")
    yield s
    s.close()


@pytest.fixture
def run(store):
    return fill_run(store, steps=6, eval_every=3, rows_per_step=4, group=3, valid_rows=5)


@pytest.fixture
def client(store):
    return TestClient(make_ui_app(store))


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_runs_page_lists_runs_with_status_model_and_steps(client, store, run):
    r = client.get("/")
    assert r.status_code == 200
    info = store.get_run(run)
    assert f'href="/runs/{run}"' in r.text and "succeeded" in r.text and "models/tiny" in r.text
    row = re.search(rf'<tr class="run" data-run="{run}">(.*?)</tr>', r.text, re.S).group(1)
    assert f">{info['latest_step']}<" in row and info["created_at"][:19] in row


def test_run_page_shows_checkpoints_timings_config_alerts_and_the_metrics_endpoint(client, store, run):
    r = client.get(f"/runs/{run}")
    assert r.status_code == 200
    ckpts = store.checkpoints(run)
    table = re.search(r'<table id="checkpoints">(.*?)</table>', r.text, re.S).group(1)
    assert table.count("<tr>") == len(ckpts) + 1  # header + one per checkpoint
    assert f"{ckpts[-1]['metrics']['pass_rate']:.3f}" in table
    assert "time/sampling" in r.text and "entropy_collapse" in r.text and "&#34;batch_size&#34;: 4" in r.text
    data = client.get(f"/api/runs/{run}/metrics").json()
    train = data["series"]["train"]
    assert [p["step"] for p in train] == [m["step"] for m in store.step_metrics(run, "train")]
    assert train[0]["kl"] == store.step_metrics(run, "train")[0]["kl"] and "grader/process" in train[0]
    assert [a["signal"] for a in data["alerts"]] == ["entropy_collapse"] and data["alerts"][0]["step"] == 3
    assert client.get("/api/runs/nope/metrics").status_code == 404
    # polling an unchanged run costs a 304; a new record changes the answer
    first = client.get(f"/api/runs/{run}/metrics")
    etag = first.headers["etag"]
    assert client.get(f"/api/runs/{run}/metrics", headers={"If-None-Match": etag}).status_code == 304
    import random

    from agentrft.ui.synthetic import synthetic_trajectory

    store.record_step(run, 7, "train", {"reward_mean": 0.75, "kl": 0.5},
                      [synthetic_trajectory(random.Random(1), "etag", 7, 0, 0, "train")])
    again = client.get(f"/api/runs/{run}/metrics", headers={"If-None-Match": etag})
    assert again.status_code == 200 and again.headers["etag"] != etag
    assert again.json()["series"]["train"][-1] == {"step": 7, "reward_mean": 0.75, "kl": 0.5}


def test_trajectory_page_shows_turns_tool_calls_grades_versions_and_turn_scores(client, store, run):
    t = next(t for t in store.trajectories(run, split="train") if t["num_tool_calls"] >= 2)
    r = client.get(f"/t/{t['trace_id']}")
    assert r.status_code == 200
    for c in t["tool_calls"]:
        assert c["name"] in r.text and c["status"] in r.text and f"{c['latency_s']:.3f}" in r.text
        assert json.dumps(json.loads(c["arguments"]), indent=2).replace('"', "&#34;") in r.text
    g = {x["grader_name"]: x for x in t["grades"]}
    assert g["correct"]["version"][:12] in r.text and g["process"]["version"][:12] in r.text
    assert "plan=0.500" in r.text  # a sub-score
    assert f"process: {g['process']['turn_scores'][1]:.2f}" in _text(r.text)  # per-turn score next to its turn
    assert r.text.count('class="turn"') == t["num_turns"]


def test_item_across_checkpoints_and_compare(client, store, run):
    r = client.get(f"/runs/{run}/item/2")
    assert r.status_code == 200
    steps = re.findall(r'class="col" data-step="(\d+)"', r.text)
    assert steps == [str(s) for s in sorted({c["step"] for c in store.checkpoints(run)})]
    r = client.get(f"/runs/{run}/compare?a=0&b=6")
    assert r.status_code == 200 and "reward" in r.text and "95% interval" in r.text
    from agentrft.evals.compare import compare_trajectories

    cmp = compare_trajectories(store.trajectories(run, step=0, split="valid"),
                               store.trajectories(run, step=6, split="valid"), n_boot=1000)
    d = cmp["metrics"]["reward"]
    assert f"{d['diff']:+.3f}" in r.text and f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" in r.text
    assert client.get(f"/runs/{run}/compare?a=0&b=5").status_code == 404  # no eval at step 5


def test_registry_page_shows_gates_and_evidence(client, store, run):
    store.add_registry_entry(run, f"{run}:step-6", status="refused", grader_versions={"correct": "v1"},
                             evidence={"gates": [{"gate": "reward_delta", "passed": False, "waived": False,
                                                  "detail": "Δ reward +0.01 < 0.05"}]})
    r = client.get("/registry")
    assert r.status_code == 200 and "refused" in r.text and "reward_delta: FAIL" in r.text and "+0.01" in r.text


def test_bad_inputs_give_pages_that_say_so(client, run):
    cases = {
        "/runs/run-nope": (404, "no run 'run-nope'"),
        "/t/no-such-trace": (404, "no trajectory with trace_id 'no-such-trace'"),
        "/trajectories?step=abc": (400, "step: 'abc' is not an integer"),
        "/trajectories?reward_min=0.9&reward_max=0.1": (400, "reward_min (0.9) is above reward_max (0.1)"),
        "/trajectories?outcome=exploded": (400, "outcome: 'exploded' is not one of"),
        "/trajectories?run=run-nope": (404, "no run 'run-nope'"),
        "/trajectories?after=garbage": (400, "is not a page cursor"),
        "/trajectories?limit=100000": (400, "limit: 100000"),
        f"/runs/{run}/item/x": (400, "row: 'x' is not an integer"),
        f"/runs/{run}/item/999": (404, "no validation trajectories of row 999"),
        f"/runs/{run}/compare?a=zz": (400, "a: 'zz' is not an integer"),
        "/audit?run=run-nope": (404, "no run 'run-nope'"),
        "/no/such/page": (404, "no such page"),
    }
    for url, (status, says) in cases.items():
        r = client.get(url)
        assert r.status_code == status, (url, r.status_code)
        assert says.replace("'", "&#39;") in r.text, (url, _text(r.text))
        assert "Traceback" not in r.text and 'id="error"' in r.text


def test_trajectory_filters_match_a_python_filter_and_keyset_pages_cover_each_row_once(store, run):
    other = fill_run(store, steps=3, eval_every=3, seed=1, name="other")
    everything = store.trajectories(run) + store.trajectories(other)
    _check_filters(store, everything, run)


def _check_filters(store, everything, run):
    cases = [
        ({}, lambda t: True),
        ({"run": run}, lambda t: t["run_id"] == run),
        ({"run": run, "split": "valid"}, lambda t: t["run_id"] == run and t["split"] == "valid"),
        ({"step": "3"}, lambda t: t["step"] == 3),
        ({"reward_min": "0.25", "reward_max": "0.75"}, lambda t: 0.25 <= t["reward"] <= 0.75),
        ({"tool": "search"}, lambda t: any(c["name"] == "search" for c in t["tool_calls"])),
        ({"grader_error": "any"}, lambda t: any(g["errors"] for g in t["grades"])),
        ({"grader_error": "other_error"}, lambda t: any("other_error" in g["errors"] for g in t["grades"])),
        ({"grader_error": "othe__error"}, lambda t: False),  # "_" is literal here (as a LIKE wildcard it matches other_error)
        ({"outcome": "completed", "tool": "read_file", "run": run},
         lambda t: t["run_id"] == run and t["outcome"] == "completed"
         and any(c["name"] == "read_file" for c in t["tool_calls"])),
    ]
    for params, pred in cases:
        want = sorted(t["trace_id"] for t in everything if pred(t))
        got, after, pages = [], None, 0
        while True:
            f = TrajFilter.parse({**params, "limit": "7", **({"after": after} if after else {})})
            page = list_trajectories(store, f)
            assert page["total"] == len(want), params
            got += [r["trace_id"] for r in page["rows"]]
            pages += 1
            after = page["next"]
            if after is None:
                break
        assert sorted(got) == want and len(got) == len(set(got)), params  # each matching row exactly once
        assert pages == max(1, -(-len(want) // 7)), params
    assert sum(1 for t in everything if any(g["errors"] for g in t["grades"])) > 0  # the flag case is not vacuous


def test_trajectories_page_pages_with_a_next_link(client, store, run):
    r = client.get(f"/trajectories?run={run}&split=train&limit=25")
    assert r.status_code == 200
    n = store.count_trajectories(run, "train")
    assert f"{n} matching" in r.text and r.text.count('class="traj"') == 25
    nxt = re.search(r'id="next-page" href="\?([^"]+)"', r.text).group(1).replace("&amp;", "&")
    r2 = client.get(f"/trajectories?{nxt}")
    assert r2.status_code == 200 and r2.text.count('class="traj"') == min(25, n - 25)
    first = set(re.findall(r'href="/t/([^"]+)"', r.text))
    assert not first & set(re.findall(r'href="/t/([^"]+)"', r2.text))


def test_filter_parse_errors_name_the_parameter():
    for q, msg in [({"step": "1.5"}, "step"), ({"split": "test"}, "split"), ({"reward_max": "inf"}, "reward_max"),
                   ({"grader_error": "a b"}, "grader_error"), ({"limit": "0"}, "limit")]:
        with pytest.raises(FilterError, match=msg):
            TrajFilter.parse(q)


# ---- approvals ------------------------------------------------------------------------------------------------
def test_approval_store_methods_record_who_and_when_once(store):
    a = store.enqueue_approval("tr-1", "refund", {"amount": 30}, run_id=None)
    b = store.enqueue_approval("tr-2", "delete", '{"id": 1}')
    assert [x["id"] for x in store.list_approvals("pending")] == [a, b]
    d = store.decide_approval(a, "denied", decided_by="ann", reason="too much")
    assert d["status"] == "denied" and d["decided_by"] == "ann" and d["decided_at"] and d["reason"] == "too much"
    assert json.loads(store.get_approval(a)["arguments"]) == {"amount": 30}
    with pytest.raises(StoreError, match="already denied by ann"):
        store.decide_approval(a, "approved", decided_by="bob")
    with pytest.raises(ValueError, match="decided_by"):
        store.decide_approval(b, "approved", decided_by=" ")
    with pytest.raises(ValueError, match="decision"):
        store.decide_approval(b, "maybe", decided_by="bob")
    with pytest.raises(StoreError, match="no approval request 99"):
        store.decide_approval(99, "approved", decided_by="bob")
    assert [x["id"] for x in store.list_approvals("pending")] == [b]


def test_approval_form_records_the_decision_and_refuses_forged_posts(client, store):
    aid = store.enqueue_approval("tr-9", "wire_money", {"to": "x"})
    page = client.get("/approvals").text
    assert "wire_money" in page
    key = re.search(r'name="form_key" value="([^"]+)"', page).group(1)
    form = {"decision": "approve", "decided_by": "carol", "reason": "ok", "form_key": key}
    assert client.post(f"/approvals/{aid}", data={**form, "form_key": "forged"}).status_code == 403
    assert client.post(f"/approvals/{aid}", data=form, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post(f"/approvals/{aid}", data={**form, "decided_by": ""}).status_code == 400
    assert client.post(f"/approvals/{aid}", data={**form, "decided_by": "x" * 201}).status_code == 400
    assert client.post(f"/approvals/{aid}", data=form, headers={"Origin": "null"}).status_code == 403
    assert client.post(f"/approvals/{aid}", data={**form, "decision": "later"}).status_code == 400
    assert client.post("/approvals/12345", data=form).status_code == 404
    assert store.get_approval(aid)["status"] == "pending"  # nothing above changed it
    r = client.post(f"/approvals/{aid}", data=form, headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303
    got = store.get_approval(aid)
    assert got["status"] == "approved" and got["decided_by"] == "carol" and got["decided_at"]
    r = client.post(f"/approvals/{aid}", data={**form, "decision": "deny"})
    assert r.status_code == 409 and "already approved by carol" in r.text


def test_audit_page_records_a_verdict(client, store, run):
    page = client.get(f"/audit?run={run}&n=2").text
    traces = re.findall(r'name="trace_id" value="([^"]+)"', page)
    assert len(traces) == 2 * len(store.checkpoints(run))
    key = re.search(r'name="form_key" value="([^"]+)"', page).group(1)
    r = client.post("/audit", data={"form_key": key, "trace_id": traces[0], "verdict": "hack", "reviewer": "dan",
                                    "note": "gamed the check", "run": run, "n": "2"})
    assert r.status_code == 200 and "Verdict on" in r.text
    row = re.search(rf'<tr data-trace="{traces[0]}">(.*?)</tr>', r.text, re.S).group(1)
    assert "<b>hack</b> by dan" in row  # the page shows the verdict it recorded
    (a,) = store.audits(traces[0])
    assert (a["verdict"], a["reviewer"], a["note"]) == ("hack", "dan", "gamed the check")
    bad = client.post("/audit", data={"form_key": key, "trace_id": "nope", "verdict": "pass", "reviewer": "dan"})
    assert bad.status_code == 404 and "no trajectory" in bad.text
    bad = client.post("/audit", data={"form_key": key, "trace_id": traces[0], "verdict": "meh", "reviewer": "dan"})
    assert bad.status_code == 400 and "verdict" in bad.text


# ---- access -----------------------------------------------------------------------------------------------------
def test_token_guards_every_page_and_a_token_link_sets_a_cookie(store, run):
    c = TestClient(make_ui_app(store, token="s3cret"))
    for url in ("/", f"/runs/{run}", f"/api/runs/{run}/metrics", "/approvals", "/static/charts.js"):
        r = c.get(url)
        assert r.status_code == 401 and "token required" in r.text, url
    assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    r = c.get(f"/runs/{run}?token=s3cret", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run}" and "agentrft_ui=s3cret" in r.headers["set-cookie"]
    assert c.get(f"/runs/{run}").status_code == 200  # the cookie now carries it


def test_mounted_under_ui_links_carry_the_prefix(store, run):
    host = FastAPI()
    host.mount("/ui", make_ui_app(store))
    c = TestClient(host)
    r = c.get("/ui/")
    assert r.status_code == 200 and f'href="/ui/runs/{run}"' in r.text and 'href="/ui/static/ui.css"' in r.text
    t = store.trajectories(run, limit=1)[0]["trace_id"]
    assert c.get(f"/ui/t/{t}").status_code == 200 and c.get("/ui/static/charts.js").status_code == 200
    assert c.get("/ui/t/nope").status_code == 404


def test_non_loopback_bind_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(ValueError, match="refusing to bind '0.0.0.0' without a token"):
        check_bind("0.0.0.0", None)


def test_cli_ui_refuses_a_public_bind_without_token_and_a_missing_store(tmp_path):
    from typer.testing import CliRunner

    from agentrft.cli import app

    r = CliRunner().invoke(app, ["ui", "--store", str(tmp_path / "x.db"), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "refusing to bind" in r.output
    r = CliRunner().invoke(app, ["ui", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "error" in r.output and "Traceback" not in r.output


def test_indexes_are_added_to_a_store_made_before_them(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    RunStore.for_path(path).close()
    con = sqlite3.connect(path)
    con.execute("DROP INDEX ix_traj_run_step_trace")
    con.commit()
    con.close()
    RunStore.for_path(path).close()
    con = sqlite3.connect(path)
    names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    plan = " ".join(str(r) for r in con.execute(
        "EXPLAIN QUERY PLAN SELECT trace_id FROM trajectories WHERE run_id = 'r' ORDER BY run_id DESC, step DESC, "
        "trace_id DESC LIMIT 50"))
    con.close()
    assert "ix_traj_run_step_trace" in names and "ix_traj_run_step_trace" in plan and "TEMP B-TREE" not in plan


# ---- PostgreSQL (the live server at 127.0.0.1:5432; each test its own schema) -----------------------------------
@pytest.fixture
def pg_store():
    pytest.importorskip("psycopg")
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN)
    try:
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as e:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 (db test, trust auth): {type(e).__name__}")
    schema = f"ui_{uuid.uuid4().hex[:10]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    st = RunStore(f"{PG_ADMIN}?options=-csearch_path%3D{schema}")
    try:
        yield st
    finally:
        st.close()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_postgres_filters_pages_pages_and_approvals(pg_store):
    run = fill_run(pg_store, steps=4, eval_every=2, rows_per_step=4, group=3, valid_rows=4)
    other = fill_run(pg_store, steps=2, eval_every=2, seed=1, name="other")
    _check_filters(pg_store, pg_store.trajectories(run) + pg_store.trajectories(other), run)
    c = TestClient(make_ui_app(pg_store))
    t = pg_store.trajectories(run, limit=1)[0]["trace_id"]
    for url in ("/", f"/runs/{run}", f"/t/{t}", f"/runs/{run}/item/1", f"/runs/{run}/compare", "/audit"):
        assert c.get(url).status_code == 200, url
    assert c.get("/t/nope").status_code == 404
    aid = pg_store.enqueue_approval(t, "refund", {"amount": 1})
    key = c.app.state.form_key
    assert c.post(f"/approvals/{aid}", data={"decision": "deny", "decided_by": "eve", "form_key": key}).status_code == 200
    assert pg_store.get_approval(aid)["status"] == "denied"


def test_the_count_stops_at_its_cap(store, run, monkeypatch):
    import agentrft.ui.app as app_mod
    import agentrft.ui.queries as q

    monkeypatch.setattr(q, "COUNT_CAP", 10)
    monkeypatch.setattr(app_mod, "COUNT_CAP", 10)
    assert list_trajectories(store, TrajFilter.parse({"run": run}))["total"] == 11
    r = TestClient(make_ui_app(store)).get(f"/trajectories?run={run}")
    assert "more than 10 matching" in r.text
    small = TestClient(make_ui_app(store)).get(f"/trajectories?run={run}&step=0")
    assert "5 matching" in small.text  # under the cap: the exact count


def test_the_served_app_redirects_to_ui_keeping_a_token_link(store, run):
    from agentrft.ui import make_server_app

    c = TestClient(make_server_app(store, token="tk"))
    r = c.get("/ui?token=tk", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/?token=tk"
    r = c.get("/?token=tk")  # → /ui/?token=tk → sets the cookie → /ui/
    assert r.status_code == 200 and f"/ui/runs/{run}" in r.text


def test_the_audit_page_draws_what_agentrft_audit_export_draws(store, run):
    from agentrft.evals.audit import sample_for_audit
    from agentrft.ui.queries import audit_sample, item_across_evals

    for n, steps in ((2, None), (3, [3]), (50, None)):
        want = sample_for_audit(store, run, n=n, steps=steps)
        got = audit_sample(store, run, n=n, steps=steps)
        assert got == want  # the same trajectories, whole, in the same order
    by_step = item_across_evals(store, run, 2)
    assert by_step == {s: [t for t in store.trajectories(run, step=s, split="valid") if t["row_index"] == 2]
                       for s in sorted({c["step"] for c in store.checkpoints(run)})}


def test_agentrft_ui_serves_the_store(store, run, tmp_path):
    """The real command: `agentrft ui --store …` in a subprocess, asked over HTTP until it answers."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "ui", "--store", store.url, "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, r = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert r is not None, proc.communicate()[0] if proc.poll() is not None else "no answer"
        assert r.status_code == 200 and str(r.url).endswith("/ui/") and f"/ui/runs/{run}" in r.text
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_running_run_whose_heartbeat_went_stale_shows_as_interrupted(client, store, run):
    from datetime import datetime, timedelta, timezone

    store.set_status(run, "running")
    store.heartbeat(run, at=datetime.now(timezone.utc) - timedelta(hours=1))
    row = re.search(rf'<tr class="run" data-run="{run}">(.*?)</tr>', client.get("/").text, re.S).group(1)
    assert ">interrupted<" in row
    assert client.get(f"/api/runs/{run}/metrics").json()["status"] == "interrupted"
    store.heartbeat(run)
    assert ">running<" in client.get(f"/runs/{run}").text
