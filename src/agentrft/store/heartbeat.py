"""A run's heartbeat: a process that runs for a while (training, compare, distillation) touches its run every
:data:`~agentrft.store.run_store.HEARTBEAT_INTERVAL_S`, so a SIGKILL, which cannot record a status, shows in
``agentrft runs`` as ``interrupted`` once the beat is older than :data:`~agentrft.store.run_store.STALE_AFTER_S`
instead of ``running`` forever. In the store package so that every long command, not only the trainer, can use it.
"""

from __future__ import annotations

import threading
from typing import Any

from agentrft.store.run_store import HEARTBEAT_INTERVAL_S


class Heartbeat:
    """Touch ``store.heartbeat(run_id)`` every ``interval_s`` on a daemon thread until :meth:`stop`."""

    def __init__(self, store: Any, run_id: str, interval_s: float = HEARTBEAT_INTERVAL_S):
        self.store, self.run_id, self.interval_s = store, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="agentrft-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.store.heartbeat(self.run_id)
            except Exception:  # noqa: BLE001 — a busy or full store: the run itself reports its own errors
                pass

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
