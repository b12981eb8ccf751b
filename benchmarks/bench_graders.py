"""Grader throughput: grades per second for deterministic graders (goal ≥ 50k/s) and the sandboxed python
grader (goal ≥ 300/s) on this machine.

    python benchmarks/bench_graders.py [--n 20000] [--python-n 2000] [--workers N]

Prints one markdown table row per grader and writes ``benchmarks/results/graders.json``. Deterministic graders
run single-threaded in this process (the number is per core); the python grader runs through the shared
sandbox pool fed by as many threads as it has workers (each grade = one JSON round trip to a warm worker).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import time
from pathlib import Path

from agentrft.graders import build_grader
from agentrft.graders.base import sample_from_text, sample_from_trajectory
from agentrft.graders.sandbox import SandboxPool
from agentrft.types import ToolCall, Trajectory, Turn


def make_traj(k: int) -> Trajectory:
    calls = [ToolCall(call_id=f"c{k}_{j}", name=("search" if j % 2 else "lookup"), arguments=json.dumps({"q": f"x{j}"}),
                      turn_index=j, output=f"result {j}", latency_s=0.1 * j) for j in range(3)]
    turns = [Turn(index=j, start=0, end=0, text=f"turn {j}", tool_calls=[calls[j]]) for j in range(3)]
    turns.append(Turn(index=3, start=0, end=0, text="ANSWER: 42"))
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER: 42"}]
    return Trajectory(trace_id=f"trace_{k}", row_index=k, messages=msgs, turns=turns)


DETERMINISTIC = {
    "string_check": {"type": "string_check", "name": "sc", "input": "{{sample.output_text}}",
                     "reference": "{{item.answer}}", "operation": "ilike"},
    "text_similarity.fuzzy_match": {"type": "text_similarity", "name": "fz", "input": "{{sample.output_text}}",
                                    "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"},
    "text_similarity.rouge_l": {"type": "text_similarity", "name": "rl", "input": "{{sample.output_text}}",
                                "reference": "{{item.answer}}", "evaluation_metric": "rouge_l"},
    "multi(string_check+fuzzy)": {
        "type": "multi", "name": "m", "calculate_output": "0.7 * a + 0.3 * b",
        "graders": {"a": {"type": "string_check", "name": "a", "input": "{{sample.output_text}}",
                          "reference": "{{item.answer}}", "operation": "eq"},
                    "b": {"type": "text_similarity", "name": "b", "input": "{{sample.output_text}}",
                          "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}}},
    "tool_efficiency": {"type": "tool_efficiency", "name": "eff", "target_calls": "{{item.min_tool_calls}}",
                        "budget": "{{item.max_tool_calls}}", "repeated_bigram_penalty": 0.2},
    "safety": {"type": "safety", "name": "safe", "pii_patterns": ["email", "phone", "credit_card", "ssn", "ipv4"],
               "scan": ["output_text", "tool_arguments"], "forbidden_tools": ["delete"],
               "forbidden_arguments": [{"tool": "*", "argument": "q", "pattern": "drop table"}]},
    "process": {"type": "process", "name": "proc", "rules": [{"when": "tool_error", "score": -1},
                                                             {"when": "repeated_call", "score": -0.5}]},
    "response_format": {"type": "response_format", "name": "rf",
                        "schema": {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}}},
}


def bench_deterministic(n: int) -> dict[str, float]:
    samples = []
    for k in range(200):
        s = sample_from_trajectory(make_traj(k))
        if k % 3 == 0:
            s["output_text"] = "answer: 42"
        samples.append(s)
    item = {"answer": "ANSWER: 42", "min_tool_calls": 1, "max_tool_calls": 5}
    rf_samples = [sample_from_text(json.dumps({"a": k})) for k in range(200)]
    out = {}
    for name, spec in DETERMINISTIC.items():
        g = build_grader(spec)
        ss = rf_samples if name == "response_format" else samples
        for s in ss[:50]:
            g.grade(s, item)  # warm caches
        t0 = time.perf_counter()
        for i in range(n):
            g.grade(ss[i % 200], item)
        dt = time.perf_counter() - t0
        out[name] = n / dt
    return out


def bench_python(n: int, workers: int) -> dict[str, float]:
    src = ("def grade(sample, item):\n"
           "    out = sample['output_text'].strip().lower()\n"
           "    return 1.0 if out == item['answer'].lower() else 0.0\n")
    pool = SandboxPool(workers)
    try:
        t0 = time.perf_counter()
        pool.warm()
        start_s = time.perf_counter() - t0
        g = build_grader({"type": "python", "name": "py", "source": src}).use_pool(pool)
        item = {"answer": "ANSWER: 42"}
        samples = [sample_from_trajectory(make_traj(k)) for k in range(50)]
        g.grade(samples[0], item)
        t0 = time.perf_counter()
        for i in range(n // 4):
            g.grade(samples[i % 50], item)
        seq = (n // 4) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(workers) as ex:
            res = list(ex.map(lambda i: g.grade(samples[i % 50], item).score, range(n)))
        par = n / (time.perf_counter() - t0)
        assert all(r == 1.0 for r in res)
        return {"python (1 thread)": seq, f"python ({workers} threads, {workers} workers)": par,
                "_pool_start_s": start_s, "_isolation": pool.last_isolation}
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--python-n", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    det = bench_deterministic(a.n)
    py = bench_python(a.python_n, a.workers)
    print("| grader | grades/s | goal |")
    print("|---|---:|---:|")
    for k, v in det.items():
        print(f"| {k} | {v:,.0f} | 50,000 |")
    for k, v in py.items():
        if not k.startswith("_"):
            print(f"| {k} | {v:,.0f} | 300 |")
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},  # shared machines: a load over cpus slows every row
        "deterministic_grades_per_s": det,
        "python_grades_per_s": {k: v for k, v in py.items() if not k.startswith("_")},
        "python_pool_start_s": py["_pool_start_s"], "python_sandbox_isolation": py["_isolation"],
        "n": a.n, "python_n": a.python_n, "workers": a.workers,
        "goals": {"deterministic": 50000, "python": 300},
    }
    out = Path(__file__).parent / "results" / "graders.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
