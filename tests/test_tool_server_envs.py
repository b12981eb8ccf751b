"""``agentrft tools serve support_desk`` as a real subprocess on loopback, driven by HttpToolBackend:
per-trace_id copy-on-write SQLite state, isolated between traces, removed on DELETE and at shutdown."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from proc_helpers import free_port
from agentrft.environments import get_environment
from agentrft.tools.http import HttpToolBackend
from agentrft.tools.registry import ToolContext
from agentrft.types import new_call_id, new_trace_id



@pytest.fixture(scope="module")
def support_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("sd")
    scratch = tmp_path_factory.mktemp("scratch")
    paths = get_environment("support_desk").generate(data, seed=3, n_train=6, n_valid=2)
    port = free_port()
    env = {**os.environ, "TMPDIR": str(scratch), "AGENTRFT_TOOLS_TOKEN": "tok-sd"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrft.tools.cli", "serve", "support_desk", "--port", str(port),
         "--data-dir", str(data), "--log-level", "warning"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("tool server did not start:\n" + (proc.stdout.read() if proc.stdout else ""))
        time.sleep(0.1)
    try:
        yield url, paths, scratch, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _eligible_order(db: str) -> str:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT id FROM orders WHERE status = 'delivered' AND days <= 30 ORDER BY id").fetchone()[0]


def _status(db: str, oid: str) -> str:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT status FROM orders WHERE id = ?", (oid,)).fetchone()[0]


def test_support_desk_state_per_trace(support_server):
    url, paths, scratch, _ = support_server
    headers = {"Authorization": "Bearer tok-sd"}
    schemas = httpx.get(url + "/tools", headers=headers).json()
    names = [s["function"]["name"] for s in schemas]
    assert names == ["find_customer", "list_orders", "get_order", "refund_order"]
    os.environ["H4_SD_TOKEN"] = "tok-sd"
    b = HttpToolBackend([{"name": n, "server_url": url, "headers": {"Authorization": "Bearer ${H4_SD_TOKEN}"}}
                         for n in names], schemas=schemas, backoff_s=0.01)
    row = json.loads(open(paths["train"]).readline())
    oid = _eligible_order(str(paths["db"]))
    ta, tb = new_trace_id(), new_trace_id()

    def call(trace: str, name: str, **args) -> str:
        r = b.call(name, args, ToolContext(trace, row, new_call_id()), 10)
        assert r.status == "ok", r.output
        return r.output

    assert "eligible yes" in call(ta, "get_order", order_id=oid)
    assert call(ta, "refund_order", order_id=oid) == f"refunded {oid}"
    assert "status refunded" in call(ta, "get_order", order_id=oid)  # trace A sees its own write
    assert "status delivered, eligible yes" in call(tb, "get_order", order_id=oid)  # trace B does not
    assert _status(str(paths["db"]), oid) == "delivered"  # the shared db is untouched
    copies = glob.glob(str(scratch / f"agentrft-support-{ta}-*.db"))
    assert len(copies) == 1 and _status(copies[0], oid) == "refunded"
    assert glob.glob(str(scratch / f"agentrft-support-{tb}-*.db")) == []  # reads never copy
    # the second refund in trace A is answered from A's copy; B can still refund in its own copy
    assert call(ta, "refund_order", order_id=oid) == f"{oid} is already refunded"
    assert call(tb, "refund_order", order_id=oid) == f"refunded {oid}"
    assert len(glob.glob(str(scratch / "agentrft-support-*.db"))) == 2
    r = httpx.delete(f"{url}/traces/{ta}", headers=headers)
    assert r.status_code == 200 and r.json()["cleanup_errors"] == []
    assert not os.path.exists(copies[0])
    assert "status refunded" in call(tb, "get_order", order_id=oid)
    # a fresh call on trace A starts again from the shared db
    assert "status delivered" in call(ta, "get_order", order_id=oid)
    # a bad argument and an unknown order are tool outputs, not crashes
    r = b.call("get_order", {"order": oid}, ToolContext(ta, row, new_call_id()), 10)
    assert r.status == "error" and r.meta["http_status"] == 400 and "missing required argument(s): order_id" in r.output
    assert call(ta, "get_order", order_id="O-999999") == "no order O-999999"
    b.close()
    del os.environ["H4_SD_TOKEN"]


def test_server_shutdown_removes_every_copy(support_server):
    url, paths, scratch, proc = support_server
    headers = {"Authorization": "Bearer tok-sd"}
    row = json.loads(open(paths["train"]).readline())
    oid = _eligible_order(str(paths["db"]))
    b = HttpToolBackend([{"name": "refund_order", "server_url": url, "headers": headers}], backoff_s=0.01)
    for _ in range(3):
        r = b.call("refund_order", {"order_id": oid}, ToolContext(new_trace_id(), row, new_call_id()), 10)
        assert r.status == "ok" and r.output == f"refunded {oid}"
    assert len(glob.glob(str(scratch / "agentrft-support-*.db"))) >= 3
    proc.terminate()
    proc.wait(20)
    assert glob.glob(str(scratch / "agentrft-support-*.db")) == []
