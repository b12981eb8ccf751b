"""Sync vs async off-policy training with a slow tool: steps per hour and the reward per step.

The sampler is `agentrft serve` in its own process (started once, shared by every setting; each run hot-loads its
own adapters under its run id), the learner is this process, and the lookup tool sleeps ``--tool-ms`` (200 ms) per
call. Settings: synchronous (``rollout.max_staleness: 0``), and async with k = 1 and k = 2 (truncated importance
sampling, cap 2). Each setting trains the same warm-started tiny model (SFT'd to call the tool, cached in
``--work``) for ``--steps`` steps with the same seed.

    python benchmarks/bench_async.py [--steps 6] [--tool-ms 200] [--work /tmp/agentrft-bench-async]

Reports, per setting, the wall time of ``train()`` (model load included, the same in every setting), steps per
hour, the mean time the learner waited for a batch, and the train reward of each step; and the speed-up of each
async setting over sync as a ratio measured in this one run. Writes benchmarks/results/async.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the lookup task used by the spine's tests
sys.path.insert(0, str(HERE.parent))

import lookup_task as lt  # noqa: E402

from agentrft.tools.registry import ToolContext, tool  # noqa: E402

TOOL_MS = float(os.environ.get("AGENTRFT_BENCH_TOOL_MS", "200"))


@tool
def lookup(key: str, ctx: ToolContext) -> str:
    """Look up the color of a key.

    Args:
        key: The key, like K3.
    """
    time.sleep(TOOL_MS / 1000)
    return lt.lookup.__agentrft_tool__.fn(key, ctx)  # type: ignore[attr-defined]


def warm_model(work: Path) -> tuple[Path, dict[str, Path]]:
    from agentrft.models.tiny import build_tiny_model
    from agentrft.rl.sft import run_sft

    paths = lt.write_task(work / "data", seed=0, n_train=64, n_valid=8, n_demos=96)
    if not (work / "warm" / "config.json").exists():
        build_tiny_model(lt.corpus(paths), work / "tiny")
        run_sft(str(work / "tiny"), paths["demos"], work / "warm", epochs=6, batch_size=16, learning_rate=3e-3)
    return work / "warm", paths


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "serve", "--model", str(model), "--model-name",
                             "warm", "--port", str(port), "--slots", "32", "--no-traces"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"agentrft serve exited: see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit("agentrft serve did not come up")
        time.sleep(0.3)


def run_setting(model: Path, paths: dict[str, Path], url: str, out: Path, k: int, steps: int) -> dict:
    from agentrft.config import parse_config
    from agentrft.rl.trainer import train
    from agentrft.store import RunStore

    cfg = parse_config({
        "name": f"async-k{k}", "model": str(model), "training_file": str(paths["train"]),
        "tools": ["benchmarks.bench_async:lookup"], "grader": lt.GRADER_SHAPED, "output_dir": str(out),
        "sampler": {"type": "remote", "base_url": url, "model": "warm"},
        "rollout": {"max_staleness": k, "tis_cap": 2.0 if k else None},
        "hyperparameters": {"max_steps": steps, "batch_size": 4, "group_size": 4, "learning_rate": 5e-4,
                            "max_new_tokens": 40, "max_turns": 4, "max_episode_steps": 4, "seed": 1,
                            "micro_batch_size": 16, "max_signal_free_steps": 0, "save_interval_s": 100000},
    })
    t0 = time.perf_counter()
    run_id = train(cfg, progress=False)
    wall = time.perf_counter() - t0
    m = RunStore(cfg.store_url).step_metrics(run_id, split="train")
    return {
        "max_staleness": k, "steps": steps, "wall_s": round(wall, 2), "steps_per_hour": round(steps * 3600 / wall, 1),
        "reward_per_step": [round(x["reward_mean"], 4) for x in m],
        "reward_mean": round(sum(x["reward_mean"] for x in m) / len(m), 4),
        "learner_wait_s_mean": round(sum(x["time/sampling"] for x in m) / len(m), 3),
        "training_s_mean": round(sum(x["time/training"] for x in m) / len(m), 3),
        "policy_lag_max": max(x.get("policy_lag_max", 0) for x in m),
        "tool_calls_per_traj": round(sum(x.get("tool_calls_per_traj", 0.0) for x in m) / len(m), 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--tool-ms", type=float, default=200.0)
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/agentrft-bench-async"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "async.json")
    a = ap.parse_args(argv)
    global TOOL_MS
    TOOL_MS = a.tool_ms
    os.environ["AGENTRFT_BENCH_TOOL_MS"] = str(a.tool_ms)
    a.work.mkdir(parents=True, exist_ok=True)
    model, paths = warm_model(a.work)
    port = free_port()
    proc = start_server(model, port, a.work / "serve.log")
    results = []
    try:
        for k in a.ks:
            r = run_setting(model, paths, f"http://127.0.0.1:{port}/v1", a.work / f"runs-k{k}", k, a.steps)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    base = next((r for r in results if r["max_staleness"] == 0), None)
    speedup = {f"k{r['max_staleness']}": round(base["wall_s"] / r["wall_s"], 3)
               for r in results if base and r is not base}
    doc = {"what": "sync vs async off-policy GRPO, sampler = agentrft serve subprocess, lookup tool sleeping "
                   f"{a.tool_ms:.0f} ms per call; speed-up = sync wall / async wall, same run",
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg": os.getloadavg()},
           "settings": results, "speedup_vs_sync": speedup}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print("speed-up vs sync:", speedup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
