"""`agentrft serve` against a plain HF-`generate` server loop on the same model, in one run (ratios).

    python benchmarks/bench_serve.py [--size 10M] [--max-tokens 32] [--requests 64] [--concurrency 1 8 32]

Both servers answer the same ``POST /v1/completions`` (token-id prompts, sampling at T=1, ``max_tokens`` new tokens)
over HTTP on loopback, driven by the same client threads:

* **agentrft**: ``agentrft.serve`` (FastAPI + uvicorn) with its continuous-batching engine (``--slots`` 32): every
  request in flight decodes in the same engine step;
* **hf-generate**: a FastAPI server whose handler hands the request to one worker thread that calls
  ``model.generate`` for one request at a time (the obvious way to put an HF model behind an API).

Reported per concurrency: output tokens/s (completion tokens ÷ wall time), p50/p95 request latency, and the
agentrft/HF ratios; then the process's resident memory with 1, 4 and 16 LoRA adapters loaded (``/proc``'s RSS
after a request to each). Writes ``benchmarks/results/serve.json``. Models are built locally (benchmarks/workload).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from benchmarks import workload as W  # noqa: E402


def hf_generate_app(model, tok):
    """The baseline: one request at a time through ``model.generate`` (sampling, KV cache)."""
    app = FastAPI()
    jobs: queue.Queue = queue.Queue()

    def worker() -> None:
        while True:
            ids, max_tokens, seed, fut, loop = jobs.get()
            torch.manual_seed(seed)
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                                     max_new_tokens=max_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                     pad_token_id=tok.pad_token_id)
            new = out[0, len(ids):].tolist()
            loop.call_soon_threadsafe(fut.set_result, new)

    threading.Thread(target=worker, daemon=True).start()

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        jobs.put((body["prompt"], body["max_tokens"], body.get("seed", 0), fut, loop))
        new = await fut
        return JSONResponse({"choices": [{"index": 0, "token_ids": new, "finish_reason": "length"}],
                             "usage": {"completion_tokens": len(new), "prompt_tokens": len(body["prompt"])}})

    return app


def drive(url: str, model: str, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    """``len(prompts)`` requests from ``concurrency`` client threads; tokens/s and latency percentiles."""
    lat: list[float] = []
    tokens = [0]
    lock = threading.Lock()
    it = iter(enumerate(prompts))

    def client() -> None:
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    nxt = next(it, None)
                if nxt is None:
                    return
                i, p = nxt
                t0 = time.perf_counter()
                r = c.post(url + "/v1/completions", json={"model": model, "prompt": p, "max_tokens": max_tokens,
                                                          "temperature": 1.0, "seed": i})
                r.raise_for_status()
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    tokens[0] += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        for f in [ex.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(prompts), "completion_tokens": tokens[0], "wall_s": wall,
            "tokens_per_s": tokens[0] / wall, "p50_s": statistics.median(lat),
            "p95_s": lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="10M", choices=sorted(W.MODEL_SIZES))
    ap.add_argument("--model", help="an existing model directory instead of building one")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level (c=1 runs a quarter)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.serve.app import create_app
    from agentrft.serve.config import ServeConfig
    from agentrft.serve.server import BackgroundServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    if args.model:
        model_dir = Path(args.model)
    else:
        paths = W.write_task(tmp / "task", n_train=64, n_valid=8, n_demos=64)
        model_dir = W.build_model(paths, tmp / "model", args.size)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)
    vocab = len(tok)
    n_params = None

    def prompts(n: int) -> list[list[int]]:
        return [[rng.randrange(5, vocab) for _ in range(args.prompt_len)] for _ in range(n)]

    results: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "size": args.size if not args.model else str(model_dir),
                     "max_tokens": args.max_tokens, "prompt_len": args.prompt_len, "slots": args.slots,
                     "levels": {}}
    cfg = ServeConfig(model=str(model_dir), model_name="m", slots=args.slots, record_traces=False,
                      max_tokens_cap=args.max_tokens)
    app = create_app(cfg)
    base_model = app.state.serve.manager.base.model
    n_params = sum(p.numel() for p in base_model.parameters())
    results["params"] = n_params
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf = hf_generate_app(hf_model, tok)
    with BackgroundServer(app) as srv, BackgroundServer(hf) as base:
        drive(srv.base_url, "m", prompts(4), 4, 4)  # warm-up both
        drive(base.base_url, "m", prompts(2), 1, 4)
        for c in args.concurrency:
            n = max(c, args.requests // 4 if c == 1 else args.requests)
            ps = prompts(n)
            a = drive(srv.base_url, "m", ps, c, args.max_tokens)
            b = drive(base.base_url, "m", ps, c, args.max_tokens)
            results["levels"][str(c)] = {"agentrft": a, "hf_generate": b,
                                         "tokens_per_s_ratio": a["tokens_per_s"] / b["tokens_per_s"],
                                         "p50_ratio": a["p50_s"] / b["p50_s"], "p95_ratio": a["p95_s"] / b["p95_s"]}
            print(f"c={c:>3}  agentrft {a['tokens_per_s']:8.1f} tok/s p50 {a['p50_s']:.3f}s p95 {a['p95_s']:.3f}s | "
                  f"hf-generate {b['tokens_per_s']:8.1f} tok/s p50 {b['p50_s']:.3f}s p95 {b['p95_s']:.3f}s | "
                  f"tok/s ×{a['tokens_per_s'] / b['tokens_per_s']:.2f}", flush=True)
        # memory with adapters loaded (each used once, so it is really in memory with its own engine)
        if args.adapters:
            from peft import LoraConfig, get_peft_model

            lora_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            peft = get_peft_model(lora_model, LoraConfig(r=16, lora_alpha=32, init_lora_weights=False,
                                                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"]))
            adir = tmp / "adapter"
            peft.save_pretrained(adir)
            del peft, lora_model
            app.state.serve.manager.cfg = cfg.model_copy(update={"max_loras": max(args.adapters)})
            mem = {"none": rss_mb()}
            loaded = 0
            with httpx.Client(timeout=600) as cl:
                for k in sorted(args.adapters):
                    while loaded < k:
                        name = f"a{loaded}"
                        cl.post(srv.base_url + "/v1/load_lora_adapter",
                                json={"lora_name": name, "lora_path": str(adir)}).raise_for_status()
                        cl.post(srv.base_url + "/v1/completions", json={"model": name, "prompt": prompts(1)[0],
                                                                        "max_tokens": 2}).raise_for_status()
                        loaded += 1
                    mem[str(k)] = rss_mb()
            results["rss_mb_with_adapters"] = mem
            print("RSS MB with adapters loaded:", {k: round(v, 1) for k, v in mem.items()}, flush=True)
    app.state.serve.close()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"params {n_params:,}; wrote {args.out}")


if __name__ == "__main__":
    main()
