"""A run report from the store: PNG curves, a baseline-vs-best table with paired bootstrap intervals, the same
task before and after (tool calls and grades visible), an HTML page and a machine-readable ``summary.json``.

Everything is read back from the run store — the report shows what was recorded, not what the trainer kept in
memory.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from agentrft.evals.compare import paired
from agentrft.store import RunStore

COMPARED = [
    ("reward", "validation reward", True),
    ("passed", "pass rate", True),
    ("num_tool_calls", "tool calls / trajectory", False),
    ("latency_s", "latency / trajectory (s)", False),
    ("completion_tokens", "completion tokens", False),
]


def best_valid_step(store: RunStore, run_id: str) -> int:
    valid = [m for m in store.step_metrics(run_id, split="valid") if m["step"] > 0]
    if not valid:
        return 0
    return max(valid, key=lambda m: (m["reward_mean"], -m["step"]))["step"]


def build_report(store: RunStore, run_id: str, out_dir: str | Path, *, phases: dict[str, float] | None = None,
                 title: str = "agentrft run report") -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    valid = store.step_metrics(run_id, split="valid")
    train = store.step_metrics(run_id, split="train")
    best = best_valid_step(store, run_id)
    base_t = store.trajectories(run_id, step=0, split="valid")
    best_t = store.trajectories(run_id, step=best, split="valid")

    # curves
    pngs = {}
    for key, label, fname in (
        ("reward_mean", "reward", "reward.png"),
        ("tool_calls_per_traj", "tool calls per trajectory", "tool_calls.png"),
        ("latency_s_mean", "latency per trajectory (s)", "latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
        if train:
            ax.plot([m["step"] for m in train], [m.get(key, 0) for m in train], label="train", alpha=0.6)
        if valid:
            ax.plot([m["step"] for m in valid], [m.get(key, 0) for m in valid], "o-", label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)
        pngs[key] = fname

    # baseline vs best, paired per item
    table = {}
    for key, label, higher_better in COMPARED:
        d = paired(base_t, best_t, key)
        table[key] = {"label": label, "higher_is_better": higher_better,
                      **{k: v for k, v in d.items() if k not in ("significant", "metric")}}

    # the same task before and after
    pair = _before_after(base_t, best_t)
    summary = {
        "run_id": run_id,
        "best_step": best,
        "baseline": _side(valid, 0),
        "best": _side(valid, best),
        "comparison": table,
        "phases_s": phases or {},
        "report": str(out / "report.html"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.html").write_text(_html(title, summary, pngs, pair))
    return summary


def _side(valid: list[dict[str, Any]], step: int) -> dict[str, Any]:
    m = next((v for v in valid if v["step"] == step), {})
    return {
        "step": step,
        "validation_reward": m.get("reward_mean"),
        "pass_rate": m.get("pass_rate"),
        "tool_calls_per_traj": m.get("tool_calls_per_traj"),
        "latency_s": m.get("latency_s_mean"),
        "completion_tokens": m.get("completion_tokens_mean"),
    }


def _before_after(base: list[dict[str, Any]], best: list[dict[str, Any]]) -> tuple[dict, dict] | None:
    """The task whose reward improved most (ties: most tool calls saved), first sample of each side."""
    b0 = {t["row_index"]: t for t in base if t.get("sample_index", 0) == 0}
    b1 = {t["row_index"]: t for t in best if t.get("sample_index", 0) == 0}
    common = sorted(set(b0) & set(b1))
    if not common:
        return None
    row = max(common, key=lambda r: ((b1[r].get("reward") or 0) - (b0[r].get("reward") or 0),
                                     (b0[r].get("num_tool_calls") or 0) - (b1[r].get("num_tool_calls") or 0), -r))
    return b0[row], b1[row]


def _traj_html(t: dict[str, Any], label: str) -> str:
    parts = [f"<h3>{html.escape(label)} — reward {t.get('reward') or 0:.3f}, {t.get('num_tool_calls')} tool calls, "
             f"{t.get('latency_s') or 0:.2f}s, outcome {html.escape(str(t.get('outcome')))}</h3><div class='conv'>"]
    for m in t.get("messages") or []:
        role = m.get("role")
        body = html.escape(m.get("content") or "")
        calls = "".join(
            f"<div class='call'>→ {html.escape(c['function']['name'])}({html.escape(c['function']['arguments'])})</div>"
            for c in m.get("tool_calls") or []
        )
        parts.append(f"<div class='msg {role}'><b>{role}</b> <pre>{body}</pre>{calls}</div>")
    parts.append("</div><table><tr><th>grader</th><th>version</th><th>score</th><th>sub-scores</th><th>errors</th></tr>")
    for g in t.get("grades") or []:
        subs = ", ".join(f"{k}={v:.2f}" for k, v in (g.get("sub_rewards") or {}).items())
        errs = ", ".join(k for k, v in (g.get("errors") or {}).items() if v) or "-"
        parts.append(f"<tr><td>{html.escape(g['grader_name'])}</td><td><code>{g['version']}</code></td>"
                     f"<td>{g['score']:.3f}</td><td>{html.escape(subs)}</td><td>{html.escape(errs)}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def _html(title: str, s: dict[str, Any], pngs: dict[str, str], pair: tuple[dict, dict] | None) -> str:
    rows = []
    for key, d in s["comparison"].items():
        rows.append(
            f"<tr><td>{html.escape(d['label'])}</td><td>{d['a']:.3f}</td><td>{d['b']:.3f}</td>"
            f"<td>{d['diff']:+.3f}</td><td>[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]</td><td>{d['n_items']}</td></tr>"
        )
    phases = "".join(f"<li>{html.escape(k)}: {v:.0f}s</li>" for k, v in (s.get("phases_s") or {}).items())
    imgs = "".join(f"<img src='{p}' alt='{k}'>" for k, p in pngs.items())
    ba = ""
    if pair:
        ba = "<h2>The same task, before and after</h2><div class='pair'><div>" + _traj_html(pair[0], "baseline") + \
             "</div><div>" + _traj_html(pair[1], f"best checkpoint (step {s['best_step']})") + "</div></div>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{margin:4px;border:1px solid #eee}} .pair{{display:flex;gap:1em}} .pair>div{{flex:1;min-width:0}}
.msg{{border-left:3px solid #ccc;padding:2px 8px;margin:4px 0}} .assistant{{border-color:#36c}} .tool{{border-color:#c63}}
pre{{white-space:pre-wrap;margin:2px 0}} .call{{color:#36c;font-family:monospace}}</style></head><body>
<h1>{html.escape(title)}</h1><p>run <code>{html.escape(s['run_id'])}</code>; best checkpoint at step {s['best_step']}
(by validation reward).</p>
<h2>Baseline vs best (paired over validation items, 95% bootstrap interval)</h2>
<table><tr><th>metric</th><th>baseline</th><th>best</th><th>Δ</th><th>95% CI</th><th>items</th></tr>{''.join(rows)}</table>
<h2>Curves</h2>{imgs}<h2>Wall time</h2><ul>{phases}</ul>{ba}</body></html>"""
