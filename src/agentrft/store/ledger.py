"""The audit ledger: one append-only, hash-chained table (mixed into RunStore).

Every record ``r_k`` (``seq = k``, from 1) stores the hash of the one before it and its own::

    h_0 = "0" * 64
    h_k = sha256( h_{k-1} || canonical_json({seq: k, kind, subject, data, actor, created}) )

(``canonical_json``: sorted keys, no spaces, UTF-8; ``data`` as it reads back from the database). The newest
``(seq, hash)`` is also kept in ``store_meta`` (``ledger_head``), written in the same transaction as the record.

:meth:`LedgerStore.verify_ledger` walks the chain from ``seq`` 1 and names the first record that breaks it:

* an **edited** record: its stored hash no longer equals the hash recomputed from its fields (or, if the editor
  recomputed it, the next record's ``prev_hash`` no longer matches);
* an **inserted** record: a record whose ``prev_hash`` is not its predecessor's hash (renumbering the records
  after it does not help: each stored hash covers its own ``seq``), or one past the recorded head;
* a **deleted** record: a gap in ``seq`` (``seq k missing``), or, for the newest record, a head in
  ``store_meta`` that names a record that is no longer there.

What a chain cannot catch: someone with write access who rewrites every record from the edit onward *and* the
head. Against that, copy the head (``agentrft audit verify`` prints it) somewhere else and pass it back
(``--expect-head SEQ:HASH``): any rewrite then shows.

Two writers. The next ``seq`` is read and the record inserted in one write transaction; ``seq`` is the primary
key, so when two writers race (PostgreSQL's READ COMMITTED lets both read the same head) one insert fails with a
unique violation and that writer retries on the new head. SQLite's ``BEGIN IMMEDIATE`` serialises them anyway.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentrft.store.schema import LedgerRow, Meta

GENESIS = "0" * 64
HEAD_KEY = "ledger_head"
KINDS_HINT = ("promotion", "grader_version_change", "deployment_create", "deployment_advance", "deployment_rollback",
              "deployment_hold", "deployment_release", "approval")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(prev_hash: str, seq: int, kind: str, subject: str, data: Any, actor: str, created: str) -> str:
    body = canonical_json({"seq": seq, "kind": kind, "subject": subject, "data": data, "actor": actor,
                           "created": created})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def _plain(data: Any) -> Any:
    """``data`` as JSON gives it back (what the hash must be computed over): the store's serializer first, so numpy
    scalars, paths and non-finite floats become what is actually stored."""
    from agentrft.store.run_store import _dumps_strict

    return json.loads(_dumps_strict(data if data is not None else {}))


def append_in_session(s: Any, kind: str, subject: str, data: dict, actor: str) -> dict:
    """Append inside an open write session (so a deployment step and its ledger record commit together). An
    IntegrityError means another writer took the next ``seq``: the caller retries its whole transaction."""
    data = _plain(data)
    last = s.execute(select(LedgerRow.seq, LedgerRow.hash).order_by(LedgerRow.seq.desc()).limit(1)).first()
    seq = (last[0] + 1) if last else 1
    prev = last[1] if last else GENESIS
    created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    h = record_hash(prev, seq, kind, subject or "", data, actor or "", created)
    row = LedgerRow(seq=seq, kind=kind, subject=subject or "", data=data, actor=actor or "", created=created,
                    prev_hash=prev, hash=h)
    s.add(row)
    s.flush()
    head = s.get(Meta, HEAD_KEY)
    if head is None:
        s.add(Meta(key=HEAD_KEY, value=f"{seq}:{h}"))
        s.flush()
    else:
        head.value = f"{seq}:{h}"
    return _ledger_dict(row)


class LedgerStore:
    """Methods RunStore gets for the audit ledger (uses RunStore's ``_read`` / ``_write`` sessions)."""

    def append_ledger(self, kind: str, subject: str, data: dict | None, *, actor: str = "") -> dict:
        """Append one record; returns it (``seq``, ``hash``, …). Safe under concurrent writers (retries on a lost
        race for the next ``seq``)."""
        if not kind or len(kind) > 64:
            raise ValueError("append_ledger: kind is required (at most 64 characters)")
        if len(subject or "") > 400:
            raise ValueError("append_ledger: subject is at most 400 characters")
        data = _plain(data)
        if not isinstance(data, dict):
            raise ValueError(f"append_ledger: data must be a JSON object, got {type(data).__name__}")
        for attempt in range(50):
            try:
                with self._write() as s:  # type: ignore[attr-defined]
                    return append_in_session(s, kind, subject, data, actor)
            except IntegrityError:  # another writer took this seq (or created the head) first: read the new head
                time.sleep(0.002 * (attempt + 1))
        from agentrft.store.run_store import StoreError

        raise StoreError("append_ledger: lost the race for the next record 50 times")

    def _has_ledger(self) -> bool:
        """False only for a store opened read-only that was written before the ledger existed (write opens create
        the table)."""
        if not getattr(self, "readonly", False):
            return True
        from sqlalchemy import inspect

        with self.engine.connect() as conn:  # type: ignore[attr-defined]
            return inspect(conn).has_table("ledger")

    def ledger(self, *, kind: str | None = None, subject: str | None = None, limit: int | None = None) -> list[dict]:
        """Records, oldest first; filtered by ``kind`` and/or ``subject``."""
        if not self._has_ledger():
            return []
        q = select(LedgerRow).order_by(LedgerRow.seq)
        if kind is not None:
            q = q.where(LedgerRow.kind == kind)
        if subject is not None:
            q = q.where(LedgerRow.subject == subject)
        if limit is not None:
            q = q.limit(int(limit))
        with self._read() as s:  # type: ignore[attr-defined]
            return [_ledger_dict(r) for r in s.scalars(q)]

    def ledger_head(self) -> str | None:
        """``"SEQ:HASH"`` of the newest record, as recorded beside the chain (None for an empty ledger)."""
        with self._read() as s:  # type: ignore[attr-defined]
            m = s.get(Meta, HEAD_KEY)
            return m.value if m is not None else None

    def verify_ledger(self, *, expect_head: str | None = None) -> dict:
        """Walk the chain. Returns ``{"ok", "records", "head", "problems": [{"seq", "problem"}]}``; each problem
        names the record (by ``seq``) where the chain breaks and how (edited, inserted, deleted)."""
        problems: list[dict] = []
        if not self._has_ledger():
            return {"ok": expect_head is None, "records": 0, "head": None,
                    "problems": [] if expect_head is None else [{"seq": None, "problem": "this store has no ledger "
                                                                 "(written before it existed), but a head was expected"}]}
        with self._read() as s:  # type: ignore[attr-defined]
            rows = list(s.scalars(select(LedgerRow).order_by(LedgerRow.seq)))
            head_meta = s.get(Meta, HEAD_KEY)
            n = s.scalar(select(func.count()).select_from(LedgerRow))
        prev_hash, expect_seq = GENESIS, 1
        for r in rows:
            if r.seq > expect_seq:
                missing = f"{expect_seq}" if r.seq == expect_seq + 1 else f"{expect_seq}..{r.seq - 1}"
                problems.append({"seq": expect_seq, "problem": f"deleted: record(s) {missing} missing (the chain "
                                 f"jumps from {expect_seq - 1} to {r.seq})"})
            recomputed = record_hash(r.prev_hash, r.seq, r.kind, r.subject, r.data, r.actor, r.created)
            if recomputed != r.hash:
                problems.append({"seq": r.seq, "problem": f"edited: record {r.seq} ({r.kind} {r.subject!r}) does not "
                                 "match its hash"})
            elif r.prev_hash != prev_hash:
                what = ("inserted or re-hashed: record {seq} ({kind} {subject!r}) does not follow record {p}: its "
                        "prev_hash is not that record's hash")
                problems.append({"seq": r.seq, "problem": what.format(seq=r.seq, kind=r.kind, subject=r.subject,
                                                                      p=r.seq - 1)})
            prev_hash, expect_seq = r.hash, r.seq + 1
        last = (rows[-1].seq, rows[-1].hash) if rows else (0, GENESIS)
        head = head_meta.value if head_meta is not None else None
        for label, want in (("the recorded head", head), ("the expected head", expect_head)):
            if want is None:
                continue
            try:
                hs, hh = want.split(":", 1)
                hseq = int(hs)
            except ValueError:
                problems.append({"seq": None, "problem": f"{label} {want!r} is not SEQ:HASH"})
                continue
            if hseq > last[0]:
                problems.append({"seq": hseq, "problem": f"deleted: {label} is record {hseq}, the ledger ends at "
                                 f"{last[0]}"})
            elif hseq < last[0] and label == "the recorded head":
                problems.append({"seq": hseq + 1, "problem": f"inserted: record(s) after {label} (record {hseq}): "
                                 f"the ledger ends at {last[0]}"})
            else:
                match = next((r for r in rows if r.seq == hseq), None)
                if match is None or match.hash != hh:
                    problems.append({"seq": hseq, "problem": f"edited: record {hseq} is not {label} ({hh[:12]}…)"})
        if not rows and head is None and expect_head is None:
            pass
        problems.sort(key=lambda p: (p["seq"] is None, p["seq"] or 0))
        return {"ok": not problems, "records": int(n or 0), "head": f"{last[0]}:{last[1]}" if rows else None,
                "problems": problems}


def _ledger_dict(r: LedgerRow) -> dict:
    return {"seq": r.seq, "kind": r.kind, "subject": r.subject, "data": r.data, "actor": r.actor,
            "created_at": r.created, "prev_hash": r.prev_hash, "hash": r.hash}
