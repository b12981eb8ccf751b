"""The production flywheel's costs (issue 17), as ratios measured in one run on this machine:

    python benchmarks/bench_flywheel.py [--conversations 2000] [--trials 10]

1. ``traces export``: a SQLite store filled with N served agentic conversations (two requests each, a shadow
   answer on every 4th, feedback on every 2nd, an email in every 3rd prompt) is exported to RFT rows and demos
   (select, redact, de-duplicate, write, load back); reported as conversations per second and as a multiple of
   the time the store read alone takes (``RunStore.traces`` over the same rows), which is the part export cannot
   avoid.
2. approval latency: how long after a decision is written a waiting hold (``ApprovalHold.wait``) returns, as a
   multiple of ``approvals.poll_s`` (expected: between 0 and 1 poll interval plus a store read).

Writes ``benchmarks/results/flywheel.json``. The machine may be shared: the 1-minute load average is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fill(st, n: int) -> None:
    tools = [{"type": "function", "function": {"name": "get_order", "parameters": {"type": "object"}}}]
    rows = []
    for i in range(n):
        q = f"Where is order O-{i}?" + (f" Mail me at user{i}@example.com" if i % 3 == 0 else "")
        first = [{"role": "system", "content": "You are the support agent."}, {"role": "user", "content": q}]
        call = {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_order", "arguments": f'{{"id": "O-{i}"}}'}}]}
        second = first + [call, {"role": "tool", "tool_call_id": "call_0", "content": f"O-{i} shipped"}]
        base = {"trace_id": f"c{i}", "endpoint": "chat.completions", "model": "support-agent", "tools": tools,
                "deployment": "support-agent", "arm": "production", "status": 200}
        rows += [{**base, "request_id": f"c{i}-1", "messages": first, "choices": [{"index": 0, "message": call}]},
                 {**base, "request_id": f"c{i}-2", "messages": second,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "It shipped."}}]}]
        if i % 4 == 0:
            rows.append({**base, "arm": "shadow", "request_id": f"c{i}-s", "messages": second,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "No idea."}}]})
        if len(rows) >= 500:
            st.record_traces(rows)
            rows = []
    if rows:
        st.record_traces(rows)
    for i in range(0, n, 2):
        st.add_feedback(f"c{i}", score=1.0, label="shipped")


def bench_export(n: int, tmp: Path) -> dict:
    from agentrft.store import RunStore
    from agentrft.traces.export import ExportSpec, export

    st = RunStore(f"sqlite:///{tmp / 'prod.db'}")
    t0 = time.perf_counter()
    fill(st, n)
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    read = 0
    after = None
    while True:
        page = st.traces(after_id=after, limit=1000)
        read += len(page)
        if len(page) < 1000:
            break
        after = page[-1]["id"]
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = export(st, ExportSpec(rows=str(tmp / "rows.jsonl"), demos=str(tmp / "demos.jsonl"),
                                deployment="support-agent"))
    export_s = time.perf_counter() - t0
    st.close()
    return {"conversations": n, "trace_rows": read, "fill_s": round(fill_s, 2), "read_s": round(read_s, 3),
            "export_s": round(export_s, 3), "conversations_per_s": round(n / export_s, 1),
            "export_over_read": round(export_s / read_s, 2), "rows": rep["rows"], "demos": rep["demos"],
            "redactions": rep["redactions"]}


def bench_latency(trials: int, tmp: Path) -> dict:
    from agentrft.serve.approvals import ApprovalHold
    from agentrft.serve.config import ServeConfig
    from agentrft.store import RunStore

    st = RunStore(f"sqlite:///{tmp / 'appr.db'}")
    out = {}
    rng = random.Random(0)
    for poll in (0.05, 0.25):
        cfg = ServeConfig(model="x", tools=[{"name": "lookup", "requires_approval": True}],
                          approvals={"wait_s": 60, "poll_s": poll})
        hold = ApprovalHold(st, cfg)
        lat = []
        for _ in range(trials):
            aid = st.enqueue_approval("bench", "lookup", {"key": "K3"})
            decided: dict = {}

            def decide(delay: float, aid: int = aid, decided: dict = decided) -> None:
                time.sleep(delay)
                st.decide_approval(aid, "approved", decided_by="bench")
                decided["at"] = time.perf_counter()

            th = threading.Thread(target=decide, args=(rng.uniform(0.2, 0.6),))
            th.start()
            asyncio.run(hold.wait([aid], None))
            back = time.perf_counter()
            th.join()
            lat.append(back - decided["at"])
        out[f"poll_{poll}"] = {"median_s": round(statistics.median(lat), 4), "max_s": round(max(lat), 4),
                               "median_over_poll": round(statistics.median(lat) / poll, 2),
                               "max_over_poll": round(max(lat) / poll, 2)}
    st.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--conversations", type=int, default=2000)
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        res = {"export": bench_export(args.conversations, Path(d)), "approval_latency": bench_latency(args.trials,
                                                                                                   Path(d))}
    res["load_avg_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    res["cpus"] = os.cpu_count()
    out = ROOT / "benchmarks" / "results" / "flywheel.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
