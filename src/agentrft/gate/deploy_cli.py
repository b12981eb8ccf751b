"""``agentrft deploy create | status | advance | rollback | list``.

These work on the store directly (``--store URL`` or ``--config``), not through a server's API: a deployment's
state lives in the store, and every server over that store follows it (its router re-reads the deployments on each
controller pass, every 0.5 s, and a candidate answer is checked against the store before it is returned), so the
command works whether or not a server is running, from wherever the store is reachable — the same operations a
remote client does over ``/v1/deployments``. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from agentrft.store.locate import open_store

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Deployments: shadow, canary, full, rollback (state in the store; docs/deploy.md).")
console = Console()

_FT = re.compile(r"^ft:")


@contextmanager
def _errors() -> Iterator[None]:
    from agentrft.config import ConfigError
    from agentrft.gate.rollout import DeployError
    from agentrft.gate.rollout_policy import RolloutPolicyError
    from agentrft.store import StoreError

    try:
        yield
    except (DeployError, RolloutPolicyError, StoreError, ConfigError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)  # (unwrapped: the message names a file and field)
        raise typer.Exit(2) from None


def _check_ref(st, ref: str, what: str) -> None:
    """A model reference the CLI can check: a checkpoint id of the store must be kept and on disk. Other names (the
    server's base model id, an adapter name, an ``ft:`` id) are resolved by the server; it refuses them there."""
    c = st.get_checkpoint(ref)
    if c is not None and (not c["kept"] or not c["path"] or not Path(c["path"]).is_dir()):
        raise ValueError(f"--{what}: checkpoint {ref!r} is not kept on disk (path {c['path']!r})")
    if c is None and not _FT.match(ref):
        typer.echo(f"note: --{what} {ref!r} is not a checkpoint id in this store; the server must know it as a model "
                   "id (its base model or an adapter)", err=True)


def _show(dep: dict) -> None:  # one line, never wrapped (scripts grep it)
    line = f"{dep['name']}: {dep['mode']}"
    if dep["mode"] == "canary":
        line += f" at {dep['weight']:.0%}"
    line += f" ({dep['status']}); production {dep['production']}"
    if dep["candidate"]:
        line += f", candidate {dep['candidate']}"
    if dep.get("previous"):
        line += f", previous {dep['previous']}"
    typer.echo(line)


StoreOpt = typer.Option(None, "--store", help="run store URL (default runs/agentrft.db)")
ConfigOpt = typer.Option(None, "--config", help="a run config (its store)")


@app.command("create")
def create(
    name: str = typer.Argument(..., help="the model id clients will call, e.g. support-agent"),
    production: str = typer.Option(..., "--production", help="what answers today: a checkpoint id, ft: id or the "
                                   "server's base model id"),
    candidate: Optional[str] = typer.Option(None, "--candidate", help="the checkpoint to roll out"),
    mode: str = typer.Option("shadow", "--mode", help="shadow | canary | full"),
    policy: Optional[Path] = typer.Option(None, "--policy", help="rollout policy YAML (examples/rollout.yaml)"),
    weight: Optional[float] = typer.Option(None, "--weight", help="first canary weight (default: the schedule's)"),
    shadow_fraction: Optional[float] = typer.Option(None, "--shadow-fraction", help="share of requests shadowed"),
    actor: str = typer.Option("", "--actor", help="who (recorded in the ledger)"),
    config: Optional[Path] = ConfigOpt,
    store: Optional[str] = StoreOpt,
) -> None:
    """Create a deployment (its rollout policy is copied into the store with it)."""
    from agentrft.gate import rollout as ro
    from agentrft.gate.rollout_policy import load_rollout_policy

    with _errors():
        pol = load_rollout_policy(policy) if policy is not None else None
        st = open_store(config, store)
        _check_ref(st, production, "production")
        if candidate:
            _check_ref(st, candidate, "candidate")
        dep = ro.create_deployment(st, name, production=production, candidate=candidate, mode=mode, policy=pol,
                                   weight=weight, shadow_fraction=shadow_fraction, actor=actor or "cli")
    _show(dep)


@app.command("list")
def list_(config: Optional[Path] = ConfigOpt, store: Optional[str] = StoreOpt) -> None:
    """Every deployment: mode, weight, status, production and candidate."""
    with _errors():
        deps = open_store(config, store, mode="read").list_deployments()
    if not deps:
        console.print("no deployments")
        return
    for d in deps:
        _show(d)


@app.command("status")
def status(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json"),
           config: Optional[Path] = ConfigOpt, store: Optional[str] = StoreOpt) -> None:
    """The deployment, its KPIs per arm in the current step (or the last one judged), and its history."""
    from agentrft.gate import rollout as ro

    with _errors():
        s = ro.status(open_store(config, store, mode="read"), name)
    s["state"].pop("drift_window", None)
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=str))
        return
    _show(s)
    for arm, k in s["kpis"].items():
        graders = ", ".join(f"{g} {v}" for g, v in k["grader_means"].items())
        console.print(f"  {arm}: {k['requests']} requests, error rate {k['error_rate']}, latency p50/p95 "
                      f"{k['latency_p50_s']}/{k['latency_p95_s']} s, tool calls {k['tool_calls_per_request']}, "
                      f"safety violations {k['safety_violations']}, feedback {k['feedback_mean']} "
                      f"(n={k['feedback_n']}); {graders}", highlight=False)
    last = s["state"].get("last_look") or s["state"].get("last_decision")
    if last:
        console.print(f"  last look: {last.get('action')} {last.get('reason', '')}", highlight=False, markup=False)
    for e in s["events"]:
        reason = (e["data"] or {}).get("reason", "")
        console.print(f"  {e['created_at'][:19]} {e['kind']:<11} {e['mode']:<6} weight {e['weight']:.2f} "
                      f"{e['actor']} {reason}", highlight=False, markup=False)  # actor, reason: user text


@app.command("advance")
def advance(name: str = typer.Argument(...), reason: str = typer.Option("", "--reason"),
            actor: str = typer.Option("", "--actor"), config: Optional[Path] = ConfigOpt,
            store: Optional[str] = StoreOpt) -> None:
    """One step forward by hand (shadow → first weight → … → full); releases a held deployment."""
    from agentrft.gate import rollout as ro

    with _errors():
        dep = ro.advance(open_store(config, store), name, actor=actor or "cli", reason=reason or "by hand (cli)")
    _show(dep)


@app.command("rollback")
def rollback(name: str = typer.Argument(...), reason: str = typer.Option("", "--reason"),
             actor: str = typer.Option("", "--actor"), config: Optional[Path] = ConfigOpt,
             store: Optional[str] = StoreOpt) -> None:
    """Back to production alone (shadow/canary), or to the previous production (full)."""
    from agentrft.gate import rollout as ro

    with _errors():
        dep = ro.rollback(open_store(config, store), name, actor=actor or "cli", reason=reason or "by hand (cli)")
    _show(dep)
