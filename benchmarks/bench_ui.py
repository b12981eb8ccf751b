"""Dashboard page-load times on a store with 100k trajectories (SQLite).

    python benchmarks/bench_ui.py [--trajectories 100000] [--db PATH] [--repeat 5]

Fills a SQLite store with one synthetic run (agentrft.ui.synthetic: train steps of 1,000 trajectories with 0–3
tool calls and two grades each, validation evals with checkpoints, an alert), unless ``--db`` names one that
exists, then requests every dashboard page through the ASGI app in this process (FastAPI's TestClient: routing,
queries, template rendering — not the network or the browser's rendering) and reports, per page, the median and
the slowest of ``--repeat`` loads after one warm-up. Writes ``benchmarks/results/ui.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build(db: Path, n: int) -> str:
    from agentrft.store import RunStore
    from agentrft.ui.synthetic import fill_run

    st = RunStore.for_path(db)
    per_step = 1000
    t0 = time.perf_counter()
    run = fill_run(st, steps=max(1, n // per_step), rows_per_step=per_step // 8, group=8, valid_rows=50,
                   eval_every=10, name="bench-100k")
    for k in range(200):
        st.enqueue_approval(f"tr-approval-{k}", "refund", {"amount": k})
    print(f"filled {st.count_trajectories(run)} trajectories in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    st.close()
    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trajectories", type=int, default=100_000)
    ap.add_argument("--db", type=Path, default=None, help="reuse (or create) this SQLite file")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ui.json")
    a = ap.parse_args()

    from fastapi.testclient import TestClient

    from agentrft.store import RunStore
    from agentrft.ui import make_ui_app

    db = a.db or Path(tempfile.mkdtemp(prefix="bench-ui-")) / "agentrft.db"
    if not db.exists():
        build(db, a.trajectories)
    st = RunStore.for_path(db)
    run = st.list_runs()[0]["id"]
    total = st.count_trajectories(run)
    last_step = st.get_run(run)["latest_step"]
    trace = st.trajectories(run, step=last_step // 2, split="train", limit=1)[0]["trace_id"]
    # a cursor halfway down the listing: the page a user reaches after ~1,000 "next page" clicks
    mid = st.trajectories(run, step=last_step // 2, split="train", limit=1)[0]
    after = f"{run}|{mid['step']}|{mid['trace_id']}"
    c = TestClient(make_ui_app(st))
    pages = {
        "runs list": "/",
        "run (curves, checkpoints, timings)": f"/runs/{run}",
        "curves JSON (polled)": f"/api/runs/{run}/metrics",
        "trajectories, first page": "/trajectories",
        "trajectories, run + step": f"/trajectories?run={run}&step={last_step // 2}",
        "trajectories, page 1,000 (keyset)": f"/trajectories?run={run}&after={after}",
        "trajectories, reward 0.9–1.0": f"/trajectories?run={run}&reward_min=0.9&reward_max=1",
        "trajectories, tool = answer_check": f"/trajectories?run={run}&tool=answer_check",
        "trajectories, grader error": f"/trajectories?run={run}&grader_error=any",
        "trajectories, valid + outcome + tool": f"/trajectories?run={run}&split=valid&outcome=completed&tool=search",
        "one trajectory (deep link)": f"/t/{trace}",
        "one item across checkpoints": f"/runs/{run}/item/3",
        "compare first vs last eval": f"/runs/{run}/compare",
        "registry": "/registry",
        "approvals (200 pending)": "/approvals",
        "audit queue (5 per checkpoint)": f"/audit?run={run}",
        "unknown trace id (404 page)": "/t/nope",
    }
    rows = []
    for name, url in pages.items():
        r = c.get(url)
        assert r.status_code == (404 if "404" in name else 200), (name, r.status_code, r.text[:300])
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            c.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append({"page": name, "url": url, "median_ms": statistics.median(times), "max_ms": max(times),
                     "bytes": len(r.content)})
        print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | {len(r.content) // 1024} |", flush=True)
    st.close()
    res = {"trajectories": total, "db_bytes": os.path.getsize(db), "repeat": a.repeat, "pages": rows,
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "load_average": os.getloadavg()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(f"{total} trajectories, store {os.path.getsize(db) / 1e6:.0f} MB; wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
