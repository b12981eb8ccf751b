"""Random audits: N trajectories per checkpoint exported for human review, and the verdicts recorded back.

``export_audit(store, run_id, n=10)`` draws ``n`` trajectories (seeded, without replacement) from each checkpoint's
validation eval (or from the steps given) and writes, per step, ``audit-step-NNNNNN.jsonl`` (one trajectory a
line: trace id, item, grades, the whole conversation with tool calls, and empty ``verdict``/``reviewer``/``note``
fields to fill in) and ``audit-step-NNNNNN.html`` (the same, readable in a browser). A reviewer records verdicts
one by one (``agentrft audit record TRACE VERDICT``) or fills the JSONL and imports it (``agentrft audit import``).
Verdicts live in the store's ``audits`` table; promotion's audit gate reads the latest verdict per trajectory.
"""

from __future__ import annotations

import html
import json
import random
from pathlib import Path
from typing import Any

VERDICTS = ("pass", "fail", "hack", "unsafe", "unsure")


class AuditError(ValueError):
    """A verdict that cannot be recorded (unknown trace, unknown verdict, bad line); the message says where."""


def sample_for_audit(store: Any, run_id: str, *, n: int = 10, steps: list[int] | None = None, seed: int = 0,
                     split: str = "valid") -> dict[int, list[dict]]:
    """``{step: [trajectory dicts]}``: ``n`` per step, drawn with ``random.Random(seed * 1_000_003 + step)``.
    Default steps: every checkpoint of the run (else every step recorded under ``split``)."""
    if steps is None:
        steps = sorted({c["step"] for c in store.checkpoints(run_id)}) or sorted(
            {m["step"] for m in store.step_metrics(run_id, split=split)})
    out = {}
    for s in steps:
        trajs = store.trajectories(run_id, step=s, split=split)
        rng = random.Random(seed * 1_000_003 + s)
        pick = sorted(rng.sample(range(len(trajs)), min(n, len(trajs))))
        out[s] = [trajs[i] for i in pick]
    return out


def _record(t: dict) -> dict:
    return {
        "trace_id": t["trace_id"], "run_id": t["run_id"], "step": t["step"], "split": t["split"],
        "checkpoint_id": t.get("checkpoint_id"), "row_index": t["row_index"], "sample_index": t["sample_index"],
        "outcome": t["outcome"], "reward": t["reward"],
        "grades": [{"grader": g["grader_name"], "score": g["score"], "passed": g["passed"], "errors": g["errors"],
                    "holdout": bool((g.get("metadata") or {}).get("holdout")), "version": g["version"]}
                   for g in t["grades"]],
        "tool_calls": [{"name": c["name"], "arguments": c["arguments"], "status": c["status"],
                        "output": c["output"][:2000]} for c in t["tool_calls"]],
        "messages": t["messages"],
        "verdict": None, "reviewer": "", "note": "",
    }


def export_audit(store: Any, run_id: str, out_dir: str | Path, *, n: int = 10, steps: list[int] | None = None,
                 seed: int = 0) -> dict[int, dict[str, Path]]:
    """Write the JSONL and HTML audit files per step; returns ``{step: {"jsonl": path, "html": path}}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for step, trajs in sample_for_audit(store, run_id, n=n, steps=steps, seed=seed).items():
        recs = [_record(t) for t in trajs]
        j = out / f"audit-step-{step:06d}.jsonl"
        j.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in recs))
        h = out / f"audit-step-{step:06d}.html"
        h.write_text(_html(run_id, step, recs))
        paths[step] = {"jsonl": j, "html": h}
    return paths


def _html(run_id: str, step: int, recs: list[dict]) -> str:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>audit {e(run_id)} step {step}</title>",
             "<style>body{font:14px sans-serif;max-width:60em;margin:auto}.t{border:1px solid #ccc;margin:1em 0;"
             "padding:.5em}.m{margin:.3em 0;padding:.3em;white-space:pre-wrap}.user{background:#eef}"
             ".assistant{background:#efe}.tool{background:#fee;font-family:monospace}.system{color:#666}"
             "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:2px 6px}</style>",
             f"<h1>Audit: run {e(run_id)}, step {step}</h1>",
             f"<p>{len(recs)} trajectories drawn at random. Record a verdict ({', '.join(VERDICTS)}) with "
             "<code>agentrft audit record TRACE_ID VERDICT --note '…'</code>, or fill the <code>verdict</code> field "
             "in the JSONL next to this page and run <code>agentrft audit import FILE</code>.</p>"]
    for r in recs:
        parts.append(f"<div class='t'><h3>{e(r['trace_id'])}</h3><p>row {r['row_index']}, sample "
                     f"{r['sample_index']}, outcome {e(str(r['outcome']))}, reward {r['reward']}</p>")
        parts.append("<table><tr><th>grader</th><th>score</th><th>passed</th><th>holdout</th><th>errors</th></tr>")
        for g in r["grades"]:
            errs = ", ".join(k for k, v in (g["errors"] or {}).items() if v)
            parts.append(f"<tr><td>{e(g['grader'])}</td><td>{g['score']:.3f}</td><td>{g['passed']}</td>"
                         f"<td>{'yes' if g['holdout'] else ''}</td><td>{e(errs)}</td></tr>")
        parts.append("</table>")
        for m in r["messages"]:
            role = str(m.get("role", ""))
            body = e(str(m.get("content") or ""))
            for c in m.get("tool_calls") or []:
                f = c.get("function", {})
                body += f"\n→ {e(str(f.get('name')))}({e(str(f.get('arguments')))})"
            parts.append(f"<div class='m {e(role)}'><b>{e(role)}</b>: {body}</div>")
        parts.append("</div>")
    return "\n".join(parts)


def record_verdict(store: Any, trace_id: str, verdict: str, *, reviewer: str = "", note: str = "") -> int:
    """Record one verdict on a stored trajectory; returns the audit row id."""
    if verdict not in VERDICTS:
        raise AuditError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    if store.trajectory(trace_id) is None:
        raise AuditError(f"no trajectory {trace_id!r} in {store.url}")
    return store.add_audit(trace_id, verdict, reviewer=reviewer, note=note)


def import_verdicts(store: Any, path: str | Path, *, reviewer: str = "") -> dict[str, Any]:
    """Record the filled-in verdicts of an exported JSONL. Lines without a verdict are skipped (counted); a bad
    line is reported as ``file:line: problem`` and the others are still recorded."""
    path = Path(path)
    recorded, skipped, errors = 0, 0, []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise AuditError("not a JSON object")
            if not rec.get("verdict"):
                skipped += 1
                continue
            if not rec.get("trace_id"):
                raise AuditError("trace_id: missing")
            record_verdict(store, str(rec["trace_id"]), str(rec["verdict"]),
                           reviewer=str(rec.get("reviewer") or reviewer), note=str(rec.get("note") or ""))
            recorded += 1
        except (json.JSONDecodeError, AuditError) as e:
            errors.append(f"{path}:{i}: {e}")
    return {"recorded": recorded, "skipped": skipped, "errors": errors}


def audit_summary(store: Any, run_id: str) -> dict[int, dict[str, int]]:
    """Per step: counts of the latest verdict per audited trajectory."""
    latest: dict[str, dict] = {}
    for a in store.audits_for_run(run_id):
        latest[a["trace_id"]] = a
    out: dict[int, dict[str, int]] = {}
    for a in latest.values():
        d = out.setdefault(a["step"], {})
        d[a["verdict"]] = d.get(a["verdict"], 0) + 1
    return dict(sorted(out.items()))
