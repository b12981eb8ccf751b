"""Throughput of the HTTP tool client (HttpToolBackend) against a local Agent RFT tool server.

The server (agentrft.tools.server.make_tool_server with one trivial tool, uvicorn, one process) runs as a
subprocess on 127.0.0.1 so client and server do not share a GIL. For each thread count N the client makes
calls from N threads for ``--seconds``; we report sustained calls/s and latency percentiles. A second server
mode (``--tool-ms``) makes every call take that long server-side, which shows how well concurrent calls overlap
tool wait: with N threads and a tool latency L, the ideal is N/L calls/s.

    python benchmarks/bench_tools_http.py [--threads 1 4 16] [--seconds 3] [--tool-ms 0 50]

Writes benchmarks/results/tools_http.json and prints one line per setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

SERVER = r"""
import sys, time, uvicorn
from agentrft.tools.registry import make_tool
from agentrft.tools.server import make_tool_server

def echo(text: str, ms: float = 0.0) -> str:
    '''Echo the text after ms milliseconds.'''
    if ms:
        time.sleep(ms / 1000)
    return text

app = make_tool_server([make_tool(echo)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(threads: int, seconds: float, tool_ms: float, url: str) -> dict:
    from agentrft.tools.http import HttpToolBackend
    from agentrft.tools.registry import ToolContext
    from agentrft.types import new_call_id, new_trace_id

    b = HttpToolBackend([{"name": "echo", "server_url": url, "headers": {}, "max_concurrency": 256}])
    item = {"id": "bench", "messages": [{"role": "user", "content": "x" * 200}]}
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        trace = new_trace_id()
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = b.call("echo", {"text": "hello", "ms": tool_ms}, ToolContext(trace, item, new_call_id()), 30)
            mine.append(time.perf_counter() - t0)
            if r.status != "ok":
                with lock:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    # warm-up (connection pool, server imports)
    for _ in range(5):
        b.call("echo", {"text": "w"}, ToolContext(new_trace_id(), item, new_call_id()), 30)
    t0 = time.monotonic()
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    b.close()
    lat.sort()
    n = len(lat)
    return {
        "threads": threads,
        "tool_ms": tool_ms,
        "calls": n,
        "errors": errors[0],
        "seconds": round(wall, 3),
        "calls_per_s": round(n / wall, 1),
        "ideal_calls_per_s": round(threads / (tool_ms / 1000), 1) if tool_ms else None,
        "p50_ms": round(1000 * lat[n // 2], 2),
        "p99_ms": round(1000 * lat[min(n - 1, int(n * 0.99))], 2),
        "mean_ms": round(1000 * statistics.fmean(lat), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--tool-ms", type=float, nargs="+", default=[0.0, 50.0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tools_http.json"))
    a = ap.parse_args()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "health", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("benchmark server did not start")
                time.sleep(0.1)
        results = []
        for ms in a.tool_ms:
            for n in a.threads:
                r = run(n, a.seconds, ms, url)
                results.append(r)
                print(f"tools_http threads={n} tool_ms={ms:g}: {r['calls_per_s']} calls/s"
                      + (f" (ideal {r['ideal_calls_per_s']})" if r["ideal_calls_per_s"] else "")
                      + f", p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, errors {r['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(20)
    out = {
        "benchmark": "tools_http",
        "server": "agentrft.tools.server (FastAPI + uvicorn, 1 process) on 127.0.0.1, subprocess",
        "client": "agentrft.tools.http.HttpToolBackend (httpx, shared pool), N threads",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
