"""Commands: ``agentrft check``, ``agentrft compare``, ``agentrft monitor`` and ``agentrft audit …``.

Mount them on the top-level app with :func:`register` (``register(app)``), or mount ``app`` as a group.
Exit codes: 0 ok / go, 1 a negative answer (no-go, alerts), 2 a user error (bad config, data, arguments).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, List, Optional

import typer
from rich.markup import escape
from rich.console import Console
from rich.table import Table

from agentrft.store.locate import open_store

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Readiness check, checkpoint comparison, monitors.")
audit_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Random audits: export trajectories for review and record verdicts.")
app.add_typer(audit_app, name="audit")
console = Console()
err = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """The errors a user causes become one clear line on stderr and exit code 2 (never a traceback)."""
    from agentrft.cli import exit_with_user_error  # one line, markup-safe, secrets masked, exit 2
    from agentrft.config import ConfigError
    from agentrft.data import DatasetError
    from agentrft.evals.audit import AuditError
    from agentrft.graders.base import GraderSpecError
    from agentrft.store import StoreError

    try:
        yield
    except (ConfigError, DatasetError, GraderSpecError, AuditError, StoreError, ValueError, OSError) as e:
        exit_with_user_error(e)  # OSError: an --out that is a file, …


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run_id(st: Any, run: str) -> str:
    info = st.get_run(run)
    if info is None:
        raise ValueError(f"no run {run!r} in {st.url}")
    return info["id"]


@app.command()
def check(
    config: Path = typer.Argument(..., help="run config (YAML)"),
    samples: int = typer.Option(4, help="samples per item (≥ 2)"),
    max_items: int = typer.Option(32, help="items sampled per split (0: all)"),
    model: Optional[str] = typer.Option(None, help="model to check (default: the config's)"),
    out: Optional[Path] = typer.Option(None, help="report directory (default: <output_dir>/check-<time>)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Should we use RFT here? Samples the base model and says go or no-go, with reasons and fixes."""
    _quiet()
    from datetime import datetime, timezone

    from agentrft.config import load_config
    from agentrft.evals.check import run_check

    with user_errors():
        cfg = load_config(config)
        out = out or cfg.output_path / f"check-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        pool = None
        if cfg.curriculum.enabled:  # the pool the curriculum would start from
            from agentrft.rl.curriculum import preview

            def pool(trajs: list) -> dict:
                return preview(cfg.curriculum, trajs)
        rep = run_check(cfg, samples=samples, max_items=max_items or None, model=model, out_dir=out,
                        progress=not no_progress, console=err, pool=pool)
    if as_json:
        console.print_json(json.dumps(rep, default=str))
    else:
        t = Table(title=f"readiness check — {rep['verdict'].upper()}")
        for c in ("split", "items", "reward", "floor", "ceiling", "zero-var", "grader err", "nondet"):
            t.add_column(c, justify="right")
        for name, s in rep["splits"].items():
            t.add_row(escape(str(name)), str(s["items"]), f"{s['reward_mean']:.3f}", f"{s['floor_share']:.0%}",
                      f"{s['ceiling_share']:.0%}", f"{s['zero_variance_share']:.0%}", f"{s['grader_error_rate']:.1%}",
                      f"{s.get('nondeterminism', 0):.1%}")
        console.print(t)
        c = rep.get("curriculum")
        if c:
            console.print(f"curriculum pool: {c['with_headroom']}/{c['items']} items with headroom (mean "
                          f"{c['headroom_mean']:.2f}), {c['all_passed']} always solved, {c['all_failed']} never "
                          f"solved (retired after {c['retire_after']} such groups)", highlight=False)
        for r in rep["reasons"]:
            console.print(f"[bold red]no-go[/] {r['code']}: {escape(str(r['message']))}\n   fix: {escape(str(r['fix']))}",
                          highlight=False)
        for w in rep["warnings"]:
            console.print(f"[yellow]warning[/] {w['code']}: {escape(str(w['message']))}", highlight=False)
        console.print(f"report: {out}/report.md" + (f" (run {rep['run_id']})" if rep.get("run_id") else ""))
    raise typer.Exit(0 if rep["verdict"] == "go" else 1)


