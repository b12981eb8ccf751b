"""The store's part of the OpenAI fine-tuning API: files, jobs, job events and job leases (mixed into RunStore).

Leases. A worker takes a job with :meth:`JobStore.claim_job`: one conditional UPDATE (``… WHERE id = ? AND
(lease_owner IS NULL OR lease_expires < now)``) whose row count says whether this worker won, so two workers —
threads, processes or machines sharing the store — never both take one job, on SQLite and on PostgreSQL alike.
The worker renews its lease by heartbeat (:meth:`renew_lease`, which fails once another worker has taken the job);
a killed worker's lease expires and the job is taken again (and resumed from its run's last checkpoint).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from agentrft.store.schema import FileRow, JobEventRow, JobRow, Step, TrajectoryRow

# statuses a worker may take a job in (with a free or expired lease): queued → start; running → resume after a
# worker died; pausing → the worker died while pausing, the taker finishes the pause
CLAIMABLE = ("queued", "running", "pausing")
TERMINAL = ("succeeded", "failed", "cancelled")

_JOB_FIELDS = ("status", "model", "base_model", "served_base", "method_type", "method", "hyperparameters", "config",
               "training_file", "validation_file", "suffix", "seed", "metadata", "integrations", "run_id",
               "total_steps", "error", "fine_tuned_model", "result_files", "trained_tokens", "control",
               "lease_owner", "lease_expires", "attempts", "created_at", "started_at", "finished_at", "updated_at")


def _col(k: str) -> str:
    return "meta" if k == "metadata" else k


def _job_dict(j: JobRow) -> dict[str, Any]:
    return {"id": j.id, **{k: getattr(j, _col(k)) for k in _JOB_FIELDS}}


def _file_dict(f: FileRow) -> dict[str, Any]:
    return {"id": f.id, "filename": f.filename, "purpose": f.purpose, "bytes": f.bytes, "sha256": f.sha256,
            "path": f.path, "status": f.status, "rows": f.rows, "created_at": f.created_at}


def _epoch(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


class JobStore:
    """Methods RunStore gets for files, jobs and events (uses RunStore's ``_read`` / ``_write`` sessions)."""

    # ---- files ---------------------------------------------------------------------------------------------
    def add_file(self, file_id: str, *, filename: str, purpose: str, nbytes: int, sha256: str, path: str,
                 rows: int | None = None, created_at: float | None = None) -> dict:
        with self._write() as s:  # type: ignore[attr-defined]
            f = FileRow(id=file_id, filename=filename, purpose=purpose, bytes=int(nbytes), sha256=sha256,
                        path=str(path), rows=rows, status="processed", created_at=created_at or time.time())
            s.add(f)
        return _file_dict(f)

    def get_file(self, file_id: str) -> dict | None:
        with self._read() as s:  # type: ignore[attr-defined]
            f = s.get(FileRow, file_id)
            return _file_dict(f) if f is not None else None

    def list_files(self, purpose: str | None = None) -> list[dict]:
        """Files, newest first."""
        q = select(FileRow).order_by(FileRow.created_at.desc(), FileRow.id.desc())
        if purpose:
            q = q.where(FileRow.purpose == purpose)
        with self._read() as s:  # type: ignore[attr-defined]
            return [_file_dict(f) for f in s.scalars(q)]

    def delete_file(self, file_id: str) -> dict | None:
        """Remove the file's row; returns what it was (None if there was none)."""
        with self._write() as s:  # type: ignore[attr-defined]
            f = s.get(FileRow, file_id)
            if f is None:
                return None
            out = _file_dict(f)
            s.delete(f)
            return out

    # ---- jobs ----------------------------------------------------------------------------------------------
    def create_job(self, job_id: str, **fields: Any) -> dict:
        unknown = set(fields) - set(_JOB_FIELDS)
        if unknown:
            raise ValueError(f"create_job: unknown fields {sorted(unknown)}")
        now = time.time()
        fields.setdefault("created_at", now)
        fields.setdefault("updated_at", now)
        with self._write() as s:  # type: ignore[attr-defined]
            j = JobRow(id=job_id, **{_col(k): v for k, v in fields.items()})
            s.add(j)
        return self.get_job(job_id)  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict | None:
        with self._read() as s:  # type: ignore[attr-defined]
            j = s.get(JobRow, job_id)
            return _job_dict(j) if j is not None else None

    def list_jobs(self, *, after: str | None = None, limit: int = 20,
                  metadata: dict[str, str] | None = None) -> tuple[list[dict], bool]:
        """Jobs newest first, starting after the job ``after``; ``metadata`` keeps jobs whose metadata has every
        given pair. Returns ``(jobs, has_more)``."""
        with self._read() as s:  # type: ignore[attr-defined]
            rows = [_job_dict(j) for j in s.scalars(select(JobRow).order_by(JobRow.created_at.desc(),
                                                                               JobRow.id.desc()))]
        if metadata:
            rows = [j for j in rows if all((j["metadata"] or {}).get(k) == v for k, v in metadata.items())]
        if after is not None:
            ids = [j["id"] for j in rows]
            rows = rows[ids.index(after) + 1:] if after in ids else []
        return rows[:limit], len(rows) > limit

    def update_job(self, job_id: str, *, expect_status: tuple[str, ...] | None = None,
                   owner: str | None = None, **fields: Any) -> bool:
        """Set fields of a job; with ``expect_status`` only when its status is one of those, with ``owner`` only
        while that worker holds its lease. Returns whether the row changed."""
        unknown = set(fields) - set(_JOB_FIELDS)
        if unknown:
            raise ValueError(f"update_job: unknown fields {sorted(unknown)}")
        q = update(JobRow).where(JobRow.id == job_id)
        if expect_status is not None:
            q = q.where(JobRow.status.in_(list(expect_status)))
        if owner is not None:
            q = q.where(JobRow.lease_owner == owner)
        values = {_col(k): v for k, v in fields.items()}
        values["updated_at"] = time.time()
        with self._write() as s:  # type: ignore[attr-defined]
            return bool(s.execute(q.values(**values)).rowcount)

    # ---- leases --------------------------------------------------------------------------------------------
    def claim_job(self, owner: str, lease_s: float, *, now: float | None = None) -> dict | None:
        """Take the oldest job in a claimable status whose lease is free or expired; None when there is none."""
        now = time.time() if now is None else now
        free = or_(JobRow.lease_owner.is_(None), JobRow.lease_expires.is_(None), JobRow.lease_expires < now)
        with self._read() as s:  # type: ignore[attr-defined]
            ids = list(s.scalars(select(JobRow.id).where(JobRow.status.in_(CLAIMABLE), free)
                                 .order_by(JobRow.created_at, JobRow.id).limit(20)))
        for job_id in ids:
            with self._write() as s:  # type: ignore[attr-defined]
                n = s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status.in_(CLAIMABLE), free)
                              .values(lease_owner=owner, lease_expires=now + lease_s, attempts=JobRow.attempts + 1,
                                      updated_at=now)).rowcount
            if n == 1:
                return self.get_job(job_id)
        return None

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend this worker's lease; False when the job is no longer this worker's."""
        with self._write() as s:  # type: ignore[attr-defined]
            return bool(s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.lease_owner == owner)
                                  .values(lease_expires=time.time() + lease_s)).rowcount)

    def release_lease(self, job_id: str, owner: str) -> None:
        with self._write() as s:  # type: ignore[attr-defined]
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.lease_owner == owner)
                      .values(lease_owner=None, lease_expires=None, updated_at=time.time()))

    # ---- events --------------------------------------------------------------------------------------------
    def add_job_event(self, job_id: str, message: str, *, level: str = "info", data: dict | None = None) -> int:
        with self._write() as s:  # type: ignore[attr-defined]
            e = JobEventRow(job_id=job_id, message=message, level=level, data=data, created_at=time.time())
            s.add(e)
            s.flush()
            return int(e.seq)

    def job_events(self, job_id: str) -> list[dict]:
        """The job's lifecycle events, oldest first."""
        with self._read() as s:  # type: ignore[attr-defined]
            return [{"seq": e.seq, "job_id": e.job_id, "created_at": e.created_at, "level": e.level,
                     "message": e.message, "data": e.data}
                    for e in s.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id)
                                       .order_by(JobEventRow.seq))]

    # ---- what a job's run has done -------------------------------------------------------------------------
    def step_records(self, run_id: str) -> list[dict]:
        """``[{"step", "split", "metrics", "created_at" (Unix s)}]`` of a run, by step then split."""
        with self._read() as s:  # type: ignore[attr-defined]
            return [{"step": r.step, "split": r.split, "metrics": r.metrics or {}, "created_at": _epoch(r.created_at)}
                    for r in s.scalars(select(Step).where(Step.run_id == run_id).order_by(Step.step, Step.split))]

    def trained_tokens(self, run_id: str) -> int:
        """Tokens of the run's training trajectories (prompt, sampled and tool tokens)."""
        with self._read() as s:  # type: ignore[attr-defined]
            return int(s.scalar(select(func.coalesce(func.sum(TrajectoryRow.total_tokens), 0))
                                .where(TrajectoryRow.run_id == run_id, TrajectoryRow.split == "train")) or 0)

    def delete_job(self, job_id: str) -> None:
        with self._write() as s:  # type: ignore[attr-defined]
            s.execute(delete(JobEventRow).where(JobEventRow.job_id == job_id))
            s.execute(delete(JobRow).where(JobRow.id == job_id))
