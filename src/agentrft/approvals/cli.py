"""``agentrft approvals list | show ID | approve ID | deny ID --reason``: the production approval queue, over the store
(the same rows ``/v1/approvals`` and ``agentrft ui`` decide; a server holding the call sees the decision at its next
poll). See docs/flywheel.md."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, help="The production approval queue: tool calls held for a person.")

_STORE = typer.Option(None, "--store", help="store URL (default: the --config's store, else runs/agentrft.db)")
_CONFIG = typer.Option(None, "--config", help="a run or serve config whose store to use")


def _open(config: Optional[Path], store: Optional[str], *, write: bool):
    from agentrft.store import RunStore

    if store is None and config is not None:
        from agentrft.config import read_yaml

        data = read_yaml(config)
        if isinstance(data, dict) and ("training_file" in data or "grader" in data):
            from agentrft.config import load_config

            store = load_config(config).store_url
        elif isinstance(data, dict) and data.get("store"):
            store = data["store"]
        else:
            raise typer.BadParameter(f"{config}: names no store (a serve config needs `store:`)")
    if store is None:
        default = Path("runs/agentrft.db")
        if not default.exists():
            raise typer.BadParameter("no store given: pass --store URL or --config CONFIG (default runs/agentrft.db "
                                     "not found)")
        store = "sqlite:///" + str(default.resolve())
    # existing: a mistyped path is an error, never a new empty store
    return RunStore(store, mode="existing" if write else "read")


def _line(a: dict) -> str:
    who = f" by {a['decided_by']} at {(a['decided_at'] or '')[:19]}" if a.get("decided_by") else ""
    why = f" ({a['reason']})" if a.get("reason") else ""
    return (f"#{a['id']} {a['status']}{who}{why}: {a['tool_name']}({a['arguments']}) · trace {a['trace_id']} · "
            f"requested {(a['requested_at'] or '')[:19]}")


@app.command("list")
def list_cmd(
    status: str = typer.Option("pending", "--status", help="pending | approved | denied | all"),
    limit: int = typer.Option(200, "--limit", min=1, max=10000),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    config: Optional[Path] = _CONFIG,
    store: Optional[str] = _STORE,
) -> None:
    """Queued tool calls: the pending ones, oldest first (or --status approved|denied|all, newest first)."""
    from agentrft.cli import user_errors

    if status not in ("pending", "approved", "denied", "all"):
        raise typer.BadParameter(f"--status must be pending, approved, denied or all; got {status!r}")
    with user_errors():
        st = _open(config, store, write=False)
        rows = st.list_approvals(None if status == "all" else status, limit=limit)
    for a in rows:
        typer.echo(json.dumps(a) if as_json else _line(a))
    if not rows and not as_json:
        typer.echo(f"no {'' if status == 'all' else status + ' '}approval requests")


@app.command("show")
def show_cmd(approval_id: int = typer.Argument(..., help="approval id"), config: Optional[Path] = _CONFIG,
             store: Optional[str] = _STORE) -> None:
    """One approval request, as JSON."""
    from agentrft.cli import err, user_errors

    with user_errors():
        a = _open(config, store, write=False).get_approval(approval_id)
    if a is None:
        err.print(f"[bold red]error:[/] no approval request {approval_id}", highlight=False)
        raise typer.Exit(2)
    typer.echo(json.dumps(a, indent=2))


def _decide(approval_id: int, decision: str, by: Optional[str], reason: str, config: Optional[Path],
            store: Optional[str]) -> None:
    from agentrft.cli import err, user_errors
    from agentrft.store import StoreError

    who = (by or getpass.getuser() or "").strip()
    with user_errors():
        st = _open(config, store, write=True)
        try:
            a = st.decide_approval(approval_id, decision, decided_by=who, reason=reason)
        except (StoreError, ValueError) as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        finally:
            st.close()
    typer.echo(_line(a))


@app.command("approve")
def approve_cmd(
    approval_id: int = typer.Argument(..., help="approval id (from `agentrft approvals list`)"),
    by: Optional[str] = typer.Option(None, "--by", help="who approves (recorded; default: your login name)"),
    reason: str = typer.Option("", "--reason", help="optional note, recorded"),
    config: Optional[Path] = _CONFIG,
    store: Optional[str] = _STORE,
) -> None:
    """Approve a held tool call: the waiting client gets the call."""
    _decide(approval_id, "approved", by, reason, config, store)


@app.command("deny")
def deny_cmd(
    approval_id: int = typer.Argument(..., help="approval id (from `agentrft approvals list`)"),
    reason: str = typer.Option(..., "--reason", help="why (recorded, and shown to the client as the refusal)"),
    by: Optional[str] = typer.Option(None, "--by", help="who denies (recorded; default: your login name)"),
    config: Optional[Path] = _CONFIG,
    store: Optional[str] = _STORE,
) -> None:
    """Deny a held tool call: the client gets a refusal naming the call, who denied it and why."""
    if not reason.strip():
        raise typer.BadParameter("--reason: say why the call is denied (the client shows it)")
    _decide(approval_id, "denied", by, reason, config, store)
