"""``agentrft traces export``: select served conversations from the store and write RFT rows and/or warm-start
demonstrations (see agentrft.traces.export and docs/flywheel.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

app = typer.Typer(no_args_is_help=True, help="Production traces: export them back into training data.")


@app.command("export")
def export_cmd(
    rows: Optional[Path] = typer.Option(None, "--rows", help="write OpenAI RFT JSONL rows here"),
    demos: Optional[Path] = typer.Option(None, "--demos", help="write demonstration conversations (SFT) here"),
    store: Optional[str] = typer.Option(None, "--store", help="store URL (default: --config's, else "
                                        "runs/agentrft.db)"),
    config: Optional[Path] = typer.Option(None, "--config", help="a run or serve config whose store to read"),
    deployment: Optional[str] = typer.Option(None, "--deployment", help="only requests to this deployment"),
    model: Optional[str] = typer.Option(None, "--model", help="only requests to this model name"),
    arm: Optional[str] = typer.Option(None, "--arm", help="production | candidate: conversations that arm answered"),
    since: Optional[str] = typer.Option(None, "--since", help="ISO time or age (30m, 24h, 7d)"),
    until: Optional[str] = typer.Option(None, "--until", help="ISO time or age (exclusive)"),
    status: str = typer.Option("any", "--status", help="ok (every request answered) | error | any"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="newest feedback score at least this"),
    max_score: Optional[float] = typer.Option(None, "--max-score", help="newest feedback score at most this"),
    label: list[str] = typer.Option([], "--label", help="newest feedback label is one of these (repeatable)"),
    feedback: str = typer.Option("any", "--feedback", help="with | without | any feedback"),
    disagreement: bool = typer.Option(False, "--disagreement", help="only where a shadow answer differed from the "
                                      "served one"),
    reference_from: list[str] = typer.Option([], "--reference-from", help="KEY=SOURCE reference field (SOURCE: "
                                             "label, score, comment, answer, metadata.NAME; repeatable; default "
                                             "reference=label)"),
    require_reference: bool = typer.Option(False, "--require-reference", help="skip conversations missing a "
                                           "--reference-from value"),
    dedupe_against: list[Path] = typer.Option([], "--dedupe-against", help="skip prompts already in this training "
                                              "file (repeatable)"),
    redact: Optional[str] = typer.Option(None, "--redact", help="module:function(text) -> text, run on every text "
                                         "after the built-in email/phone/card redaction"),
    no_default_redaction: bool = typer.Option(False, "--no-default-redaction", help="skip the built-in redaction"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="at most this many conversations"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
) -> None:
    """Export served conversations as RFT rows (--rows) and/or demonstrations (--demos)."""
    from agentrft.cli import err, user_errors
    from agentrft.approvals.cli import _open
    from agentrft.traces.export import ExportSpec, export, parse_mapping, parse_time
    from agentrft.traces.pii import Redactor, load_hook

    with user_errors():
        try:
            spec = ExportSpec(
                rows=str(rows) if rows else None, demos=str(demos) if demos else None, deployment=deployment,
                model=model, arm=arm, since=parse_time(since) if since else None,
                until=parse_time(until) if until else None, status=status, min_score=min_score,
                max_score=max_score, labels=list(label), feedback=feedback, disagreement=disagreement,
                reference_from=parse_mapping(reference_from) if reference_from else {"reference": "label"},
                require_reference=require_reference, dedupe_against=[str(p) for p in dedupe_against], limit=limit)
            spec.check()
            hook = load_hook(redact) if redact else None
        except ValueError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        redactor = Redactor(hook, default=not no_default_redaction, hook_name=redact or "")
        st = _open(config, store, write=False)
        try:
            report = export(st, spec, redactor)
        except ValueError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
        finally:
            st.close()
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"{report['conversations']} conversations, {report['selected']} selected, "
               f"{report['duplicates']} duplicates skipped, {report['redactions']} redactions")
    for k, path in report["files"].items():
        typer.echo(f"  {report[k]} {k} → {path}")
    for reason, n in sorted(report["skipped"].items(), key=lambda kv: -kv[1]):
        typer.echo(f"  skipped {n}: {reason}")
