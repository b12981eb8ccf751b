"""The store's part of deployments (mixed into RunStore): the deployment rows, their event history and the online
graders' observations of each served request.

Concurrency. A deployment changes only through :meth:`DeploymentStore.update_deployment` with ``expect_version``:
one conditional UPDATE (``… WHERE name = ? AND version = ?``, the version bumped) whose row count says whether this
writer won. Two servers (or a server and ``agentrft deploy``) sharing a store therefore never both apply a
decision; the loser re-reads and decides again. Observations are keyed by the trace row they came from (unique), so
a trace is observed once even when two controllers race.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from agentrft.store.ledger import append_in_session
from agentrft.store.schema import DeploymentEventRow, DeploymentObservationRow, DeploymentRow, utcnow

MODES = ("shadow", "canary", "full")
STATUSES = ("active", "held", "rolled_back", "completed")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_FIELDS = ("name", "production", "candidate", "previous", "mode", "weight", "shadow_fraction", "status", "phase",
           "stage", "policy", "state", "version", "created_at", "updated_at")
_UPDATABLE = set(_FIELDS) - {"name", "version", "created_at", "updated_at"}


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.isoformat()


def _dep_dict(d: DeploymentRow) -> dict[str, Any]:
    out = {k: getattr(d, k) for k in _FIELDS}
    out["created_at"], out["updated_at"] = _iso(d.created_at), _iso(d.updated_at)
    out["policy"], out["state"] = dict(d.policy or {}), dict(d.state or {})
    return out


def _event_dict(e: DeploymentEventRow) -> dict[str, Any]:
    return {"id": e.id, "deployment": e.deployment, "kind": e.kind, "mode": e.mode, "weight": e.weight,
            "phase": e.phase, "actor": e.actor, "data": e.data or {}, "created_at": _iso(e.created_at)}


_OBS_FIELDS = ("deployment", "phase", "arm", "trace_row", "trace_id", "checkpoint_id", "ok", "latency_s", "tool_calls",
               "graded", "scores", "safety_violation")


def _obs_dict(o: DeploymentObservationRow) -> dict[str, Any]:
    return {"id": o.id, **{k: getattr(o, k) for k in _OBS_FIELDS}, "created_at": _iso(o.created_at)}


class DeploymentStore:
    """Methods RunStore gets for deployments (uses RunStore's ``_read`` / ``_write`` sessions)."""

    def create_deployment(self, name: str, *, production: str, candidate: str | None, mode: str,
                          weight: float = 0.0, shadow_fraction: float = 1.0, stage: int = -1,
                          policy: dict | None = None, state: dict | None = None, actor: str = "",
                          event_data: dict | None = None) -> dict:
        """A new deployment and its ``create`` event, in one transaction. ValueError for a bad or taken name."""
        if not NAME_RE.match(name or ""):
            raise ValueError(f"deployment name {name!r}: use letters, digits, '.', '_' or '-' (at most 100, starting "
                             "with a letter or digit)")
        if mode not in MODES:
            raise ValueError(f"deployment mode {mode!r} is not one of {MODES}")
        now = utcnow()
        try:
            with self._write() as s:  # type: ignore[attr-defined]
                if s.get(DeploymentRow, name) is not None:
                    raise ValueError(f"a deployment named {name!r} exists already")
                s.add(DeploymentRow(name=name, production=production, candidate=candidate, previous=None, mode=mode,
                                    weight=float(weight), shadow_fraction=float(shadow_fraction), status="active",
                                    phase=0, stage=int(stage), policy=policy or {}, state=state or {}, version=1,
                                    created_at=now, updated_at=now))
                s.add(DeploymentEventRow(deployment=name, kind="create", mode=mode, weight=float(weight), phase=0,
                                         actor=actor, data=event_data or {}, created_at=now))
        except IntegrityError:
            raise ValueError(f"a deployment named {name!r} exists already") from None
        return self.get_deployment(name)  # type: ignore[return-value]

    def get_deployment(self, name: str) -> dict | None:
        with self._read() as s:  # type: ignore[attr-defined]
            d = s.get(DeploymentRow, name)
            return _dep_dict(d) if d is not None else None

    def list_deployments(self) -> list[dict]:
        with self._read() as s:  # type: ignore[attr-defined]
            return [_dep_dict(d) for d in s.scalars(select(DeploymentRow).order_by(DeploymentRow.name))]

    def update_deployment(self, name: str, *, expect_version: int, event: dict | None = None,
                          observations: list[dict] | None = None, ledger: dict | None = None,
                          **fields: Any) -> dict | None:
        """Set ``fields`` of deployment ``name`` if its version is still ``expect_version`` (then version + 1), and in
        the same transaction add ``event`` (``{kind, actor?, data?}``, stamped with the new mode/weight/phase) and
        ``observations``, and the ledger record ``ledger`` (``{kind, data, actor?}``, subject: the deployment).
        Returns the updated deployment, or None when another writer changed it first (nothing is written then: re-read and
        decide again)."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"update_deployment: unknown fields {sorted(unknown)}")
        now = utcnow()
        try:
            with self._write() as s:  # type: ignore[attr-defined]
                n = s.execute(update(DeploymentRow).where(DeploymentRow.name == name,
                                                          DeploymentRow.version == int(expect_version))
                              .values(**fields, version=int(expect_version) + 1, updated_at=now)).rowcount
                if n != 1:
                    return None
                d = s.get(DeploymentRow, name)
                s.refresh(d)
                if event is not None:
                    s.add(DeploymentEventRow(deployment=name, kind=event["kind"], mode=d.mode, weight=d.weight,
                                             phase=d.phase, actor=event.get("actor", ""),
                                             data=event.get("data") or {}, created_at=now))
                for o in observations or []:  # created_at: when the request was served (default: now)
                    at = o.get("created_at")
                    at = datetime.fromisoformat(at) if isinstance(at, str) else (at or now)
                    s.add(DeploymentObservationRow(**{k: o[k] for k in _OBS_FIELDS if k in o}, created_at=at))
                s.flush()
                if ledger is not None:
                    append_in_session(s, ledger["kind"], name, ledger.get("data") or {}, ledger.get("actor", ""))
                return _dep_dict(d)
        except IntegrityError:  # a trace another controller observed first, or a lost race for the ledger's next
            return None        # record: the whole update is refused

    def add_deployment_event(self, name: str, kind: str, *, actor: str = "", data: dict | None = None) -> dict:
        """An event that changes nothing (a drift alert without a hold, a note)."""
        with self._write() as s:  # type: ignore[attr-defined]
            d = s.get(DeploymentRow, name)
            if d is None:
                raise ValueError(f"no deployment named {name!r}")
            e = DeploymentEventRow(deployment=name, kind=kind, mode=d.mode, weight=d.weight, phase=d.phase,
                                   actor=actor, data=data or {}, created_at=utcnow())
            s.add(e)
            s.flush()
            return _event_dict(e)

    def deployment_events(self, name: str, *, kind: str | None = None) -> list[dict]:
        """The deployment's history, oldest first (its canary weight over time is the ``weight`` of each event)."""
        q = select(DeploymentEventRow).where(DeploymentEventRow.deployment == name).order_by(DeploymentEventRow.id)
        if kind is not None:
            q = q.where(DeploymentEventRow.kind == kind)
        with self._read() as s:  # type: ignore[attr-defined]
            return [_event_dict(e) for e in s.scalars(q)]

    def deployment_observations(self, name: str, *, phase: int | None = None, arm: str | None = None,
                                since_phase: int | None = None) -> list[dict]:
        """Observations of a deployment, oldest first; by ``phase`` (one step) or ``since_phase``, and ``arm``."""
        q = select(DeploymentObservationRow).where(DeploymentObservationRow.deployment == name)
        if phase is not None:
            q = q.where(DeploymentObservationRow.phase == int(phase))
        if since_phase is not None:
            q = q.where(DeploymentObservationRow.phase >= int(since_phase))
        if arm is not None:
            q = q.where(DeploymentObservationRow.arm == arm)
        with self._read() as s:  # type: ignore[attr-defined]
            return [_obs_dict(o) for o in s.scalars(q.order_by(DeploymentObservationRow.id))]
