"""Which store a command works on: ``--store URL``, else the store of ``--config``, else ``runs/agentrft.db`` when
it exists. One rule for every command that opens a store by those options."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from agentrft.store.run_store import RunStore

DEFAULT_STORE = Path("runs/agentrft.db")


def open_store(config: Optional[Path], store: Optional[str], mode: str = "existing") -> RunStore:
    """The store must exist (a mistyped path is an error, never a new empty store); ``mode="read"`` for commands
    that only read (nothing is created or locked; a read-only store is readable). Raises ValueError when nothing
    names a store and the default does not exist."""
    from agentrft.config import load_config

    if store:
        return RunStore(store, mode=mode)
    if config:
        return RunStore(load_config(config).store_url, mode=mode)
    if not DEFAULT_STORE.exists():
        raise ValueError("no store given: pass --config CONFIG or --store URL (default runs/agentrft.db not found)")
    return RunStore("sqlite:///" + str(DEFAULT_STORE.resolve()), mode=mode)
