"""The deployment chart: KPIs per arm over time for one deployment, with its steps and rollback marked — an SVG
written by hand (no plotting library), from the store. Drawn by the dashboard's deployment page and by
``benchmarks/deploy_figure.py`` (the figure in docs/deploy.md).

Panels, all against seconds since the deployment was created: the canary weight (from the deployment's events);
then per arm, over the arm's last ``window`` answers, the safety violation rate, the mean of an online grader (the
first grader KPI of the policy unless ``grader`` is given) and latency p95. Advances are dashed grey lines, a
rollback a red line labelled with its rule.
"""

from __future__ import annotations

import math
from datetime import datetime
from html import escape

COLORS = {"production": "#1f77b4", "candidate": "#d62728", "shadow": "#9467bd"}
W, PANEL_H, LEFT, RIGHT, TOP, GAP = 760, 120, 70, 130, 40, 36


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * 0.95
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def series(obs: list[dict], t0: float, window: int, grader: str | None) -> dict:
    """Per arm: [(t, violation rate, grader mean, latency p95)] over a sliding window of the arm's answers."""
    out: dict[str, list[tuple[float, float, float | None, float]]] = {}
    for arm in sorted({o["arm"] for o in obs}):
        xs = [o for o in obs if o["arm"] == arm and o["ok"]]
        pts = []
        for i in range(len(xs)):
            win = xs[max(0, i - window + 1): i + 1]
            viol = sum(o["safety_violation"] for o in win) / len(win)
            g = [o["scores"][grader] for o in win if grader and grader in o["scores"]]
            pts.append((_t(xs[i]["created_at"]) - t0, viol, sum(g) / len(g) if g else None,
                        _p95([o["latency_s"] for o in win])))
        out[arm] = pts
    return out


def draw(dep: dict, events: list[dict], obs: list[dict], *, window: int = 10, grader: str | None = None) -> str:
    t0 = _t(dep["created_at"])
    kpis = (dep.get("policy") or {}).get("kpis") or []
    grader = grader or next((k["name"] for k in kpis if k["name"] not in ("feedback", "tool_calls")), None)
    s = series(obs, t0, window, grader)
    t_end = max([_t(e["created_at"]) - t0 for e in events] + [p[0] for v in s.values() for p in v] + [1.0]) * 1.03
    lat_max = max([p[3] for v in s.values() for p in v] + [1e-3]) * 1.1
    panels = [("canary weight", 0.0, 1.0), ("safety violation rate", 0.0, 1.0),
              (f"{grader or 'grader'} mean", 0.0, 1.0), ("latency p95 (s)", 0.0, lat_max)]
    H = TOP + len(panels) * (PANEL_H + GAP) + 30
    pw = W - LEFT - RIGHT
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{LEFT}" y="20" font-size="14" font-weight="bold">deployment {escape(dep["name"])}: '
           f'KPIs per arm over time (window {window} answers)</text>']

    def x(t: float) -> float:
        return LEFT + pw * t / t_end

    for pi, (title, lo, hi) in enumerate(panels):
        y0 = TOP + pi * (PANEL_H + GAP)

        def y(v: float, y0: float = y0, lo: float = lo, hi: float = hi) -> float:
            return y0 + PANEL_H - PANEL_H * (min(max(v, lo), hi) - lo) / (hi - lo)

        out.append(f'<rect x="{LEFT}" y="{y0}" width="{pw}" height="{PANEL_H}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{LEFT}" y="{y0 - 5}" font-weight="bold">{escape(title)}</text>')
        for v in (lo, (lo + hi) / 2, hi):
            out.append(f'<text x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.2g}</text>')
        if pi == 0:
            pts, w = [], 0.0
            for e in events:
                te = _t(e["created_at"]) - t0
                if pts:
                    pts.append((x(te), y(w)))
                w = e["weight"] if e["mode"] == "canary" else (1.0 if e["kind"] == "advance" else 0.0)
                pts.append((x(te), y(w)))
            pts.append((x(t_end), y(w)))
            out.append('<polyline fill="none" stroke="#333" stroke-width="2" points="'
                       + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        else:
            col = {1: 1, 2: 2, 3: 3}[pi]
            for arm, pts in s.items():
                vals = [(p[0], p[col]) for p in pts if p[col] is not None]
                if not vals:
                    continue
                out.append(f'<polyline fill="none" stroke="{COLORS.get(arm, "#000")}" stroke-width="1.6" points="'
                           + " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in vals) + '"/>')
        for e in events:
            if e["kind"] not in ("advance", "rollback", "hold"):
                continue
            xe = x(_t(e["created_at"]) - t0)
            colr = "#d62728" if e["kind"] == "rollback" else "#888"
            dash = "" if e["kind"] == "rollback" else ' stroke-dasharray="4,3"'
            out.append(f'<line x1="{xe:.1f}" x2="{xe:.1f}" y1="{y0}" y2="{y0 + PANEL_H}" stroke="{colr}"'
                       f' stroke-width="{2 if e["kind"] == "rollback" else 1}"{dash}/>')
            if pi == 0:
                label = e["kind"] + (f" ({e['data'].get('rule') or 'by hand'})" if e["kind"] == "rollback" else "")
                out.append(f'<text x="{xe + 3:.1f}" y="{y0 + 12}" fill="{colr}">{escape(label)}</text>')
    yb = TOP + len(panels) * (PANEL_H + GAP) - GAP + 16
    for k in range(6):
        t = t_end * k / 5
        label = f"{t:.0f}" if t_end >= 20 else f"{t:.1f}"
        out.append(f'<text x="{x(t):.1f}" y="{yb}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{LEFT + pw / 2}" y="{yb + 14}" text-anchor="middle">seconds since the deployment was '
               'created</text>')
    for i, arm in enumerate(s):
        ly = TOP + 30 + 18 * i
        out.append(f'<line x1="{W - RIGHT + 12}" x2="{W - RIGHT + 34}" y1="{ly}" y2="{ly}" '
                   f'stroke="{COLORS.get(arm, "#000")}" stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 40}" y="{ly + 4}">{escape(arm)} ({len(s[arm])})</text>')
    out.append("</svg>")
    return "\n".join(out)


def draw_from_store(store, name: str, **kw) -> str:
    dep = store.get_deployment(name)
    if dep is None:
        raise ValueError(f"no deployment named {name!r} in {store.where}")
    return draw(dep, store.deployment_events(name), store.deployment_observations(name), **kw)
