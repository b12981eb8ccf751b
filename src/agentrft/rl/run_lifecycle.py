"""What a run does around its training loop: a heartbeat while it runs, and a failed start recorded as failed.

A process killed with SIGKILL (or stopped by a full disk before it could write its final status) cannot say so;
its heartbeat stops instead, and ``agentrft runs``/``show`` show the run as ``interrupted`` once the heartbeat is
older than :data:`agentrft.store.run_store.STALE_AFTER_S`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from agentrft.store.heartbeat import Heartbeat  # noqa: F401 — where the trainer has always imported it from


def set_status_quietly(store: Any, run_id: str, status: str) -> None:
    """Record a final status when the store lets us (a full disk or a locked store must not replace the error
    that ended the run with a second, chained one)."""
    try:
        store.set_status(run_id, status)
    except Exception:  # noqa: BLE001
        pass


def abort_start(trainer: Any) -> None:
    """A run that failed before its first step (its model did not load, …): record it as ``failed`` rather than
    leaving it ``queued``, and remove the run directory this start created (a resumed run keeps its directory)."""
    store, run_id = getattr(trainer, "store", None), getattr(trainer, "run_id", None)
    if store is None or run_id is None:
        return
    set_status_quietly(store, run_id, "failed")
    run_dir = getattr(trainer, "run_dir", None)
    if not getattr(trainer, "resume_id", None) and run_dir is not None and Path(run_dir).is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
