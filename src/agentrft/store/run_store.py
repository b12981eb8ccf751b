"""RunStore: every run, step, trajectory, tool call, grade and checkpoint, in one SQL database.

The default is a SQLite file in WAL mode (readers never block the writer; a dashboard can read while training
writes); any SQLAlchemy URL works (``postgresql+psycopg://…``).

Atomicity. :meth:`RunStore.record_step` writes a step's metrics row and all of its trajectories, tool calls and
grades in ONE transaction, so a process killed at any instant leaves either the whole step or none of it
(SQLite's WAL commit is atomic: a transaction whose commit frame did not reach the log is ignored on reopen).
Re-recording the same (run, step, split) first deletes what was there, in the same transaction, so a resumed
run never duplicates. :meth:`RunStore.delete_after` removes everything past a step (resume after a kill).

Concurrency. Each call opens its own session, so one store can be shared by threads. On SQLite every write
transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up front and waits up to ``busy_timeout_s``
for it), which avoids the deferred-transaction upgrade failure ("database is locked") between two writers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import Engine, create_engine, delete, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from agentrft.redact import redact_config, redact_url
from agentrft.store.schema import (
    SCHEMA_VERSION,
    Audit,
    Base,
    CheckpointRow,
    FeedbackRow,
    GradeRow,
    Meta,
    RegistryEntry,
    Run,
    Step,
    ToolCallRow,
    TraceRow,
    TrajectoryRow,
    utcnow,
)
from agentrft.store.schema import Approval, ensure_indexes
from agentrft.types import Trajectory

from agentrft.store.jobs import JobStore  # the OpenAI fine-tuning API's files, jobs, events, leases (issue 16)
from agentrft.store.deployments import DeploymentStore  # deployments, their events and observations (issue 17)
from agentrft.store.ledger import LedgerStore, append_in_session  # the hash-chained audit ledger (issue 17)

# OpenAI's job statuses; "queued" is the status of a run just created.
RUN_STATUSES = ("validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled")
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's bound-parameter limit
# A running process touches its run's heartbeat every HEARTBEAT_INTERVAL_S; a `running` run whose heartbeat is
# older than STALE_AFTER_S (a SIGKILL, a crash, a full disk that stopped even the status write) is interrupted.
HEARTBEAT_INTERVAL_S = 30.0
STALE_AFTER_S = 300.0
MAX_CONFIG_BYTES = 8 * 1024 * 1024  # a run's config as stored (an alias bomb must not become a 78 MB store)


class StoreError(Exception):
    """A store operation that cannot be done, with a message saying why."""


class RunNotFound(StoreError, LookupError):
    pass


class AmbiguousRunId(StoreError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------------------------


def _json_default(o: Any) -> Any:
    """Values json cannot write by itself: numpy / torch scalars and arrays, paths, sets, dataclasses, datetimes,
    bytes (decoded, bad bytes as ``\\xNN``); any other object becomes the string ``"<Type: repr>"``."""
    if hasattr(o, "tolist") and callable(o.tolist):  # numpy arrays and scalars, torch tensors
        return o.tolist()
    if hasattr(o, "item") and callable(o.item):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if isinstance(o, datetime):
        return o.isoformat()
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, (bytes, bytearray)):
        return o.decode("utf-8", "backslashreplace")
    # Anything else is kept visibly as its repr rather than failing the whole step's transaction.
    return f"<{type(o).__name__}: {o!r:.500}>"


def _finite(o: Any) -> Any:
    """Non-finite floats as strings ("NaN", "Infinity", "-Infinity"): strict JSON columns (Postgres) reject them."""
    if isinstance(o, float) and not math.isfinite(o):
        return "NaN" if math.isnan(o) else ("Infinity" if o > 0 else "-Infinity")
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _dumps_sqlite(o: Any) -> str:
    # SQLite stores the text as is and Python's json reads NaN back, so NaN metrics round-trip as floats.
    return json.dumps(o, ensure_ascii=False, default=_json_default)


def _dumps_strict(o: Any) -> str:
    return json.dumps(_finite(json.loads(_dumps_sqlite(o))), ensure_ascii=False, allow_nan=False)


def _check_json_size(obj: Any, cap: int, what: str) -> None:
    """StoreError if ``obj`` written as JSON is over ``cap`` bytes — found while encoding piece by piece, so an object
    that expands enormously is stopped at the cap, not after it was written out whole."""
    n = 0
    try:
        for piece in json.JSONEncoder(ensure_ascii=False, default=_json_default).iterencode(obj):
            n += len(piece)
            if n > cap:
                raise StoreError(f"{what} is over {cap // (1024 * 1024)} MB as JSON; refusing to store it")
    except (RecursionError, ValueError) as e:  # nested too deeply, or a circular reference
        raise StoreError(f"{what} cannot be stored as JSON: {e}") from None


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite gives naive datetimes back; they were written in UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat()


def _chunks(seq: list[Any], n: int = _CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


# ---------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------


class RunStore(JobStore, DeploymentStore, LedgerStore):
    """The run store. ``url``: any SQLAlchemy URL, or a plain file path (taken as a SQLite file)."""

    def __init__(self, url: str, *, busy_timeout_s: float | None = None, echo: bool = False,
                 mode: str = "create"):
        """``mode``: ``"create"`` (the default: the file, its directories and tables are made as needed),
        ``"existing"`` (the store must exist already; nothing is created, writes are allowed — ``--resume``) or
        ``"read"`` (read-only: nothing is created, no table is made or altered, no write lock is taken; a store in a
        read-only directory or file is readable). Every failure to open — an unknown URL scheme, a missing,
        garbage, truncated or locked file, a directory, an unreachable server — is a :class:`StoreError` whose
        message names the store. ``busy_timeout_s``: how long to wait for another process's lock (default 30 s,
        or ``AGENTRFT_STORE_BUSY_TIMEOUT_S``)."""
        if mode not in ("create", "existing", "read"):
            raise ValueError(f"RunStore mode must be create, existing or read, not {mode!r}")
        if busy_timeout_s is None:
            busy_timeout_s = _env_timeout()
        self.mode, self.readonly, self.busy_timeout_s = mode, mode == "read", busy_timeout_s
        if "://" not in str(url):
            url = f"sqlite:///{Path(url)}"
        self.url = str(url)
        self.where = self.url  # what messages call the store: the file for SQLite, the URL (no password) otherwise
        try:
            parsed = make_url(self.url)
            self.where = parsed.render_as_string(hide_password=True)
            backend = parsed.get_backend_name()
        except Exception as e:  # noqa: BLE001 — sqlalchemy.exc.ArgumentError and friends
            raise StoreError(f"store URL {self.url!r} is not a database URL ({e}); use sqlite:///PATH or "
                             "postgresql+psycopg://USER@HOST/DB") from None
        self.is_sqlite = backend == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            db = parsed.database or ""
            memory = db in ("", ":memory:") or "mode=memory" in self.url
            if not memory and not db.startswith("file:"):
                self.where = str(Path(db).expanduser())
                _check_sqlite_file(Path(db).expanduser(), mode, self.where)
            kwargs["json_serializer"] = _dumps_sqlite
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout_s}
            if memory:  # one shared connection, or every thread would see its own empty database
                kwargs["poolclass"] = StaticPool
            elif self.readonly and not db.startswith("file:"):
                kwargs["creator"] = _readonly_sqlite_connect(Path(db).expanduser(), busy_timeout_s)
        else:
            kwargs["json_serializer"] = _dumps_strict
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as e:  # noqa: BLE001 — NoSuchModuleError (unknown scheme), a missing driver, …
            scheme = self.url.split("://", 1)[0]
            raise StoreError(f"store URL {self.where!r}: cannot use scheme {scheme!r} ({type(e).__name__}: "
                             f"{_first_line(e)}); use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB") from None
        if self.readonly and not self.is_sqlite:
            self.engine = self.engine.execution_options(postgresql_readonly=True)
        if self.is_sqlite:
            _sqlite_setup(self.engine, busy_timeout_s, readonly=self.readonly)
            if self.readonly and not memory and not db.startswith("file:"):
                # a read-only open of a WAL store makes its -wal/-shm files when they are missing and cannot remove
                # them; tidy them when this store is closed or collected, or at exit (the CLI never closes it)
                path = Path(db).expanduser()
                absent = [p for p in _wal_files(path) if not p.exists()]
                if absent:
                    weakref.finalize(self, _tidy_wal_files, self.engine, path, absent)
        self._writer = self.engine.execution_options(agentrft_write=True)
        with self._errors():
            if mode == "create":
                with self._writer.begin() as conn:
                    Base.metadata.create_all(conn)
                    _migrate(conn)
                    ensure_indexes(conn)  # indexes added to existing tables since the store was made
            else:
                from sqlalchemy import inspect

                with self.engine.connect() as conn:
                    insp = inspect(conn)
                    if not insp.has_table("runs"):
                        raise StoreError(f"store {self.where} is not an agentrft store (it has no runs table)")
                    has_beat = "heartbeat_at" in {c["name"] for c in insp.get_columns("runs")}
                    has_arm = insp.has_table("traces") and "arm" in {c["name"] for c in insp.get_columns("traces")}
                    has_ledger = insp.has_table("ledger") and insp.has_table("deployments")  # issue 17's tables
                if mode == "existing" and not (has_beat and has_arm and has_ledger):
                    with self._writer.begin() as conn:
                        Base.metadata.create_all(conn)
                        _migrate(conn)
                        ensure_indexes(conn)
            self._has_heartbeat = True if mode != "read" else has_beat
            self._has_arm = True if mode != "read" else has_arm
            if mode != "read":
                with self._write() as s:
                    v = s.get(Meta, "schema_version")
                    if v is None:
                        s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                    elif v.value.isdigit() and int(v.value) < SCHEMA_VERSION:
                        v.value = str(SCHEMA_VERSION)

    @classmethod
    def for_path(cls, path: str | os.PathLike, **kwargs: Any) -> "RunStore":
        """A store in the SQLite file ``path`` (created with its parent directories)."""
        return cls(f"sqlite:///{Path(path).expanduser().resolve()}", **kwargs)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunStore({self.url!r})"

    # ---- sessions ------------------------------------------------------------------------------------------
    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Database errors (locked, corrupt, unreachable, read-only, disk full) as a :class:`StoreError` naming the
        store; integrity errors pass through (callers handle them)."""
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        try:
            yield
        except IntegrityError:
            raise
        except DBAPIError as e:
            raise StoreError(_explain(e, self.where, self.busy_timeout_s)) from None
        except SQLAlchemyError as e:
            raise StoreError(f"store {self.where}: {type(e).__name__}: {_first_line(e)}") from None

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction (BEGIN IMMEDIATE on SQLite): committed whole on exit, rolled back on error."""
        if self.readonly:
            raise StoreError(f"store {self.where} was opened read-only")
        with self._errors(), Session(self._writer, expire_on_commit=False) as s, s.begin():
            yield s

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """One read transaction: every query inside sees the same snapshot."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    # ---- runs ----------------------------------------------------------------------------------------------
    def create_run(self, name: str, config: dict, *, base_model: str = "", output_dir: str = "") -> str:
        """Create a run (secrets in ``config`` — header values, keys, URL passwords — are stored redacted, see
        :mod:`agentrft.redact`); its id is ``run-YYYYMMDD-HHMMSS-xxxx`` (UTC time, then 4 random hex digits), so ids sort
        by creation time and a short prefix names one run."""
        config = redact_config(config or {})
        _check_json_size(config, MAX_CONFIG_BYTES, "the run config")
        for _ in range(20):
            now = utcnow()
            run_id = f"run-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
            try:
                with self._write() as s:
                    s.add(Run(id=run_id, name=name, status="queued", config=config,
                              base_model=redact_url(base_model or ""),
                              output_dir=str(output_dir or ""), created_at=now, updated_at=now, heartbeat_at=now))
                return run_id
            except IntegrityError:  # the same second and the same 4 hex digits: draw again
                continue
        raise StoreError("could not draw a unique run id in 20 tries")

    def resolve_run_id(self, run_id: str) -> str:
        """The full id of the run ``run_id`` names (exactly, or as a unique prefix); raises if none or several."""
        with self._read() as s:
            if s.get(Run, run_id) is not None:
                return run_id
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            ids = s.scalars(select(Run.id).where(Run.id.like(pattern, escape="\\")).order_by(Run.id).limit(11)).all()
        if not ids:
            raise RunNotFound(f"no run with id {run_id!r}")
        if len(ids) > 1:
            more = ", …" if len(ids) > 10 else ""
            raise AmbiguousRunId(f"run id prefix {run_id!r} matches several runs: {', '.join(ids[:10])}{more}")
        return ids[0]

    def get_run(self, run_id: str) -> dict | None:
        """The run (exact id or unique prefix), with ``latest_step`` and ``best_valid_reward``; None if no such run.
        An ambiguous prefix raises :class:`AmbiguousRunId`."""
        try:
            full = self.resolve_run_id(run_id)
        except RunNotFound:
            return None
        with self._read() as s:
            run = s.get(Run, full)
            if run is None:
                return None
            return self._run_dicts(s, [run])[0]

    def list_runs(self) -> list[dict]:
        """All runs, newest first, each with ``latest_step`` and ``best_valid_reward``."""
        with self._read() as s:
            runs = s.scalars(select(Run).order_by(Run.created_at.desc(), Run.id.desc())).all()
            return self._run_dicts(s, list(runs))

    def _run_dicts(self, s: Session, runs: list[Run]) -> list[dict]:
        """``latest_step``: the highest step recorded (any split), None before the first.
        ``best_valid_reward``: the highest ``val_reward`` of the run's checkpoints; without checkpoints, the highest
        ``valid_reward_mean`` (else ``reward_mean``) among its ``valid`` steps' metrics; None when neither exists."""
        ids = [r.id for r in runs]
        latest: dict[str, int] = {}
        best: dict[str, float] = {}
        for chunk in _chunks(ids):
            latest.update(s.execute(select(Step.run_id, func.max(Step.step)).where(Step.run_id.in_(chunk))
                                    .group_by(Step.run_id)).all())
            best.update((k, v) for k, v in s.execute(
                select(CheckpointRow.run_id, func.max(CheckpointRow.val_reward))
                .where(CheckpointRow.run_id.in_(chunk)).group_by(CheckpointRow.run_id)) if v is not None)
        beats: dict[str, datetime | None] = {}
        if self._has_heartbeat:
            for chunk in _chunks(ids):
                beats.update(s.execute(select(Run.id, Run.heartbeat_at).where(Run.id.in_(chunk))).all())
        missing = [i for i in ids if i not in best]
        for chunk in _chunks(missing):
            for rid, metrics in s.execute(select(Step.run_id, Step.metrics)
                                          .where(Step.run_id.in_(chunk), Step.split == "valid")):
                v = (metrics or {}).get("valid_reward_mean", (metrics or {}).get("reward_mean"))
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    best[rid] = max(best.get(rid, -math.inf), float(v))
        return [{
            "id": r.id, "name": r.name, "status": r.status, "config": r.config, "base_model": r.base_model,
            "output_dir": r.output_dir, "created_at": _iso(r.created_at), "updated_at": _iso(r.updated_at),
            "latest_step": latest.get(r.id), "best_valid_reward": best.get(r.id),
            "heartbeat_at": _iso(beats.get(r.id)), "interrupted": _stale(r.status, beats.get(r.id)),
        } for r in runs]

    def heartbeat(self, run_id: str, at: datetime | None = None) -> None:
        """Record that the process running ``run_id`` is alive (``at``: now unless given)."""
        with self._write() as s:
            s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=at or utcnow()))

    def set_status(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r} (allowed: {', '.join(RUN_STATUSES)})")
        with self._write() as s:
            now = utcnow()
            values: dict[str, Any] = {"status": status, "updated_at": now}
            if status == "running":
                values["heartbeat_at"] = now
            n = s.execute(update(Run).where(Run.id == run_id).values(**values)).rowcount
            if not n:
                raise RunNotFound(f"no run with id {run_id!r}")

    # ---- steps ---------------------------------------------------------------------------------------------
    def record_step(self, run_id: str, step: int, split: str, metrics: dict,
                    trajectories: Iterable[Trajectory]) -> None:
        """Write the step's metrics and every trajectory (with tool calls and grades) in ONE transaction.

        Idempotent per (run, step, split): what was recorded there before is replaced. Trajectories are stored
        under ``split`` (the step's split, e.g. ``eval:heldout``), whatever their own ``split`` field says.
        A ``trace_id`` already stored under another step, or repeated in the list, is an error (nothing written).
        """
        trajs = list(trajectories)
        _check_split(split)
        traces = [t.trace_id for t in trajs]
        dup = sorted({x for x in traces if traces.count(x) > 1}) if len(set(traces)) != len(traces) else []
        if dup:
            raise StoreError(f"record_step({run_id}, step {step}, {split}): trace_id repeated in the list: {dup[:5]}")
        traj_rows, call_rows, grade_rows = [], [], []
        now = utcnow()
        for t in trajs:
            tr, calls, grades = _trajectory_rows(run_id, step, split, t, now)
            traj_rows.append(tr)
            call_rows += calls
            grade_rows += grades
        with self._write() as s:
            if s.get(Run, run_id) is None:
                raise RunNotFound(f"record_step: no run with id {run_id!r}")
            # replacing is the rare case (a resumed step); checking first skips five DELETEs on every new step.
            # Trajectories are only ever written here, with their Step row in the same transaction, and deleted
            # with it: the Step row alone says whether this (run, step, split) was recorded.
            recorded = s.execute(select(Step.id).where(Step.run_id == run_id, Step.step == step,
                                                       Step.split == split).limit(1)).first()
            if recorded:
                self._delete_where(s, run_id, (TrajectoryRow.step == step) & (TrajectoryRow.split == split),
                                   (Step.step == step) & (Step.split == split), None)
            for chunk in _chunks(traces):
                clash = s.execute(select(TrajectoryRow.trace_id, TrajectoryRow.run_id, TrajectoryRow.step,
                                         TrajectoryRow.split).where(TrajectoryRow.trace_id.in_(chunk))).first()
                if clash:
                    raise StoreError(f"record_step({run_id}, step {step}, {split}): trace_id {clash[0]} is already "
                                     f"stored under run {clash[1]}, step {clash[2]}, split {clash[3]}")
            s.add(Step(run_id=run_id, step=step, split=split, metrics=metrics or {}, created_at=now))
            if traj_rows:
                s.execute(TrajectoryRow.__table__.insert(), traj_rows)
            if call_rows:
                s.execute(ToolCallRow.__table__.insert(), call_rows)
            if grade_rows:
                s.execute(GradeRow.__table__.insert(), grade_rows)
            s.execute(update(Run).where(Run.id == run_id).values(updated_at=now))

    def delete_after(self, run_id: str, step: int) -> int:
        """Remove the steps, trajectories, tool calls, grades and checkpoints with step > ``step`` (one transaction);
        returns the number of rows removed. Used when a killed run resumes from the checkpoint at ``step``."""
        with self._write() as s:
            return self._delete_where(s, run_id, TrajectoryRow.step > step, Step.step > step,
                                      CheckpointRow.step > step)

    @staticmethod
    def _delete_where(s: Session, run_id: str, traj_cond: Any, step_cond: Any, ckpt_cond: Any) -> int:
        traces = select(TrajectoryRow.trace_id).where(TrajectoryRow.run_id == run_id, traj_cond).scalar_subquery()
        n = 0
        n += s.execute(delete(ToolCallRow).where(ToolCallRow.run_id == run_id, ToolCallRow.trace_id.in_(traces))).rowcount
        n += s.execute(delete(GradeRow).where(GradeRow.run_id == run_id, GradeRow.trace_id.in_(traces))).rowcount
        n += s.execute(delete(TrajectoryRow).where(TrajectoryRow.run_id == run_id, traj_cond)).rowcount
        n += s.execute(delete(Step).where(Step.run_id == run_id, step_cond)).rowcount
        if ckpt_cond is not None:
            n += s.execute(delete(CheckpointRow).where(CheckpointRow.run_id == run_id, ckpt_cond)).rowcount
        return n

    def step_metrics(self, run_id: str, split: str | None = None) -> list[dict]:
        """``[{"step", "split", **metrics}]`` ordered by step then split."""
        q = select(Step).where(Step.run_id == run_id)
        if split is not None:
            q = q.where(Step.split == split)
        with self._read() as s:
            return [{**(r.metrics or {}), "step": r.step, "split": r.split}
                    for r in s.scalars(q.order_by(Step.step, Step.split))]

    # ---- trajectories --------------------------------------------------------------------------------------
    def trajectories(self, run_id: str, *, step: int | None = None, split: str | None = None,
                     limit: int | None = None) -> list[dict]:
        """Trajectories of a run (ordered by step, split, row, sample), each with ``tool_calls`` and ``grades``."""
        q = select(TrajectoryRow).where(TrajectoryRow.run_id == run_id)
        if step is not None:
            q = q.where(TrajectoryRow.step == step)
        if split is not None:
            q = q.where(TrajectoryRow.split == split)
        q = q.order_by(TrajectoryRow.step, TrajectoryRow.split, TrajectoryRow.row_index, TrajectoryRow.sample_index,
                       TrajectoryRow.trace_id)
        if limit is not None:
            q = q.limit(limit)
        with self._read() as s:
            return self._nest(s, list(s.scalars(q)))

    def trajectory(self, trace_id: str) -> dict | None:
        with self._read() as s:
            row = s.get(TrajectoryRow, trace_id)
            return self._nest(s, [row])[0] if row is not None else None

    def _nest(self, s: Session, rows: list[TrajectoryRow]) -> list[dict]:
        out = {r.trace_id: _traj_dict(r) for r in rows}
        ids = list(out)
        for chunk in _chunks(ids):
            for c in s.scalars(select(ToolCallRow).where(ToolCallRow.trace_id.in_(chunk))
                               .order_by(ToolCallRow.trace_id, ToolCallRow.seq)):
                out[c.trace_id]["tool_calls"].append(_call_dict(c))
            for g in s.scalars(select(GradeRow).where(GradeRow.trace_id.in_(chunk)).order_by(GradeRow.id)):
                out[g.trace_id]["grades"].append(_grade_dict(g))
        return list(out.values())

    def count_trajectories(self, run_id: str, split: str | None = None) -> int:
        q = select(func.count()).select_from(TrajectoryRow).where(TrajectoryRow.run_id == run_id)
        if split is not None:
            q = q.where(TrajectoryRow.split == split)
        with self._read() as s:
            return int(s.scalar(q) or 0)

    def tool_calls(self, *, trace_id: str | None = None, run_id: str | None = None) -> list[dict]:
        """The audit query: tool calls of one trajectory or of a whole run, in order (step, trace, call), each with
        its trajectory's ``step`` and ``split``."""
        if trace_id is None and run_id is None:
            raise ValueError("tool_calls: give trace_id or run_id")
        q = select(ToolCallRow, TrajectoryRow.step, TrajectoryRow.split).join(
            TrajectoryRow, TrajectoryRow.trace_id == ToolCallRow.trace_id)
        if trace_id is not None:
            q = q.where(ToolCallRow.trace_id == trace_id)
        if run_id is not None:
            q = q.where(ToolCallRow.run_id == run_id)
        q = q.order_by(TrajectoryRow.step, TrajectoryRow.split, ToolCallRow.trace_id, ToolCallRow.seq)
        with self._read() as s:
            return [{**_call_dict(c), "step": st, "split": sp} for c, st, sp in s.execute(q)]

    # ---- checkpoints ---------------------------------------------------------------------------------------
    def record_checkpoint(self, run_id: str, checkpoint_id: str, step: int, path: str | os.PathLike,
                          metrics: dict, val_reward: float | None, kept: bool = True) -> None:
        """Record (or, for the same id, replace) a checkpoint."""
        with self._write() as s:
            if s.get(Run, run_id) is None:
                raise RunNotFound(f"record_checkpoint: no run with id {run_id!r}")
            row = s.get(CheckpointRow, checkpoint_id)
            if row is not None and row.run_id != run_id:
                raise StoreError(f"checkpoint id {checkpoint_id!r} already belongs to run {row.run_id}")
            if row is None:
                row = CheckpointRow(id=checkpoint_id, run_id=run_id, created_at=utcnow())
                s.add(row)
            row.step, row.path, row.metrics = step, str(path), metrics or {}
            row.val_reward = None if val_reward is None else float(val_reward)
            row.kept = bool(kept)

    def set_checkpoint_kept(self, checkpoint_id: str, kept: bool) -> None:
        with self._write() as s:
            n = s.execute(update(CheckpointRow).where(CheckpointRow.id == checkpoint_id).values(kept=bool(kept))).rowcount
            if not n:
                raise StoreError(f"no checkpoint with id {checkpoint_id!r}")

    def get_checkpoint(self, checkpoint_id: str) -> dict | None:
        """One checkpoint by its id (any run); None when there is none."""
        with self._read() as s:
            c = s.get(CheckpointRow, checkpoint_id)
            return None if c is None else {"id": c.id, "run_id": c.run_id, "step": c.step, "path": c.path,
                                           "metrics": c.metrics, "val_reward": c.val_reward, "kept": c.kept,
                                           "created_at": _iso(c.created_at)}

    def checkpoints(self, run_id: str) -> list[dict]:
        with self._read() as s:
            rows = s.scalars(select(CheckpointRow).where(CheckpointRow.run_id == run_id)
                             .order_by(CheckpointRow.step, CheckpointRow.created_at))
            return [{"id": c.id, "run_id": c.run_id, "step": c.step, "path": c.path, "metrics": c.metrics,
                     "val_reward": c.val_reward, "kept": c.kept, "created_at": _iso(c.created_at)} for c in rows]

    # ---- audits (minimal; the audit stage extends) ---------------------------------------------------------
    def add_audit(self, trace_id: str, verdict: str, *, reviewer: str = "", note: str = "") -> int:
        with self._write() as s:
            a = Audit(trace_id=trace_id, verdict=verdict, reviewer=reviewer, note=note, created_at=utcnow())
            s.add(a)
            s.flush()
            return int(a.id)

    def audits(self, trace_id: str | None = None) -> list[dict]:
        q = select(Audit).order_by(Audit.id)
        if trace_id is not None:
            q = q.where(Audit.trace_id == trace_id)
        with self._read() as s:
            return [{"id": a.id, "trace_id": a.trace_id, "verdict": a.verdict, "reviewer": a.reviewer,
                     "note": a.note, "created_at": _iso(a.created_at)} for a in s.scalars(q)]

    def audits_for_run(self, run_id: str, *, step: int | None = None, split: str | None = None) -> list[dict]:
        """Verdicts on the trajectories of one run (optionally one step/split), each with the trajectory's ``step``,
        ``split``, ``row_index`` and ``checkpoint_id``; oldest first."""
        q = select(Audit, TrajectoryRow.step, TrajectoryRow.split, TrajectoryRow.row_index,
                   TrajectoryRow.checkpoint_id).join(TrajectoryRow, TrajectoryRow.trace_id == Audit.trace_id)
        q = q.where(TrajectoryRow.run_id == run_id)
        if step is not None:
            q = q.where(TrajectoryRow.step == step)
        if split is not None:
            q = q.where(TrajectoryRow.split == split)
        with self._read() as s:
            return [{"id": a.id, "trace_id": a.trace_id, "verdict": a.verdict, "reviewer": a.reviewer, "note": a.note,
                     "created_at": _iso(a.created_at), "step": st, "split": sp, "row_index": ri, "checkpoint_id": ck}
                    for a, st, sp, ri, ck in s.execute(q.order_by(Audit.id))]

    # ---- model registry (promotion) ------------------------------------------------------------------------
    def add_registry_entry(self, run_id: str, checkpoint_id: str, *, status: str, evidence: dict,
                           grader_versions: dict) -> int:
        """Record a promotion decision (``status`` "promoted", "refused", …) with its evidence; returns its id."""
        with self._write() as s:
            e = RegistryEntry(run_id=run_id, checkpoint_id=checkpoint_id, status=status, evidence=evidence or {},
                              grader_versions=grader_versions or {}, created_at=utcnow())
            s.add(e)
            s.flush()
            return int(e.id)

    def update_registry_entry(self, entry_id: int, *, status: str | None = None, evidence: dict | None = None,
                              grader_versions: dict | None = None) -> None:
        with self._write() as s:
            e = s.get(RegistryEntry, int(entry_id))
            if e is None:
                raise StoreError(f"no registry entry {entry_id}")
            if status is not None:
                e.status = status
            if evidence is not None:
                e.evidence = evidence
            if grader_versions is not None:
                e.grader_versions = grader_versions

    def registry(self, status: str | list[str] | None = None) -> list[dict]:
        """Registry entries, newest first; ``status`` filters (one or several)."""
        q = select(RegistryEntry)
        if status is not None:
            q = q.where(RegistryEntry.status.in_([status] if isinstance(status, str) else list(status)))
        with self._read() as s:
            return [{"id": e.id, "run_id": e.run_id, "checkpoint_id": e.checkpoint_id, "status": e.status,
                     "evidence": e.evidence, "grader_versions": e.grader_versions, "created_at": _iso(e.created_at)}
                    for e in s.scalars(q.order_by(RegistryEntry.id.desc()))]

    # ---- production traces (agentrft serve) ---------------------------------------------------------------
    _TRACE_FIELDS = ("request_id", "trace_id", "endpoint", "model", "checkpoint_id", "status", "error", "messages",
                     "tools", "params", "choices", "tool_calls", "prompt_tokens", "completion_tokens", "latency_s",
                     "user", "meta", "deployment", "arm")
    TRACE_ARMS = ("production", "candidate", "shadow")

    def record_traces(self, traces: list[dict]) -> None:
        """Record served requests (dicts with the fields of ``TraceRow``; ``metadata`` is accepted for ``meta``) in
        one transaction."""
        if not traces:
            return
        with self._write() as s:
            for t in traces:
                t = dict(t)
                if "metadata" in t:
                    t["meta"] = t.pop("metadata") or {}
                unknown = set(t) - set(self._TRACE_FIELDS) - {"created_at"}
                if unknown:
                    raise StoreError(f"record_traces: unknown fields {sorted(unknown)}")
                if not t.get("request_id") or not t.get("trace_id"):
                    raise StoreError("record_traces: request_id and trace_id are required")
                if t.get("arm") is not None and t["arm"] not in self.TRACE_ARMS:
                    raise StoreError(f"record_traces: arm {t['arm']!r} is not one of {self.TRACE_ARMS}")
                s.add(TraceRow(**{"created_at": utcnow(), **t}))

    def traces(self, *, trace_id: str | None = None, model: str | None = None, deployment: str | None = None,
               arm: str | None = None, since: datetime | None = None, until: datetime | None = None,
               after_id: int | None = None, limit: int | None = None) -> list[dict]:
        """Served requests, oldest first; filtered by the client's ``trace_id``, ``model``, ``deployment`` and
        ``arm``, a time window (``since`` inclusive, ``until`` exclusive, UTC) and/or ``after_id`` (keyset paging:
        rows with ``id > after_id``)."""
        from sqlalchemy.orm import undefer

        q = select(TraceRow).order_by(TraceRow.id)
        if self._has_arm:
            q = q.options(undefer(TraceRow.deployment), undefer(TraceRow.arm))
        elif deployment is not None or arm is not None:
            return []  # a version-2 store opened read-only: it has no deployment requests
        for col, value in ((TraceRow.trace_id, trace_id), (TraceRow.model, model), (TraceRow.deployment, deployment),
                           (TraceRow.arm, arm)):
            if value is not None:
                q = q.where(col == value)
        if since is not None:
            q = q.where(TraceRow.created_at >= since)
        if until is not None:
            q = q.where(TraceRow.created_at < until)
        if after_id is not None:
            q = q.where(TraceRow.id > int(after_id))
        if limit is not None:
            q = q.limit(int(limit))
        plain = [f for f in self._TRACE_FIELDS if f not in ("meta", "deployment", "arm")]
        with self._read() as s:
            return [{**{f: getattr(r, f) for f in plain}, "metadata": r.meta,
                     "deployment": r.deployment if self._has_arm else None, "arm": r.arm if self._has_arm else None,
                     "id": r.id, "created_at": _iso(r.created_at)} for r in s.scalars(q)]

    # ---- user feedback on served answers (POST /v1/feedback) ------------------------------------------------
    def add_feedback(self, trace_id: str, *, score: float | None = None, label: str | None = None,
                     comment: str = "", actor: str = "", request_id: str | None = None) -> dict:
        """Record one verdict on a served conversation; at least one of ``score`` (a finite number) and ``label``.
        Returns the stored row."""
        if not trace_id or len(trace_id) > 200:
            raise ValueError("feedback: trace_id is required (at most 200 characters)")
        if score is None and not label:
            raise ValueError("feedback: give a score or a label")
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(float(score)):
                raise ValueError(f"feedback: score must be a finite number, got {score!r}")
            score = float(score)
        if label is not None and len(label) > 200:
            raise ValueError("feedback: label is at most 200 characters")
        with self._write() as s:
            f = FeedbackRow(trace_id=trace_id, request_id=request_id, score=score, label=label, comment=comment or "",
                            actor=actor or "", created_at=utcnow())
            s.add(f)
            s.flush()
            return _feedback_dict(f)

    def feedback(self, *, trace_ids: list[str] | None = None, since: datetime | None = None) -> list[dict]:
        """Feedback rows, oldest first, for the given conversations (all when None) and/or since a time."""
        q = select(FeedbackRow).order_by(FeedbackRow.id)
        if since is not None:
            q = q.where(FeedbackRow.created_at >= since)
        with self._read() as s:
            if trace_ids is None:
                return [_feedback_dict(f) for f in s.scalars(q)]
            out: list[dict] = []
            for chunk in _chunks(list(dict.fromkeys(trace_ids))):
                out += [_feedback_dict(f) for f in s.scalars(q.where(FeedbackRow.trace_id.in_(chunk)))]
            return sorted(out, key=lambda f: f["id"])

    # ---- approvals: tool calls waiting for a person (enqueued by the approval flow, decided in `agentrft ui`) ---
    def enqueue_approval(self, trace_id: str, tool_name: str, arguments: Any, *, run_id: str | None = None) -> int:
        """Queue a tool call for a decision; returns its approval id. ``arguments``: the call's JSON text (a dict
        is serialized)."""
        args = arguments if isinstance(arguments, str) else _dumps_strict(arguments)
        if len(trace_id) > 100 or len(tool_name) > 200:
            raise ValueError("enqueue_approval: trace_id is at most 100 characters, tool_name at most 200")
        with self._write() as s:
            a = Approval(trace_id=trace_id, run_id=run_id, tool_name=tool_name, arguments=args, status="pending",
                         requested_at=utcnow())
            s.add(a)
            s.flush()
            return int(a.id)

    def list_approvals(self, status: str | None = None, *, limit: int = 200) -> list[dict]:
        """Approvals, oldest pending first (``status`` filters), at most ``limit``."""
        q = select(Approval)
        if status is not None:
            q = q.where(Approval.status == status)
        q = q.order_by(Approval.id if status == "pending" else Approval.id.desc()).limit(limit)
        with self._read() as s:
            return [_approval_dict(a) for a in s.scalars(q)]

    def get_approval(self, approval_id: int) -> dict | None:
        with self._read() as s:
            a = s.get(Approval, int(approval_id))
            return None if a is None else _approval_dict(a)

    def decide_approval(self, approval_id: int, decision: str, *, decided_by: str, reason: str = "") -> dict:
        """Approve or deny a pending request (``decision`` "approved" | "denied"), recording who and when. A request
        already decided is not changed (StoreError says by whom), so two reviewers cannot both decide it."""
        if decision not in ("approved", "denied"):
            raise ValueError(f"decision {decision!r}: expected 'approved' or 'denied'")
        if not decided_by.strip() or len(decided_by.strip()) > 200:
            raise ValueError("decided_by: say who decides (1 to 200 characters)")
        for attempt in range(50):
            try:
                with self._write() as s:
                    a = s.get(Approval, int(approval_id))
                    if a is None:
                        raise StoreError(f"no approval request {approval_id}")
                    if a.status != "pending":
                        raise StoreError(f"approval request {approval_id} was already {a.status} by {a.decided_by} "
                                         f"at {_iso(a.decided_at)}")
                    a.status, a.decided_by, a.decided_at, a.reason = decision, decided_by.strip(), utcnow(), reason
                    s.flush()
                    out = _approval_dict(a)
                    # the decision and its ledger record commit together (the audit ledger, store/ledger.py)
                    append_in_session(s, f"approval.{decision}",
                                      f"approval:{a.id}", {k: out[k] for k in ("id", "trace_id", "tool_name",
                                                                               "arguments", "status", "reason")},
                                      out["decided_by"])
                    return out
            except IntegrityError:  # another ledger writer took the next seq first: decide again on the new head
                time.sleep(0.002 * (attempt + 1))
        raise StoreError(f"decide_approval({approval_id}): lost the race for the ledger's next record 50 times")

    # ---- diagnostics ---------------------------------------------------------------------------------------
    def pragma(self, name: str) -> Any:
        """A SQLite PRAGMA's value on a pooled connection (``journal_mode``, ``foreign_keys``, ``busy_timeout``)."""
        if not self.is_sqlite:
            raise StoreError("pragma() is for SQLite stores")
        if not name.replace("_", "").isalnum():
            raise ValueError(f"bad pragma name {name!r}")
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


