"""The run store: every run, step, trajectory, tool call, grade and checkpoint in one SQL database."""

from agentrft.store.run_store import (
    RUN_STATUSES,
    AmbiguousRunId,
    RunNotFound,
    RunStore,
    StoreError,
)

__all__ = ["RUN_STATUSES", "AmbiguousRunId", "RunNotFound", "RunStore", "StoreError"]
