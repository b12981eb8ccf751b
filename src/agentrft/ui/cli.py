"""``agentrft ui``: serve the dashboard over a run store. Registered on the top-level app by :func:`register`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.console import Console

err = Console(stderr=True)
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def check_bind(host: str, token: str | None) -> None:
    """Refuse to show the store beyond loopback without a token (as ``agentrft tools serve`` does for tools)."""
    if host not in LOOPBACK_HOSTS and not token:
        raise ValueError(f"refusing to bind {host!r} without a token: every run, trajectory and approval would be "
                         "visible (and approvable) by anyone who can reach it. Pass --token (or set AGENTRFT_UI_TOKEN), "
                         "or bind 127.0.0.1.")


def register(app: typer.Typer) -> None:
    @app.command("ui")
    def ui(
        config: Optional[Path] = typer.Option(None, "--config", help="config whose store to show"),
        store: Optional[str] = typer.Option(None, "--store", help="store URL (or a SQLite file path)"),
        host: str = typer.Option("127.0.0.1", "--host", help="bind address (non-loopback needs --token)"),
        port: int = typer.Option(8710, "--port"),
        token: Optional[str] = typer.Option(None, "--token", envvar="AGENTRFT_UI_TOKEN",
                                            help="required on every request (open /ui/?token=… once in a browser)"),
    ) -> None:
        """The dashboard: runs with live curves, trajectories, checkpoints, compare, registry, approvals, audits."""
        import uvicorn

        from agentrft.config import ConfigError, load_config
        from agentrft.store import RunStore, StoreError
        from agentrft.ui.app import make_server_app

        try:
            check_bind(host, token)
            if store:
                st = RunStore(store)
            elif config:
                st = RunStore(load_config(config).store_url)
            else:
                default = Path("runs/agentrft.db")
                if not default.exists():
                    raise ValueError("no store given: pass --config CONFIG or --store URL "
                                     "(default runs/agentrft.db not found)")
                st = RunStore.for_path(default)
        except (ConfigError, StoreError, ValueError, OSError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        except Exception as e:  # noqa: BLE001 — a store URL that cannot be opened (driver missing, refused)
            err.print(f"[bold red]error:[/] cannot open the store: {type(e).__name__}: {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        shown = "[::1]" if host == "::1" else host
        err.print(f"dashboard on http://{shown}:{port}/ui/{'?token=…' if token else ''} over {st.url}", highlight=False)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        uvicorn.run(make_server_app(st, token=token), host=host, port=port, log_level="warning")