# ---------------------------------------------------------------------------------------------------------------
# SQLite setup and row conversion
# ---------------------------------------------------------------------------------------------------------------


def _env_timeout() -> float:
    raw = os.environ.get("AGENTRFT_STORE_BUSY_TIMEOUT_S")
    if raw is None:
        return 30.0
    try:
        v = float(raw)
    except ValueError:
        raise StoreError(f"AGENTRFT_STORE_BUSY_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if not math.isfinite(v) or v < 0:
        raise StoreError(f"AGENTRFT_STORE_BUSY_TIMEOUT_S={raw!r} must be a finite number of seconds ≥ 0")
    return v


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _explain(e: Any, where: str, busy_timeout_s: float) -> str:
    """A user's message for a DBAPI error on the store ``where``."""
    msg = _first_line(e)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return (f"store {where} is locked by another process (waited {busy_timeout_s:g} s; "
                "AGENTRFT_STORE_BUSY_TIMEOUT_S waits longer)")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return f"store {where} is not a readable SQLite database: it is corrupt, truncated or another kind of file ({msg})"
    if "readonly" in low or "read-only" in low:
        return f"store {where} is read-only ({msg}); commands that write need a writable store"
    if "disk is full" in low or "no space" in low:
        return f"store {where}: the disk is full ({msg})"
    if "unable to open" in low:
        return f"cannot open store {where} ({msg})"
    if "connection" in low or "could not translate host" in low or "does not exist" in low:
        return f"cannot connect to store {where} ({msg})"
    return f"store {where}: {msg}"


def _check_sqlite_file(path: Path, mode: str, where: str) -> None:
    """What can be said about a SQLite store's file before opening it (opening a directory or a missing file in
    read mode gives SQLite's unhelpful 'unable to open database file')."""
    if path.is_dir():
        raise StoreError(f"store {where} is a directory, not a SQLite file")
    if path.exists() and not path.is_file():  # a FIFO blocks the open forever; a device or socket is no store
        raise StoreError(f"store {where} is not a regular file (a pipe, device or socket), not a SQLite file")
    if mode != "create":
        if not path.exists():
            what = "nothing was created" if mode == "read" else "nothing there to open or resume; nothing was created"
            raise StoreError(f"no store at {where} ({what})")
        return
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store's directory {parent}: {e.strerror or e}") from None
    if not parent.is_dir():
        raise StoreError(f"cannot create store {where}: {parent} is not a directory")


def _wal_files(path: Path) -> list[Path]:
    return [path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _tidy_wal_files(engine: Engine, path: Path, absent: list[Path]) -> None:
    """Remove the empty ``-wal``/``-shm`` files a read-only open created, the way SQLite does: the last connection
    to close a WAL database deletes them, and a read-only one is not allowed to. So one ordinary connection is
    opened and closed; if another process has the store open it is not the last one and SQLite leaves the files
    to that process. The database file itself is not changed (an empty WAL has nothing to checkpoint). Best
    effort: a read-only directory or any error leaves things as they are."""
    import sqlite3

    engine.dispose()  # our own read connections first, or ours would not be the last one
    try:
        wal = path.with_name(path.name + "-wal")
        if not any(p.exists() for p in absent) or (wal.exists() and wal.stat().st_size) or \
                not os.access(path.parent, os.W_OK):
            return
        con = sqlite3.connect(str(path), timeout=0.1)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except Exception:  # noqa: BLE001 — tidying is a courtesy; it never turns a read into an error
        pass


def _readonly_sqlite_connect(path: Path, busy_timeout_s: float):  # noqa: ANN202
    """A connection factory that opens ``path`` read-only (``mode=ro``): nothing is created beside it. In a
    directory nobody may write to, a WAL database whose ``-shm`` file is missing cannot be opened that way; it is
    then opened ``immutable`` (nobody can be writing to it there)."""
    import sqlite3
    from urllib.parse import quote

    target = quote(str(path.resolve()))

    def connect():  # noqa: ANN202
        try:
            con = sqlite3.connect(f"file:{target}?mode=ro", uri=True, check_same_thread=False, timeout=busy_timeout_s)
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e) and "readonly" not in str(e):
                raise
            return sqlite3.connect(f"file:{target}?immutable=1", uri=True, check_same_thread=False,
                                   timeout=busy_timeout_s)

    return connect


def _sqlite_setup(engine: Engine, busy_timeout_s: float, readonly: bool = False) -> None:
    """WAL, foreign keys, busy timeout on every connection; our own BEGIN (IMMEDIATE for writes).

    pysqlite's own transaction handling begins transactions late and never for SELECTs; turning it off
    (``isolation_level = None``) and emitting BEGIN ourselves is SQLAlchemy's documented recipe.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        if not readonly:  # a reader changes nothing about the file
            cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("agentrft_write") else "BEGIN")


def _migrate(conn: Any) -> None:
    """Bring a store written by an older version up to the current tables (inside the opening write transaction,
    so two processes opening one old store do not both alter it)."""
    from sqlalchemy import inspect

    insp = inspect(conn)
    exists = "" if conn.dialect.name == "sqlite" else "IF NOT EXISTS "
    for table, names in ((Run.__table__, ("heartbeat_at",)), (TraceRow.__table__, ("deployment", "arm"))):
        have = {c["name"] for c in insp.get_columns(table.name)}
        for name in names:
            if name not in have:
                coltype = table.c[name].type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {exists}{name} {coltype}")


def _feedback_dict(f: FeedbackRow) -> dict:
    return {"id": f.id, "trace_id": f.trace_id, "request_id": f.request_id, "score": f.score, "label": f.label,
            "comment": f.comment, "actor": f.actor, "created_at": _iso(f.created_at)}


def _stale(status: str | None, beat: datetime | None, now: datetime | None = None) -> bool:
    """A `running` run whose last heartbeat is older than STALE_AFTER_S (or that never had one recorded)."""
    if status != "running":
        return False
    if beat is None:
        return False  # a store written before heartbeats: nothing to judge by
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    return ((now or utcnow()) - beat).total_seconds() > STALE_AFTER_S


def display_status(run: dict) -> str:
    """The status to show a user: ``interrupted`` for a stale ``running`` run, else the stored status."""
    return "interrupted" if run.get("interrupted") else (run.get("status") or "")


def _check_split(split: str) -> None:
    if split in ("train", "valid") or (split.startswith("eval:") and len(split) > 5):
        return
    raise ValueError(f"unknown split {split!r} (expected 'train', 'valid' or 'eval:<name>')")


def _approval(meta: dict) -> str | None:
    a = meta.get("approval")
    if a is None:
        return None
    if isinstance(a, str):
        return a
    if isinstance(a, bool):
        return "approved" if a else "denied"
    if isinstance(a, dict):
        d = a.get("decision", a.get("status"))
        return str(d) if d is not None else json.dumps(a, default=str)[:100]
    return str(a)[:100]


def _trajectory_rows(run_id: str, step: int, split: str, t: Trajectory, now: datetime):
    calls = t.tool_calls
    total = len(t.token_ids) if t.token_ids else t.prompt_len + t.completion_tokens
    traj = {
        "trace_id": t.trace_id, "run_id": run_id, "step": step, "split": split, "row_index": t.row_index,
        "group_id": t.group_id or "", "sample_index": t.sample_index, "checkpoint_id": t.checkpoint_id,
        "messages": t.messages,
        "turns": [{"index": u.index, "start": u.start, "end": u.end, "text": u.text, "finish_reason": u.finish_reason,
                   "parse_error": u.parse_error, "gen_latency_s": u.gen_latency_s,
                   "tool_call_ids": [c.call_id for c in u.tool_calls]} for u in t.turns],
        "prompt_tokens": t.prompt_len, "completion_tokens": t.completion_tokens, "total_tokens": total,
        "num_turns": t.num_turns, "num_tool_calls": len(calls), "tool_errors": t.tool_errors,
        "outcome": t.outcome, "drop_reason": t.drop_reason, "reward": t.reward, "advantage": t.advantage,
        "latency_s": t.latency_s, "tool_time_s": t.tool_time_s, "cost": getattr(t, "cost", None),
        "created_at": now,
    }
    call_rows = []
    for seq, c in enumerate(calls):
        meta = dict(c.meta or {})
        out = c.output or ""
        raw = out.encode("utf-8", "surrogatepass")
        call_rows.append({
            "trace_id": t.trace_id, "run_id": run_id, "seq": seq, "turn_index": c.turn_index, "call_id": c.call_id,
            "name": c.name, "arguments": c.arguments or "", "output": out,
            # the router may have truncated the output and kept the full output's hash/size in meta
            "output_sha256": str(meta.get("output_sha256") or hashlib.sha256(raw).hexdigest()),
            "output_bytes": int(meta.get("output_bytes") or len(raw)),
            "status": c.status, "error": c.error, "latency_s": c.latency_s, "retries": c.retries,
            "approval": _approval(meta), "meta": meta,
        })
    grade_rows = [{
        "trace_id": t.trace_id, "run_id": run_id, "grader_name": g.grader_name, "grader_type": g.grader_type,
        "version": g.version or "", "score": float(g.score), "passed": g.passed, "errors": g.errors or {},
        "sub_rewards": g.sub_rewards or {}, "turn_scores": g.turn_scores, "metadata": g.metadata or {},
        "execution_time_s": g.execution_time_s,
    } for g in t.grades]
    return traj, call_rows, grade_rows


def _traj_dict(r: TrajectoryRow) -> dict:
    return {
        "trace_id": r.trace_id, "run_id": r.run_id, "step": r.step, "split": r.split, "row_index": r.row_index,
        "group_id": r.group_id, "sample_index": r.sample_index, "checkpoint_id": r.checkpoint_id,
        "messages": r.messages, "turns": r.turns, "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens, "total_tokens": r.total_tokens, "num_turns": r.num_turns,
        "num_tool_calls": r.num_tool_calls, "tool_errors": r.tool_errors, "outcome": r.outcome,
        "drop_reason": r.drop_reason, "reward": r.reward, "advantage": r.advantage, "latency_s": r.latency_s,
        "tool_time_s": r.tool_time_s, "cost": r.cost, "created_at": _iso(r.created_at),
        "tool_calls": [], "grades": [],
    }


def _call_dict(c: ToolCallRow) -> dict:
    return {
        "id": c.id, "trace_id": c.trace_id, "run_id": c.run_id, "seq": c.seq, "turn_index": c.turn_index,
        "call_id": c.call_id, "name": c.name, "arguments": c.arguments, "output": c.output,
        "output_sha256": c.output_sha256, "output_bytes": c.output_bytes, "status": c.status, "error": c.error,
        "latency_s": c.latency_s, "retries": c.retries, "approval": c.approval, "meta": c.meta,
    }


def _grade_dict(g: GradeRow) -> dict:
    return {
        "id": g.id, "trace_id": g.trace_id, "run_id": g.run_id, "grader_name": g.grader_name,
        "grader_type": g.grader_type, "version": g.version, "score": g.score, "passed": g.passed,
        "errors": g.errors, "sub_rewards": g.sub_rewards, "turn_scores": g.turn_scores, "metadata": g.meta,
        "execution_time_s": g.execution_time_s,
    }


def _approval_dict(a: Approval) -> dict:
    return {"id": a.id, "trace_id": a.trace_id, "run_id": a.run_id, "tool_name": a.tool_name,
            "arguments": a.arguments, "status": a.status, "requested_at": _iso(a.requested_at),
            "decided_by": a.decided_by, "decided_at": _iso(a.decided_at), "reason": a.reason}
