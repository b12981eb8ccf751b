"""``agentrft grade``: validate and run graders from the command line (OpenAI's graders/validate and graders/run).

* ``agentrft grade validate G.json`` — builds the grader without running it. Prints
  ``{"valid": true, "grader": {...}, "type", "name", "version"}`` (exit 0) or ``{"valid": false, "error": "<the
  field and what is wrong>"}`` (exit 1).
* ``agentrft grade run --grader G.json --item I.json --sample S.json`` — grades one sample and prints JSON shaped
  like OpenAI's graders/run: ``reward``, ``sub_rewards``, and ``metadata`` with ``name, type, execution_time,
  scores, token_usage, errors`` (every OpenAI flag, true or false), plus ``agentrft`` (version, passed,
  turn_scores, the grader's own metadata). ``--sample`` is a sample object (``output_text``, ``output_tools``,
  ``output_json``, ``choices``, ``trajectory``) or plain text (a file that is not a JSON object, or a JSON string; a plain-text file's final newline
  is dropped).
  A grader that does not build is answered in the same shape with ``formula_parse_error`` (a bad
  ``calculate_output``) or ``other_error`` set, and exit 1.
* ``agentrft grade batch --grader G.json --input rows.jsonl [--output out.jsonl] [--workers N]`` — grades every
  ``{"item": {...}, "sample": {...} | "text"}`` line with a progress bar; each output line is the run JSON plus
  ``line``. A bad line (not JSON, no ``sample``) is written as ``{"line", "error": "rows.jsonl:LINE: …"}``, counted,
  and the batch goes on. The summary (stderr) gives rows, mean reward, pass rate, error counts by flag.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from agentrft.graders.answers import normalize_sample, run_output, spec_error_output  # shared with serve/jobs.py
from agentrft.graders.base import GraderSpecError, build_grader

app = typer.Typer(help="Validate and run graders (OpenAI grader JSON plus agentrft trajectory graders).",
                  no_args_is_help=True, add_completion=False)


def _die(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _load_json(path: Path, what: str) -> Any:
    from agentrft.bounded import BoundsError, loads_json, read_text

    try:
        text = read_text(path)
    except OSError as e:
        _die(f"{what} {path}: {e.strerror}")
    except BoundsError as e:  # too large, not UTF-8
        _die(f"{what} {path}: {e}")
    try:
        return loads_json(text)
    except json.JSONDecodeError as e:
        _die(f"{path}:{e.lineno}:{e.colno}: {what} is not valid JSON: {e.msg}")
    except BoundsError as e:  # nested too deeply
        _die(f"{what} {path}: {e}")


def _load_sample(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        _die(f"sample {path}: {e.strerror}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, (dict, str)):
        # a plain-text answer; the file's final newline is the file's, not the answer's
        value = raw[:-2] if raw.endswith("\r\n") else raw[:-1] if raw.endswith("\n") else raw
    try:
        return normalize_sample(value)
    except ValueError as e:
        _die(f"{path}: {e}")
    raise AssertionError


def _print(obj: Any) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


@app.command()
def validate(grader: Path = typer.Argument(..., help="grader JSON file")) -> None:
    """Check a grader without running it (like OpenAI's graders/validate)."""
    spec = _load_json(grader, "grader")
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        _print({"valid": False, "error": f"{grader}: {e}"})
        raise typer.Exit(1)
    _print({"valid": True, "type": g.type, "name": g.name, "version": g.version, "grader": spec})
    g.close()


@app.command()
def run(
    grader: Path = typer.Option(..., "--grader", "-g", help="grader JSON file"),
    sample: Path = typer.Option(..., "--sample", "-s", help="sample JSON object, or a plain-text answer"),
    item: Optional[Path] = typer.Option(None, "--item", "-i", help="dataset row JSON (default {})"),
    trace_id: Optional[str] = typer.Option(None, "--trace-id", help="sent to endpoint graders"),
) -> None:
    """Grade one sample; print OpenAI graders/run-shaped JSON."""
    spec = _load_json(grader, "grader")
    item_obj = _load_json(item, "item") if item is not None else {}
    if not isinstance(item_obj, dict):
        _die(f"{item}: item must be a JSON object, got {type(item_obj).__name__}")
    sample_obj = _load_sample(sample)
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        _print(spec_error_output(spec, e))
        raise typer.Exit(1)
    try:
        grade = g.grade(sample_obj, item_obj, trace_id=trace_id)
    finally:
        g.close()
    _print(run_output(g, grade))


@app.command()
def batch(
    grader: Path = typer.Option(..., "--grader", "-g", help="grader JSON file"),
    input: Path = typer.Option(..., "--input", "-i", help="JSONL of {item, sample} rows"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSONL of results (default: stdout)"),
    workers: int = typer.Option(0, "--workers", "-w", help="parallel graders (default: 1, or 8 for I/O-bound)"),
) -> None:
    """Grade every row of a JSONL file with a progress bar; a summary goes to stderr."""
    import concurrent.futures as cf

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from agentrft.cli import output_file
    from agentrft.config import ConfigError

    if output:
        try:
            output_file(output, "--output")  # before grading: a bad path must not cost the whole batch
        except ConfigError as e:
            _die(str(e))
    spec = _load_json(grader, "grader")
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        _die(f"{grader}: {e}", 1)
    try:
        lines = input.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        _die(f"{input}: {e.strerror}")
    n_workers = workers or (8 if getattr(g, "io_bound", False) else 1)

    def one(lineno: int, line: str) -> dict[str, Any]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            return {"line": lineno, "error": f"{input}:{lineno}: not valid JSON: {e.msg}"}
        if not isinstance(row, dict) or "sample" not in row:
            return {"line": lineno, "error": f"{input}:{lineno}: expected an object with 'sample' (and 'item')"}
        it = row.get("item", {})
        if not isinstance(it, dict):
            return {"line": lineno, "error": f"{input}:{lineno}: item must be an object"}
        try:
            s = normalize_sample(row["sample"])
        except ValueError as e:
            return {"line": lineno, "error": f"{input}:{lineno}: {e}"}
        out = run_output(g, g.grade(s, it, trace_id=row.get("trace_id")))
        out["line"] = lineno
        return out

    rows = [(i + 1, ln) for i, ln in enumerate(lines) if ln.strip()]
    results: dict[int, dict[str, Any]] = {}
    t0 = time.perf_counter()
    console = Console(stderr=True)
    with Progress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("grade", total=len(rows))
        if n_workers <= 1:
            for lineno, ln in rows:
                results[lineno] = one(lineno, ln)
                progress.advance(task)
        else:
            ex = cf.ThreadPoolExecutor(n_workers)
            try:
                futs = {ex.submit(one, lineno, ln): lineno for lineno, ln in rows}
                for f in cf.as_completed(futs):
                    results[futs[f]] = f.result()
                    progress.advance(task)
            except KeyboardInterrupt:  # Ctrl-C: stop the graders now rather than wait for every running one
                from agentrft.graders.sandbox import interrupt_all

                ex.shutdown(wait=False, cancel_futures=True)
                interrupt_all()
                raise
            ex.shutdown(wait=True)
    g.close()
    elapsed = time.perf_counter() - t0
    out_f = output.open("w", encoding="utf-8") if output else sys.stdout
    try:
        for lineno, _ in rows:
            out_f.write(json.dumps(results[lineno], ensure_ascii=False, default=str) + "\n")
    finally:
        if output:
            out_f.close()
    graded = [r for r in results.values() if "reward" in r]
    bad = [r for r in results.values() if "error" in r]
    flags: dict[str, int] = {}
    for r in graded:
        for f, v in r["metadata"]["errors"].items():
            if v:
                flags[f] = flags.get(f, 0) + 1
    passed = [r["metadata"]["agentrft"]["passed"] for r in graded if r["metadata"]["agentrft"]["passed"] is not None]
    summary = {
        "rows": len(rows), "graded": len(graded), "bad_rows": len(bad),
        "reward_mean": (sum(r["reward"] for r in graded) / len(graded)) if graded else None,
        "pass_rate": (sum(passed) / len(passed)) if passed else None,
        "errors": flags, "seconds": round(elapsed, 3),
        "grades_per_s": round(len(graded) / elapsed, 1) if elapsed > 0 else None,
    }
    for r in bad[:10]:
        console.print(f"[red]{escape(str(r['error']))}[/red]", highlight=False)
    console.print_json(json.dumps(summary))
    if bad:
        raise typer.Exit(1)


def main() -> None:  # ``python -m agentrft.graders.cli``
    app()


if __name__ == "__main__":
    main()
