"""Commands: ``agentrft promote``, ``agentrft registry``, ``agentrft regress``.

Mount them on the top-level app with :func:`register` (``register(app)``).
Exit codes: 0 promoted / ok, 1 refused or regressed, 2 a user error.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from agentrft.store.locate import open_store

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Promotion gates and the model registry.")
console = Console()
err = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    from agentrft.cli import exit_with_user_error  # one line, markup-safe, secrets masked, exit 2
    from agentrft.config import ConfigError
    from agentrft.data import DatasetError
    from agentrft.gate.policy import PolicyError
    from agentrft.gate.promote import PromotionError
    from agentrft.graders.base import GraderSpecError
    from agentrft.store import StoreError

    try:
        yield
    except (ConfigError, DatasetError, PolicyError, PromotionError, GraderSpecError, StoreError, ValueError,
            FileNotFoundError) as e:
        exit_with_user_error(e)


def _gate_table(rep) -> Table:
    t = Table(title=escape(f"{rep.checkpoint['id']} — {'PROMOTED' if rep.promoted else 'REFUSED'}"))
    for c in ("gate", "result", "detail"):
        t.add_column(c)
    for g in rep.gates:
        res = "pass" if g.passed else ("waived" if g.waived else "FAIL")
        t.add_row(escape(g.gate), res, escape(str(g.detail)))
    return t


@app.command()
def promote(
    run: str = typer.Argument(..., help="run id or unique prefix"),
    policy: Path = typer.Option(..., "--policy", help="promotion policy (YAML)"),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best | latest | step-N | a checkpoint id"),
    config: Optional[Path] = typer.Option(None, "--config", help="config whose store to use"),
    store: Optional[str] = typer.Option(None, "--store"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate the promotion gates for a checkpoint; register it with its evidence if all pass, else refuse."""
    from agentrft.gate.policy import load_policy
    from agentrft.gate.promote import promote as do_promote

    with user_errors():
        pol = load_policy(policy)
        st = open_store(config, store)
        rep = do_promote(st, run, pol, checkpoint)
    if as_json:
        console.print_json(json.dumps({"promoted": rep.promoted, "entry_id": rep.entry_id,
                                       "gates": [g.as_dict() for g in rep.gates]}, default=str))
    else:
        console.print(_gate_table(rep))
        if rep.promoted:
            console.print(f"registered as entry {rep.entry_id}")
        else:
            console.print(f"[bold red]refused[/]: {', '.join(g.gate for g in rep.failed)} (recorded as entry "
                          f"{rep.entry_id})")
    raise typer.Exit(0 if rep.promoted else 1)


@app.command()
def registry(
    all_: bool = typer.Option(False, "--all", help="also refused / regressed entries"),
    config: Optional[Path] = typer.Option(None, "--config", help="with a config: also mark entries whose graders "
                                          "changed as needs_reeval"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="policy whose safety grader counts as a grader"),
    store: Optional[str] = typer.Option(None, "--store"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """List promoted models (with --config, first mark those whose graders changed)."""
    from agentrft.config import load_config
    from agentrft.gate.policy import load_policy
    from agentrft.gate.promote import mark_stale

    with user_errors():
        st = open_store(config, store, mode="existing" if config else "read")  # only --config marks (writes)
        if config:
            mark_stale(st, load_config(config), load_policy(policy) if policy else None)
        rows = st.registry() if all_ else st.registry(["promoted", "needs_reeval"])
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    t = Table(title="model registry")
    for c in ("id", "status", "checkpoint", "reward Δ [CI]", "graders", "created"):
        t.add_column(c)
    for e in rows:
        d = (e["evidence"].get("intervals") or {}).get("reward")
        lift = f"{d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else "-"
        graders = ", ".join(f"{k}@{v[:8]}" for k, v in sorted(e["grader_versions"].items()))
        t.add_row(str(e["id"]), e["status"], escape(str(e["checkpoint_id"])), escape(lift), escape(graders),
                  str(e["created_at"])[:19])
    console.print(t)


@app.command()
def regress(
    config: Path = typer.Option(..., "--config", help="run config with the current graders and validation set"),
    policy: Path = typer.Option(..., "--policy", help="promotion policy (YAML)"),
    entry: List[int] = typer.Option([], "--entry", help="registry entries (default: every needs_reeval one)"),
    samples: Optional[int] = typer.Option(None, help="samples per item"),
) -> None:
    """Re-run the evals of registered models against the current grader set and re-apply the gates."""
    from agentrft.config import load_config
    from agentrft.gate.policy import load_policy
    from agentrft.gate.promote import regress as do_regress
    from agentrft.store import RunStore

    with user_errors():
        cfg = load_config(config)
        res = do_regress(RunStore(cfg.store_url), cfg, load_policy(policy), entry_ids=list(entry) or None,
                         samples=samples, console=err)
    for r in res:
        failed = ", ".join(g["gate"] for g in r["failed"])
        console.print(f"entry {r['entry_id']}: {r['status']} (eval run {r['run_id']})" + (f" — failed: {failed}"
                                                                                           if failed else ""))
    if not res:
        console.print("nothing to re-evaluate")
    raise typer.Exit(1 if any(r["status"] != "promoted" for r in res) else 0)


def register(top: typer.Typer) -> None:
    """Mount these as top-level commands: ``agentrft promote | registry | regress``."""
    top.command("promote")(promote)
    top.command("registry")(registry)
    top.command("regress")(regress)


