"""``agentrft bench``: the side-by-side benchmark (agentrft vs HF generate, TRL and the machine's limit).

The harness lives in the repository's ``benchmarks/`` package (it imports TRL, which is a bench-only extra), so
this command runs from a source checkout: it looks for ``benchmarks/harness.py`` in the current directory and
then beside the installed ``agentrft`` sources.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, help="Benchmark against HF generate, TRL and the machine's fp32 limit.")


def _find_repo() -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "benchmarks" / "harness.py").exists():
            return root
    return None


@app.callback(invoke_without_command=True)
def bench(
    quick: bool = typer.Option(False, "--quick", help="tiny sizes: every code path, no meaningful figures"),
    sections: Optional[list[str]] = typer.Option(None, "--section", help="run only these (repeatable)"),
    threads: str = typer.Option("auto", help="torch threads: a number, or auto (1 when the machine is busy)"),
    work: Optional[str] = typer.Option(None, help="work dir for models and task files"),
    out_md: Optional[str] = typer.Option(None, help="markdown report (default docs/benchmarks.md)"),
    out_json: Optional[str] = typer.Option(None, help="JSON figures (default docs/benchmarks.json)"),
    grpo_steps: Optional[int] = typer.Option(None, help="GRPO steps per framework"),
) -> None:
    root = _find_repo()
    if root is None:
        typer.echo("error: benchmarks/harness.py not found; run `agentrft bench` from an agentrft source checkout",
                   err=True)
        raise typer.Exit(2)
    sys.path.insert(0, str(root))
    from benchmarks.harness import main

    argv = ["--threads", threads]
    if quick:
        argv.append("--quick")
    if sections:
        argv += ["--sections", *sections]
    for flag, val in (("--work", work), ("--out-md", out_md), ("--out-json", out_json),
                      ("--grpo-steps", grpo_steps)):
        if val is not None:
            argv += [flag, str(val)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejected a value (e.g. an unknown section): its message is already printed
        code = int(e.code or 2)
    raise typer.Exit(code)
