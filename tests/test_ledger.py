"""The hash-chained audit ledger on SQLite and the live PostgreSQL: appends chain, an edited, inserted or deleted
record is found and named (by the store and by ``agentrft audit verify``), two concurrent writers never fork or
lose the chain, and a promotion is recorded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from agentrft.store import RunStore
from agentrft.store.ledger import GENESIS, record_hash


def _fill(st: RunStore, n: int = 5) -> list[dict]:
    return [st.append_ledger("deployment_advance", f"dep-{i}", {"weight": i / 10, "evidence": {"n": i}},
                             actor="controller") for i in range(n)]


def test_appends_chain_and_verify(store_url):
    st = RunStore(store_url)
    try:
        assert st.verify_ledger() == {"ok": True, "records": 0, "head": None, "problems": []}
        recs = _fill(st)
        assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
        assert recs[0]["prev_hash"] == GENESIS and all(b["prev_hash"] == a["hash"] for a, b in zip(recs, recs[1:]))
        # the hash is what the docstring says, over the record as read back
        r = st.ledger()[2]
        assert r["hash"] == record_hash(r["prev_hash"], 3, r["kind"], r["subject"], r["data"], r["actor"],
                                        r["created_at"])
        v = st.verify_ledger()
        assert v["ok"] and v["records"] == 5 and v["head"] == f"5:{recs[-1]['hash']}" == st.ledger_head()
        assert st.verify_ledger(expect_head=v["head"])["ok"]
        with pytest.raises(ValueError, match="kind is required"):
            st.append_ledger("", "x", {})
        with pytest.raises(ValueError, match="data must be a JSON object"):
            st.append_ledger("k", "x", [1, 2])  # type: ignore[arg-type]
        assert st.ledger(subject="dep-3")[0]["seq"] == 4
    finally:
        st.close()


def _exec(st: RunStore, sql: str, **params) -> None:
    with st.engine.begin() as conn:
        conn.execute(text(sql), params)


def _problem(st: RunStore, **kw) -> tuple[int, str]:
    v = st.verify_ledger(**kw)
    assert not v["ok"]
    return v["problems"][0]["seq"], v["problems"][0]["problem"]


def test_edit_insert_delete_are_each_named(store_url):
    for case in ("edit", "edit_rehash", "insert", "insert_end", "delete", "delete_last"):
        st = RunStore(store_url)
        try:
            _exec(st, "DELETE FROM ledger")
            _exec(st, "DELETE FROM store_meta WHERE key = 'ledger_head'")
            recs = _fill(st)
            if case == "edit":  # change the evidence of record 3
                _exec(st, "UPDATE ledger SET data = :d WHERE seq = 3", d=json.dumps({"weight": 0.9}))
                assert _problem(st) == (3, _problem(st)[1]) and "edited: record 3" in _problem(st)[1]
            elif case == "edit_rehash":  # edit record 3 and recompute its own hash: record 4 no longer follows it
                r = st.ledger()[2]
                h = record_hash(r["prev_hash"], 3, r["kind"], "forged", r["data"], r["actor"], r["created_at"])
                _exec(st, "UPDATE ledger SET subject = 'forged', hash = :h WHERE seq = 3", h=h)
                seq, msg = _problem(st)
                assert seq == 4 and "does not follow record 3" in msg
            elif case == "insert":  # make room after record 2 and insert a record there
                for s in (5, 4, 3):
                    _exec(st, "UPDATE ledger SET seq = :n WHERE seq = :s", n=s + 1, s=s)
                _exec(st, "INSERT INTO ledger (seq, kind, subject, data, actor, created, prev_hash, hash) VALUES "
                          "(3, 'promotion', 'sneaky', '{}', 'x', :c, :p, :h)", c=recs[0]["created_at"],
                      p=recs[1]["hash"], h="f" * 64)
                seq, msg = _problem(st)
                assert seq == 3 and "record 3 (promotion 'sneaky')" in msg
            elif case == "insert_end":  # a record appended behind the ledger's back, with a well-formed hash
                last = recs[-1]
                h = record_hash(last["hash"], 6, "promotion", "sneaky", {}, "x", last["created_at"])
                _exec(st, "INSERT INTO ledger (seq, kind, subject, data, actor, created, prev_hash, hash) VALUES "
                          "(6, 'promotion', 'sneaky', '{}', 'x', :c, :p, :h)", c=last["created_at"], p=last["hash"],
                      h=h)
                seq, msg = _problem(st)
                assert seq == 6 and "inserted" in msg
            elif case == "delete":
                _exec(st, "DELETE FROM ledger WHERE seq = 2")
                seq, msg = _problem(st)
                assert seq == 2 and "deleted: record(s) 2 missing" in msg
            else:  # the newest record: no gap, but the recorded head names it
                _exec(st, "DELETE FROM ledger WHERE seq = 5")
                seq, msg = _problem(st)
                assert seq == 5 and "deleted" in msg
        finally:
            st.close()


def test_two_concurrent_writers_keep_one_chain(store_url):
    """Two stores (two connection pools, as two processes would have) append 40 records each at once."""
    a, b = RunStore(store_url), RunStore(store_url)
    errors: list[BaseException] = []

    def write(st: RunStore, who: str) -> None:
        try:
            for i in range(40):
                st.append_ledger("approval", f"{who}-{i}", {"i": i}, actor=who)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    try:
        ts = [threading.Thread(target=write, args=(s, w)) for s, w in ((a, "a"), (b, "b"))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errors, errors
        recs = a.ledger()
        assert [r["seq"] for r in recs] == list(range(1, 81))
        want = [f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(40)]
        assert sorted(r["subject"] for r in recs) == sorted(want)
        assert a.verify_ledger()["ok"] and b.verify_ledger()["ok"]
    finally:
        a.close()
        b.close()


def test_audit_verify_cli_names_the_row(tmp_path):
    db = tmp_path / "s.db"
    st = RunStore(f"sqlite:///{db}")
    _fill(st, 3)
    st.close()
    cmd = [sys.executable, "-m", "agentrft.cli", "audit", "verify", "--store", f"sqlite:///{db}"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "3 records" in ok.stdout and "head 3:" in ok.stdout
    con = sqlite3.connect(db)
    con.execute("UPDATE ledger SET actor = 'mallory' WHERE seq = 2")
    con.commit()
    con.close()
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "record 2" in bad.stdout + bad.stderr and "edited" in bad.stdout + bad.stderr


def test_a_store_from_before_the_ledger_reads_as_empty_and_gets_one_on_write_open(tmp_path):
    db = tmp_path / "old.db"
    RunStore(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)  # what version 3 wrote: no ledger, no deployment tables
    for t in ("ledger", "deployments", "deployment_events", "deployment_observations"):
        con.execute(f"DROP TABLE {t}")
    con.commit()
    con.close()
    ro = RunStore(f"sqlite:///{db}", mode="read")
    assert ro.ledger() == [] and ro.verify_ledger()["ok"] and not ro.verify_ledger(expect_head="1:ab")["ok"]
    ro.close()
    rw = RunStore(f"sqlite:///{db}", mode="existing")
    rw.append_ledger("note", "x", {})
    assert rw.verify_ledger()["records"] == 1 and rw.list_deployments() == []
    rw.close()


def test_approval_decisions_are_recorded_in_the_ledger_with_the_decision(store_url):
    st = RunStore(store_url)
    try:
        a = st.enqueue_approval("conv-1", "lookup", {"q": "acme"})
        b = st.enqueue_approval("conv-2", "refund", '{"amount": 5}')
        st.decide_approval(a, "approved", decided_by="alice")
        st.decide_approval(b, "denied", decided_by="bob", reason="over the limit")
        recs = st.ledger()
        assert [(r["kind"], r["subject"], r["actor"]) for r in recs] == [
            ("approval.approved", f"approval:{a}", "alice"), ("approval.denied", f"approval:{b}", "bob")]
        assert recs[1]["data"]["reason"] == "over the limit" and recs[1]["data"]["tool_name"] == "refund"
        with pytest.raises(Exception, match="already approved by alice"):
            st.decide_approval(a, "denied", decided_by="carol")
        assert len(st.ledger()) == 2 and st.verify_ledger()["ok"]  # a refused second decision records nothing
    finally:
        st.close()
