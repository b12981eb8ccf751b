"""``agentrft worker``: a fine-tuning job worker (issue 16), registered on the top-level app by ``register``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def register(app: Any) -> None:
    @app.command("worker")
    def worker(
        config: Path = typer.Option(..., "--config", help="the server's serve config YAML (its store and jobs: "
                                    "settings)"),
        concurrency: Optional[int] = typer.Option(None, "--concurrency", help="jobs run at once (default: "
                                                  "jobs.concurrency, 1)"),
        store: Optional[str] = typer.Option(None, "--store", help="store URL (default: the config's)"),
        once: bool = typer.Option(False, "--once", help="exit when no job is waiting"),
    ) -> None:
        """Take queued fine-tuning jobs from the store (with a lease) and run them; run several on machines sharing
        the store."""
        from agentrft.cli import user_errors
        from agentrft.serve.job_worker import run_worker

        with user_errors():
            run_worker(config, concurrency=concurrency, once=once, store=store)
