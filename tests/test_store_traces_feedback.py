"""Served traces carry the deployment and arm that answered, and feedback on them is stored — on SQLite and on the
live PostgreSQL; a store written before these columns is read as it is and migrated on its first write open."""

from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest

from agentrft.store import RunStore, StoreError
from agentrft.store.schema import SCHEMA_VERSION, utcnow


def _trace(i: int, conv: str, **kw) -> dict:
    return {"request_id": f"req-{i}", "trace_id": conv, "model": kw.pop("model", "support-agent"),
            "messages": [{"role": "user", "content": f"q{i}"}], "choices": [{"message": {"content": f"a{i}"}}], **kw}


def test_traces_filter_by_deployment_arm_time_and_page(store_url):
    st = RunStore(store_url)
    try:
        st.record_traces([_trace(0, "c1", deployment="support-agent", arm="production"),
                          _trace(1, "c1", deployment="support-agent", arm="shadow"),
                          _trace(2, "c2", deployment="support-agent", arm="candidate"),
                          _trace(3, "c3", model="base")])
        assert [t["request_id"] for t in st.traces(deployment="support-agent")] == ["req-0", "req-1", "req-2"]
        assert [t["request_id"] for t in st.traces(arm="shadow")] == ["req-1"]
        plain = st.traces(model="base")[0]
        assert plain["deployment"] is None and plain["arm"] is None
        first = st.traces(limit=2)
        assert [t["request_id"] for t in st.traces(after_id=first[-1]["id"])] == ["req-2", "req-3"]
        assert len(st.traces(since=utcnow() - timedelta(minutes=5))) == 4
        assert st.traces(until=utcnow() - timedelta(minutes=5)) == []
        with pytest.raises(StoreError, match="arm 'blue' is not one of"):
            st.record_traces([_trace(9, "c9", arm="blue")])
        assert len(st.traces()) == 4  # nothing of the refused batch was written
    finally:
        st.close()


def test_feedback_is_kept_per_conversation_and_checked(store_url):
    st = RunStore(store_url)
    try:
        a = st.add_feedback("c1", score=1.0, comment="right answer", actor="alice")
        st.add_feedback("c2", label="wrong_customer", actor="bob", request_id="req-2")
        st.add_feedback("c1", score=0, label="changed my mind")
        assert a["id"] and a["score"] == 1.0 and a["actor"] == "alice" and a["created_at"]
        c1 = st.feedback(trace_ids=["c1"])
        assert [(f["score"], f["label"]) for f in c1] == [(1.0, None), (0.0, "changed my mind")]
        assert [f["trace_id"] for f in st.feedback()] == ["c1", "c2", "c1"]
        assert st.feedback(trace_ids=["nope"]) == []
        for bad, match in (({}, "give a score or a label"), ({"score": float("nan")}, "finite number"),
                           ({"score": True}, "finite number"), ({"score": "1"}, "finite number")):
            with pytest.raises(ValueError, match=match):
                st.add_feedback("c1", **bad)
        with pytest.raises(ValueError, match="trace_id is required"):
            st.add_feedback("", score=1)
        assert len(st.feedback()) == 3
    finally:
        st.close()


def test_a_version_2_store_is_read_as_it_is_and_migrated_on_write_open(tmp_path):
    db = tmp_path / "old.db"
    st = RunStore(f"sqlite:///{db}")
    st.record_traces([_trace(0, "c1", model="base")])
    st.close()
    con = sqlite3.connect(db)  # make it what version 2 wrote: no deployment/arm columns, no feedback table
    con.execute("DROP INDEX ix_traces_deployment")
    con.execute("ALTER TABLE traces DROP COLUMN deployment")
    con.execute("ALTER TABLE traces DROP COLUMN arm")
    con.execute("DROP TABLE feedback")
    con.execute("UPDATE store_meta SET value='2' WHERE key='schema_version'")
    con.commit()
    con.close()

    ro = RunStore(f"sqlite:///{db}", mode="read")
    (t,) = ro.traces()
    assert t["request_id"] == "req-0" and t["arm"] is None and ro.traces(deployment="x") == []
    ro.close()

    rw = RunStore(f"sqlite:///{db}", mode="existing")
    rw.record_traces([_trace(1, "c2", deployment="d", arm="candidate")])
    rw.add_feedback("c2", score=0.5)
    assert [t["arm"] for t in rw.traces()] == [None, "candidate"] and len(rw.feedback()) == 1
    rw.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM store_meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    con.close()
