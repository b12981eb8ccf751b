"""How much of a rollout step's wall time is tool wait that generation did not overlap.

The agent loop (agentrft.rollout.agent.AgentLoop) decodes every ready trajectory in one batch while the tool
calls of the others run on worker threads; it only sits idle when *no* trajectory is ready, inside
``concurrent.futures.wait``. This benchmark times exactly that idle wait (by wrapping the ``wait`` the loop
calls) and the sampler's ``generate``, for the lookup task's tool served

* in-process (PythonToolBackend), and
* over HTTP (HttpToolBackend → make_tool_server in a subprocess on 127.0.0.1),

with a server-side tool latency of 0 ms and ``--delay-ms`` ms. A warm-started tiny model (built and SFT'd on
first use, cached in ``--work``) makes the calls.

    python benchmarks/bench_tools_overlap.py [--tasks 32] [--delay-ms 0 200] [--work /tmp/agentrft-bench]

Writes benchmarks/results/tools_overlap.json and prints one line per setting.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the lookup task used by the spine's tests

import lookup_task as lt  # noqa: E402

from agentrft.tools.registry import ToolContext, make_tool  # noqa: E402


def make_slow_lookup(delay_ms: float):
    def lookup(key: str, ctx: ToolContext) -> str:
        """Look up the color of a key.

        Args:
            key: The key, like K3.
        """
        if delay_ms:
            time.sleep(delay_ms / 1000)
        return lt.lookup.__agentrft_tool__.fn(key, ctx)  # type: ignore[attr-defined]

    return make_tool(lookup)


def serve(port: int, delay_ms: float) -> None:
    import uvicorn

    from agentrft.tools.server import make_tool_server

    uvicorn.run(make_tool_server([make_slow_lookup(delay_ms)]), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def warm_model(work: Path) -> tuple[Path, Path]:
    from agentrft.models.tiny import build_tiny_model
    from agentrft.rl.sft import run_sft

    paths = lt.write_task(work / "data", seed=0, n_train=64, n_valid=8, n_demos=96)
    if not (work / "warm" / "config.json").exists():
        build_tiny_model(lt.corpus(paths), work / "tiny")
        run_sft(str(work / "tiny"), paths["demos"], work / "warm", epochs=6, batch_size=16, learning_rate=3e-3)
    return work / "warm", paths["train"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def measure(model_dir: Path, train: Path, n_tasks: int, backend: str, delay_ms: float, url: str | None) -> dict:
    import agentrft.rollout.agent as agent_mod
    from agentrft.data import load_dataset
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.policy.sampling import SamplingParams
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.agent import AgentLoop, RolloutLimits, RolloutTask
    from agentrft.rollout.render import ChatRenderer
    from agentrft.tools.http import HttpToolBackend
    from agentrft.tools.python_backend import PythonToolBackend
    from agentrft.tools.router import ToolRouter

    model, tok = load_model_and_tokenizer(str(model_dir))
    renderer = ChatRenderer(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else renderer.eos_id
    sampler = TransformersSampler(model, stop_ids=renderer.stop_ids, pad_id=pad)
    if backend == "http":
        be = HttpToolBackend([{"name": "lookup", "server_url": url, "headers": {}}])
    else:
        be = PythonToolBackend([make_slow_lookup(delay_ms)])
    router = ToolRouter([be], timeout_s=30, max_workers=16)
    loop = AgentLoop(sampler, renderer, router, limits=RolloutLimits(4, 4, 2048), max_batch=64)
    rows = list(load_dataset(train))[:n_tasks]
    tasks = [RolloutTask(row=r, seed=1000 + i, data_dir=str(train.parent)) for i, r in enumerate(rows)]

    timers = {"gen": 0.0, "idle": 0.0}
    real_wait, real_gen = cf.wait, sampler.generate

    def timed_wait(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_wait(*a, **k)
        finally:
            timers["idle"] += time.perf_counter() - t0

    def timed_gen(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_gen(*a, **k)
        finally:
            timers["gen"] += time.perf_counter() - t0

    agent_mod.cf.wait = timed_wait  # the loop calls cf.wait only when no trajectory is ready to generate
    sampler.generate = timed_gen  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        trajs = loop.run(tasks, SamplingParams(1.0, 1.0, 48))
        wall = time.perf_counter() - t0
    finally:
        agent_mod.cf.wait = real_wait
        router.close()
    calls = sum(t.num_tool_calls for t in trajs)
    tool_time = sum(t.tool_time_s for t in trajs)
    return {
        "backend": backend,
        "tool_delay_ms": delay_ms,
        "trajectories": len(trajs),
        "tool_calls": calls,
        "wall_s": round(wall, 3),
        "generate_s": round(timers["gen"], 3),
        "idle_tool_wait_s": round(timers["idle"], 3),
        "idle_fraction_of_wall": round(timers["idle"] / wall, 4),
        "tool_time_sum_s": round(tool_time, 3),
        "overlapped_fraction_of_tool_time": round(1 - timers["idle"] / tool_time, 4) if tool_time else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, nargs="+", default=[0.0, 200.0])
    ap.add_argument("--work", default="/tmp/agentrft-bench-overlap")
    ap.add_argument("--out", default=str(HERE / "results" / "tools_overlap.json"))
    ap.add_argument("--serve", nargs=2, metavar=("PORT", "DELAY_MS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(int(a.serve[0]), float(a.serve[1]))
        return
    import httpx

    model_dir, train = warm_model(Path(a.work))
    results = []
    for delay in a.delay_ms:
        for backend in ("inproc", "http"):
            proc, url = None, None
            if backend == "http":
                port = free_port()
                proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(delay)])
                url = f"http://127.0.0.1:{port}/"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        httpx.get(url + "health", timeout=1)
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise SystemExit("tool server did not start")
                        time.sleep(0.1)
            try:
                r = measure(model_dir, train, a.tasks, backend, delay, url)
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(20)
            results.append(r)
            print(f"tools_overlap backend={backend} delay={delay:g}ms: wall {r['wall_s']}s, generate {r['generate_s']}s, "
                  f"idle tool wait {r['idle_tool_wait_s']}s ({100 * r['idle_fraction_of_wall']:.1f}% of wall), "
                  f"{r['tool_calls']} calls, tool time {r['tool_time_sum_s']}s "
                  f"({100 * (r['overlapped_fraction_of_tool_time'] or 0):.0f}% overlapped)", flush=True)
    out = {"benchmark": "tools_overlap", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "tasks": a.tasks,
           "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