@app.command()
def compare(
    config: Path = typer.Option(..., "--config", help="run config (tools, graders, validation set)"),
    models: List[str] = typer.Option(..., "--model", help="baseline first: 'baseline', RUN:best, RUN:step-N, a path"),
    data: List[Path] = typer.Option([], "--data", help="extra eval sets (adversarial, held-out)"),
    samples: Optional[int] = typer.Option(None, help="samples per item (default max(eval_samples, 2))"),
    out: Optional[Path] = typer.Option(None, help="report directory (default: <output_dir>/compare-<time>)"),
    no_progress: bool = typer.Option(False, "--no-progress"),
) -> None:
    """Evaluate the baseline and checkpoints (paired seeds) and report differences with bootstrap intervals."""
    _quiet()
    from datetime import datetime, timezone

    from agentrft.config import load_config
    from agentrft.evals.compare import compare_models

    with user_errors():
        cfg = load_config(config)
        out = out or cfg.output_path / f"compare-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
        rep = compare_models(cfg, list(models), extra_data=list(data), samples=samples, out_dir=out,
                             progress=not no_progress, console=err)
    for ds, entry in rep["datasets"].items():
        for label, comp in entry["comparisons"].items():
            t = Table(title=escape(f"{ds}: {label} vs {entry['baseline']}"))
            for c in ("metric", "baseline", "candidate", "Δ", "95% CI", "sig"):
                t.add_column(c, justify="right")
            for m, d in comp["metrics"].items():
                t.add_row(escape(str(m)), f"{d['a']:.3f}", f"{d['b']:.3f}", f"{d['diff']:+.3f}",
                          escape(f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"), "*" if d["significant"] else "")
            console.print(t)
            console.print(f"items improved {comp['improved']}, worsened {comp['worsened']}, unchanged "
                          f"{comp['unchanged']}")
    console.print(f"report: {out}/report.md (run {rep['run_id']})")


@app.command()
def monitor(
    run: str = typer.Argument(..., help="run id or unique prefix"),
    config: Optional[Path] = typer.Option(None, "--config", help="config whose store (and monitor thresholds) to use"),
    store: Optional[str] = typer.Option(None, "--store"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Reward-hacking and collapse alerts of a run (the monitors replayed over what the store recorded)."""
    from agentrft.config import load_config
    from agentrft.evals.monitors import replay_run

    with user_errors():
        st = open_store(config, store, mode="read")
        rid = _run_id(st, run)
        mcfg = load_config(config).monitors if config else (st.get_run(rid)["config"] or {}).get("monitors")
        alerts = [a.as_dict() for a in replay_run(st, rid, mcfg)]
    if as_json:
        console.print_json(json.dumps(alerts))
    else:
        t = Table(title=escape(f"monitor alerts — {rid}"))
        for c in ("step", "split", "signal", "value", "threshold", "message"):
            t.add_column(c)
        for a in alerts:
            t.add_row(str(a["step"]), escape(str(a["split"])), escape(str(a["signal"])), f"{a['value']:.3f}",
                      f"{a['threshold']:.3f}", escape(str(a["message"])))
        console.print(t if alerts else "no alerts")
    raise typer.Exit(1 if alerts else 0)


@audit_app.command("export")
def audit_export(
    run: str = typer.Argument(..., help="run id or unique prefix"),
    n: int = typer.Option(10, "-n", min=1, help="trajectories per checkpoint"),
    step: List[int] = typer.Option([], "--step", help="steps to draw from (default: every checkpoint)"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("audits"), help="output directory"),
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
) -> None:
    """Draw N trajectories per checkpoint at random: JSONL to fill in and a readable HTML page."""
    from agentrft.evals.audit import export_audit

    with user_errors():
        st = open_store(config, store, mode="read")
        paths = export_audit(st, _run_id(st, run), out, n=n, steps=list(step) or None, seed=seed)
    for s, p in paths.items():
        typer.echo(f"step {s}: {p['html']}  {p['jsonl']}")


@audit_app.command("record")
def audit_record(
    trace_id: str = typer.Argument(...),
    verdict: str = typer.Argument(..., help="pass | fail | hack | unsafe | unsure"),
    reviewer: str = typer.Option("", help="who reviewed"),
    note: str = typer.Option(""),
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
) -> None:
    """Record a human verdict on one trajectory."""
    from agentrft.evals.audit import record_verdict

    with user_errors():
        aid = record_verdict(open_store(config, store), trace_id, verdict, reviewer=reviewer, note=note)
    console.print(f"recorded audit {aid}: {trace_id} {verdict}")


@audit_app.command("import")
def audit_import(
    file: Path = typer.Argument(..., help="an exported audit JSONL with verdicts filled in"),
    reviewer: str = typer.Option("", help="reviewer for lines that name none"),
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
) -> None:
    """Record the verdicts filled into an exported JSONL (bad lines are reported as file:line)."""
    from agentrft.evals.audit import import_verdicts

    with user_errors():
        res = import_verdicts(open_store(config, store), file, reviewer=reviewer)
    console.print(f"recorded {res['recorded']}, skipped {res['skipped']} without a verdict")
    for e in res["errors"]:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
    raise typer.Exit(2 if res["errors"] else 0)


@audit_app.command("summary")
def audit_summary_cmd(
    run: str = typer.Argument(...),
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
) -> None:
    """Verdict counts per step (latest verdict per trajectory)."""
    from agentrft.evals.audit import audit_summary

    with user_errors():
        st = open_store(config, store, mode="read")
        s = audit_summary(st, _run_id(st, run))
    for step, counts in s.items():
        console.print(f"step {step}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if not s:
        console.print("no verdicts recorded")


@audit_app.command("verify")
def audit_verify(
    config: Optional[Path] = typer.Option(None, "--config"),
    store: Optional[str] = typer.Option(None, "--store"),
    expect_head: Optional[str] = typer.Option(None, "--expect-head", help="SEQ:HASH printed by an earlier verify, "
                                              "kept elsewhere: catches a rewrite of the whole chain after it"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Check the audit ledger's hash chain: exit 1 naming each edited, inserted or deleted record."""
    with user_errors():
        st = open_store(config, store, mode="read")
        res = st.verify_ledger(expect_head=expect_head)
    if as_json:
        console.print_json(data=res)
    elif res["ok"]:
        typer.echo(f"ledger ok: {res['records']} records, head {res['head']}")  # (unwrapped: the head is copied)
    else:
        for p in res["problems"]:
            typer.echo(f"ledger broken at record {p['seq']}: {p['problem']}")
    raise typer.Exit(0 if res["ok"] else 1)


def register(top: typer.Typer) -> None:
    """Mount these as top-level commands: ``agentrft check | compare | monitor | audit …``."""
    top.command("check")(check)
    top.command("compare")(compare)
    top.command("monitor")(monitor)
    top.add_typer(audit_app, name="audit")
