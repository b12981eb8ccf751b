"""support_desk tools over a REAL SQLite file of customers and orders.

The row names the shared database (``item["db"]``, relative to ``ctx.data_dir``, the dataset's directory).
Reads open it read-only (``mode=ro``). ``refund_order`` (high-impact, ``requires_approval=True``) never
writes to it: the first write of a rollout copies the shared file to a private temp file (copy-on-write,
keyed by ``trace_id`` in ``ctx.state``); every later call of that rollout reads and writes the copy, and
``ctx.on_close`` deletes it when the rollout ends.

Policy (stated in the system prompt, derived here as one field): an order is ``eligible yes`` for a refund
iff ``status == "delivered"`` and it was delivered at most ``REFUND_DAYS`` (30) days ago.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import threading
from contextlib import closing
from pathlib import Path

from agentrft.tools.registry import ToolContext, tool

REFUND_DAYS = 30
STATE_KEY = "support_desk_db_copy"
_COPY_LOCK = threading.Lock()


def is_eligible(status: str, days: int | None) -> bool:
    """The refund policy: delivered, and delivered at most 30 days ago."""
    return status == "delivered" and days is not None and days <= REFUND_DAYS


def shared_db_path(ctx: ToolContext) -> Path:
    """The shared database this row names, resolved against the dataset directory; clear errors otherwise."""
    name = (ctx.item or {}).get("db")
    if not isinstance(name, str) or not name:
        raise ValueError("support_desk: the dataset row has no 'db' (path of the SQLite file)")
    p = Path(name)
    if not p.is_absolute():
        if not ctx.data_dir:
            raise ValueError(f"support_desk: row db {name!r} is relative but the tool context has no data_dir")
        p = Path(ctx.data_dir) / p
    if not p.is_file():
        raise ValueError(f"support_desk: database file {p} does not exist")
    return p


def _connect(ctx: ToolContext) -> sqlite3.Connection:
    copy = ctx.state.get(STATE_KEY)
    if copy:
        return sqlite3.connect(copy)
    uri = shared_db_path(ctx).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True)


def _writable_copy(ctx: ToolContext) -> str:
    """This rollout's private copy of the database, created on first use (thread-safe)."""
    with _COPY_LOCK:
        copy = ctx.state.get(STATE_KEY)
        if copy:
            return copy
        shared = shared_db_path(ctx)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", ctx.trace_id or "trace")[:60]
        fd, copy = tempfile.mkstemp(prefix=f"agentrft-support-{safe}-", suffix=".db")
        os.close(fd)
        src = sqlite3.connect(shared.resolve().as_uri() + "?mode=ro", uri=True)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        ctx.state[STATE_KEY] = copy

        def _remove(path: str = copy) -> None:
            if os.path.exists(path):
                os.remove(path)

        ctx.on_close(_remove)
        return copy


def _order_id(order_id: str) -> str:
    return (order_id or "").strip().upper()


def format_customer(cid: str, name: str, email: str) -> str:
    return f"customer {cid}: {name}, {email}"


def format_order(oid: str, item: str, cid: str, status: str, days: int | None) -> str:
    eligible = "yes" if is_eligible(status, days) else "no"
    return f"order {oid}: {item}, customer {cid}, status {status}, eligible {eligible}"


@tool
def find_customer(name: str, ctx: ToolContext) -> str:
    """Find a customer by full name.

    Args:
        name: The customer's full name, such as "Ana Diaz".
    """
    key = " ".join((name or "").split()).lower()
    with closing(_connect(ctx)) as db:
        row = db.execute("SELECT id, name, email FROM customers WHERE lower(name) = ?", (key,)).fetchone()
    return format_customer(*row) if row else f"no customer named {name}"


@tool
def list_orders(customer_id: str, ctx: ToolContext) -> str:
    """List a customer's orders.

    Args:
        customer_id: The customer's id, such as "C-12".
    """
    cid = (customer_id or "").strip().upper()
    with closing(_connect(ctx)) as db:
        rows = db.execute("SELECT id FROM orders WHERE customer_id = ? ORDER BY id", (cid,)).fetchall()
    return f"orders of {cid}: " + ", ".join(r[0] for r in rows) if rows else f"no orders for {customer_id}"


@tool
def get_order(order_id: str, ctx: ToolContext) -> str:
    """Look up one order and whether it is eligible for a refund.

    Args:
        order_id: The order's id, such as "O-105".
    """
    oid = _order_id(order_id)
    with closing(_connect(ctx)) as db:
        row = db.execute("SELECT id, item, customer_id, status, days FROM orders WHERE id = ?", (oid,)).fetchone()
    return format_order(*row) if row else f"no order {order_id}"


@tool(requires_approval=True)
def refund_order(order_id: str, ctx: ToolContext) -> str:
    """Refund one order. Only for orders that are eligible.

    Args:
        order_id: The order's id, such as "O-105".
    """
    oid = _order_id(order_id)
    with closing(_connect(ctx)) as db:
        row = db.execute("SELECT status FROM orders WHERE id = ?", (oid,)).fetchone()
    if row is None:
        return f"no order {order_id}"
    if row[0] == "refunded":
        return f"{oid} is already refunded"
    with closing(sqlite3.connect(_writable_copy(ctx))) as db:
        with db:
            db.execute("UPDATE orders SET status = 'refunded' WHERE id = ?", (oid,))
    return f"refunded {oid}"
