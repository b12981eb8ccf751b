"""``python -m benchmarks`` / ``agentrft bench``: agentrft against HF ``generate``, TRL and the machine's limit,
side by side, in one run on this machine; writes ``docs/benchmarks.md`` and ``docs/benchmarks.json``.

Each section runs in its own subprocess (see ``benchmarks/sections.py`` for what is measured and how FLOPs and
overhead are defined); the grader and HTTP-tool benchmarks owned by their packages are run as they are and
their figures folded in. The 1-minute load average is recorded before and after every section: the machine may
be shared, and a figure means little without it.

Threads: ``--threads auto`` uses every core when the machine is quiet and 1 when the load average is already at
or above the core count — with 2 OpenMP threads and a busy neighbour, small element-wise ops here were measured
60× slower than on one thread (the threads wait at barriers for a descheduled partner).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load() -> float:
    return os.getloadavg()[0]


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot, from /proc/stat (None where there is none)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return (f[7] if len(f) > 7 else 0), sum(f[:8])


def _steal_share(before: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests since ``before`` (on a shared VM, the reason the
    same code runs 1.5× slower an hour later)."""
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                fl = line.split(":", 1)[1].split()
                return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f in fl]
    except OSError:
        pass
    return []


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "trl", "agentrft"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except ImportError:
            out[mod] = "not installed"
    return out


def _settings(quick: bool) -> dict[str, Any]:
    if quick:  # a smoke run: every code path, tiny sizes (seconds, not figures)
        return {"sizes": ["1M"], "n_seq": 4, "seq_len": 64, "micro_batch": 4, "reps": 1, "sft_epochs": 1,
                "compile_sizes": ["1M"], "overhead_sizes": ["1M"],
                "rollout_sizes": ["1M"], "rollout_plan": {"1M": [4]}, "rollout_reps": 1, "max_new_tokens": 16,
                "grpo": {"size": "1M", "steps": 2, "prompts": 1, "group": 2, "lr": 1e-4, "max_new_tokens": 16},
                "graders": {"n": 500, "python_n": 50}, "tools_http": {"seconds": 0.5}}
    return {"sizes": ["1M", "10M", "30M"], "n_seq": 8, "seq_len": 256, "micro_batch": 8, "reps": 3, "sft_epochs": 8,
            "compile_sizes": ["10M", "30M"], "overhead_sizes": ["10M"],
            "rollout_sizes": ["1M", "10M"], "rollout_plan": {"1M": [8, 32], "10M": [16]}, "rollout_reps": 2,
            "max_new_tokens": 48,
            "grpo": {"size": "1M", "steps": 16, "prompts": 2, "group": 4, "lr": 3e-4, "max_new_tokens": 48,
                     "rounds": 3, "overhead_steps": 9},
            "graders": {"n": 5000, "python_n": 1000}, "tools_http": {"seconds": 2.0}}


def _run_section(name: str, cfg: dict[str, Any], work: Path, log: Any) -> dict[str, Any]:
    cfg_path, out_path = work / f"{name}.cfg.json", work / f"{name}.out.json"
    cfg_path.write_text(json.dumps(cfg))
    load0, t0, cpu0 = _load(), time.perf_counter(), _cpu_times()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(cfg["threads"]),
           # a cache of torch.compile's kernels per benchmark work dir: the compiled learner's first step shows a
           # cold compile, not one served from an earlier run's cache
           "TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache")}
    p = subprocess.run([sys.executable, "-m", "benchmarks.sections", name, str(cfg_path), str(out_path)], cwd=ROOT,
                       env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    machine = {"load_before": load0, "load_after": _load(), "wall_s": wall, "steal_share": _steal_share(cpu0)}
    if p.returncode != 0 or not out_path.exists():
        tail = (p.stderr or p.stdout)[-3000:]
        log(f"[{name}] FAILED (exit {p.returncode}) after {wall:.0f}s:\n{tail}")
        return {"error": f"exit {p.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}", **machine}
    res = json.loads(out_path.read_text())
    res.update(machine)
    steal = "" if res["steal_share"] is None else f", CPU steal {res['steal_share']:.0%}"
    log(f"[{name}] done in {wall:.0f}s (load {load0:.1f} → {res['load_after']:.1f}{steal}, "
        f"peak RSS {res.get('rss_mb', 0):.0f} MB)")
    return res


def _run_graders(st: dict[str, Any], work: Path, log: Any) -> dict[str, Any]:
    """bench_graders.py writes a fixed path (its owner's committed result); run it, take its figures, restore."""
    res: dict[str, Any] = {}
    gpath = ROOT / "benchmarks" / "results" / "graders.json"
    saved = gpath.read_bytes() if gpath.exists() else None
    load0, t0 = _load(), time.perf_counter()
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_graders.py"), "--n", str(st["graders"]["n"]),
                        "--python-n", str(st["graders"]["python_n"])], cwd=ROOT, capture_output=True, text=True)
    try:
        if p.returncode == 0 and gpath.exists():
            res["graders"] = json.loads(gpath.read_text())
        else:
            res["graders"] = {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-500:]}"}
    finally:
        if saved is not None:
            gpath.write_bytes(saved)
    res["graders"].update({"load_before": load0, "load_after": _load(), "wall_s": time.perf_counter() - t0})
    tpath = work / "tools_http.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_tools_http.py"), "--threads", "1", "16",
                        "--seconds", str(st["tools_http"]["seconds"]), "--tool-ms", "0", "--out", str(tpath)],
                       cwd=ROOT, capture_output=True, text=True)
    res["tools_http"] = json.loads(tpath.read_text()) if p.returncode == 0 and tpath.exists() else \
        {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-500:]}"}
    log(f"[graders, tools_http] done in {time.perf_counter() - t0:.0f}s")
    return res


def _median_after_warmup(steps: list[dict[str, Any]], key: str = "seconds") -> float | None:
    xs = [s[key] for s in steps[1:] if s.get(key) is not None] or [s[key] for s in steps if s.get(key) is not None]
    return statistics.median(xs) if xs else None


def _time_shares(steps: list[dict[str, Any]]) -> dict[str, float] | None:
    """Each part's share of the steps' summed wall time (None for no steps)."""
    tot = sum(s["seconds"] for s in steps)
    if not tot:
        return None
    return {k: sum(s[k] for s in steps) / tot
            for k in ("sampling_forward_s", "training_s", "grading_s", "tool_s", "overhead_s")}


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """The headline keys from the sections' raw figures (None where a section failed)."""
    out: dict[str, Any] = {}
    mm = raw.get("matmul", {})
    out["matmul_gflops"] = {"peak": mm.get("peak_gflops"), **(mm.get("gflops") or {})}
    out["update_mfu"] = {k: v["mfu"] for k, v in (raw.get("update", {}).get("update") or {}).items()}
    ro = raw.get("rollout", {}).get("rollout") or {}
    out["rollout_speedup_vs_hf_generate"] = {k: {"traj_per_s": v["speedup_traj_per_s"],
                                                 "gen_tokens_per_s": v["speedup_tokens_per_s"]} for k, v in ro.items()}
    ours = raw.get("grpo_ours", {}).get("steps") or []
    trl = raw.get("grpo_trl", {}).get("steps") or []
    # rounds: the two sections run again, alternating (ours, TRL, ours, TRL, …), so a change in the machine's speed
    # (this is a VM: the host's CPU steal comes and goes) hits both; step times pool every round's steps after its
    # first, and each round's own ratio is reported to show the spread
    rounds = [(ours, trl)] + [(r.get("ours") or [], r.get("trl") or []) for r in raw.get("grpo_rounds") or []]
    pooled_ours = [x for o, _ in rounds for x in o[1:]] or ours
    pooled_trl = [x for _, t in rounds for x in t[1:]] or trl
    t_ours = statistics.median(x["seconds"] for x in pooled_ours) if pooled_ours else None
    t_trl = statistics.median(x["seconds"] for x in pooled_trl) if pooled_trl else None
    out["grpo_step_seconds"] = {"ours": t_ours, "trl": t_trl}
    out["grpo_step_speedup_vs_trl"] = (t_trl / t_ours) if t_ours and t_trl else None
    by_round = []
    for o, t in rounds:
        mo, mt = _median_after_warmup(o), _median_after_warmup(t)
        by_round.append((mt / mo) if mo and mt else None)
    out["grpo_step_speedup_by_round"] = by_round
    # GRPO skips groups whose rewards are all equal (no signal), TRL still runs its update on them: the like-for-like
    # figure compares only our steps that did run an update
    upd = [s for s in pooled_ours if s.get("training_s", 0.0) > 1e-3]
    t_upd = statistics.median(s["seconds"] for s in upd) if upd else None
    out["grpo_step_seconds"]["ours_steps_with_update"] = t_upd
    out["grpo_step_speedup_vs_trl_steps_with_update"] = (t_trl / t_upd) if t_upd and t_trl else None
    if ours:
        out["step_time_shares"] = _time_shares(pooled_ours)
        out["framework_overhead_share"] = out["step_time_shares"]["overhead_s"]
    else:
        out["framework_overhead_share"] = None
    by_size = {raw.get("grpo_ours", {}).get("size", "main"): out["framework_overhead_share"]}
    for size, r in (raw.get("grpo_ours_by_size") or {}).items():
        steps = r.get("steps") or []
        by_size[size] = (_time_shares(steps[1:]) or {}).get("overhead_s")
        out.setdefault("grpo_step_seconds_by_size", {})[size] = _median_after_warmup(steps)
    out["framework_overhead_share_by_model"] = by_size
    out["reward_curves"] = {
        name: [{"step": s["step"], "wall_s": sum(x["seconds"] for x in steps[: i + 1]), "reward": s["reward"]}
               for i, s in enumerate(steps)]
        for name, steps in (("ours", ours), ("trl", trl))
    }
    for name, steps in (("ours", ours), ("trl", trl)):
        rs = [s["reward"] for s in steps if s.get("reward") is not None]
        half = len(rs) // 2
        out.setdefault("reward_mean_second_half", {})[name] = statistics.mean(rs[half:]) if rs[half:] else None
    g = raw.get("graders", {})
    out["graders_per_s"] = {**(g.get("deterministic_grades_per_s") or {}), **(g.get("python_grades_per_s") or {})}
    out["peak_rss_mb"] = {k: v.get("rss_mb") for k, v in raw.items() if isinstance(v, dict) and "rss_mb" in v}
    return out


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


KEEP_MARKER = "<!-- hand-written below this line: kept when the harness rewrites this file -->"


def write_markdown(path: Path, text: str) -> None:
    """Write the rendered page, keeping the hand-written part of the existing one (after ``KEEP_MARKER``)."""
    old = path.read_text() if path.exists() else ""
    if KEEP_MARKER in old:
        text = text.rstrip("\n") + "\n\n" + old[old.index(KEEP_MARKER):]
    path.write_text(text)


def render_markdown(doc: dict[str, Any]) -> str:
    s, raw, m = doc["summary"], doc["raw"], doc["machine"]
    L = [
        "# Benchmarks: agentrft vs HF generate, TRL and the machine's limit",
        "",
        f"Measured {doc['date']} in one run of `python -m benchmarks{' --quick' if doc['quick'] else ''}` on "
        f"{m['cpu']} ({m['cores']} cores, {', '.join(m['flags'])}), torch threads {doc['threads']}; "
        f"load average {m['load_start']:.1f} at start, {m['load_end']:.1f} at end"
        + ("" if m.get("steal_share") is None else f", CPU steal {m['steal_share']:.0%} of the run")
        + " (the machine is shared: figures with a high load or steal are lower bounds). Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".",
        "",
        "Definitions (FLOPs, MFU, overhead) are in `benchmarks/sections.py`; raw figures in `docs/benchmarks.json`.",
        "",
        "## Goals",
        "",
        "| goal | target | achieved |",
        "|---|---|---|",
        f"| GRPO step vs TRL `GRPOTrainer` (same model, data, group, tool) | ≥ 2× faster | "
        f"{_f(s['grpo_step_speedup_vs_trl'], '{:.2f}×')} ({_f(s['grpo_step_seconds']['ours'], '{:.2f}')} s vs "
        f"{_f(s['grpo_step_seconds']['trl'], '{:.2f}')} s) |",
        f"| … counting only our steps that ran an update (TRL updates every step) | ≥ 2× | "
        f"{_f(s.get('grpo_step_speedup_vs_trl_steps_with_update'), '{:.2f}×')} "
        f"({_f(s['grpo_step_seconds'].get('ours_steps_with_update'), '{:.2f}')} s) |",
        "| reward, 2nd half of the curve (ours / TRL) | equal or better | "
        f"{_f(s['reward_mean_second_half'].get('ours'))} / {_f(s['reward_mean_second_half'].get('trl'))} |",
    ]
    for k, v in s["rollout_speedup_vs_hf_generate"].items():
        L.append(f"| multi-turn rollout vs HF `generate`, {k} | ≥ 3× | {v['traj_per_s']:.2f}× trajectories/s, "
                 f"{v['gen_tokens_per_s']:.2f}× tokens/s |")
    for k, v in s["update_mfu"].items():
        if not k.startswith("1M"):
            note = " (opt-in `compile_learner`)" if k.endswith("+compile") else ""
            L.append(f"| learner update MFU, {k}{note} | ≥ 60% | {100 * v:.0f}% |")
    L.append(f"| framework overhead share of a GRPO step | ≤ 5% | {_f(s['framework_overhead_share'], '{:.1%}')} |")
    extra = s.get("grpo_step_seconds_by_size") or {}  # the sizes run only for the overhead figure
    for k, v in (s.get("framework_overhead_share_by_model") or {}).items():
        if v is not None and k in extra:
            L.append(f"| … the same GRPO steps on the {k} model | ≤ 5% | {v:.1%} (step {_f(extra[k], '{:.2f}')} s) |")
    L += ["", "## 1. The physical limit: fp32 matmul", "", "| shape (m×k×n) | GFLOP/s |", "|---|---|"]
    for k, v in (raw.get("matmul", {}).get("gflops") or {}).items():
        L.append(f"| {k} | {v:.1f} |")
    L += ["", "## 2. Learner update (`Learner.rl_step`: forward, clipped loss, backward, AdamW)", "",
          "| model/mode | params | tokens | s | tokens/s | GFLOP/s | MFU | first step s (compile) |",
          "|---|---|---|---|---|---|---|---|"]
    for k, v in (raw.get("update", {}).get("update") or {}).items():
        L.append(f"| {k} | {v['params'] / 1e6:.1f}M | {v['tokens']} | {v['seconds']:.2f} | {v['tokens_per_s']:.0f} | "
                 f"{v['achieved_gflops']:.1f} | {100 * v['mfu']:.0f}% | {_f(v.get('first_step_s'), '{:.1f}')} |")
    L += ["", "## 3. Multi-turn tool-calling rollouts (all trajectories in flight, real tool calls)", "",
          "| model/batch | engine | traj/s | gen tokens/s | turns | tool calls | forward passes |",
          "|---|---|---|---|---|---|---|"]
    for k, v in (raw.get("rollout", {}).get("rollout") or {}).items():
        for eng in ("ours", "ours_turn_batched", "hf_generate"):
            e = v[eng]
            L.append(f"| {k} | {eng} | {e['traj_per_s']:.2f} | {e['gen_tokens_per_s']:.0f} | {e['turns_mean']:.2f} | "
                     f"{e['tool_calls_mean']:.2f} | {e['forward_passes']} |")
    g = doc["settings"]["grpo"]
    L += ["", "## 4. End to end: GRPO steps, agentrft `Trainer` vs TRL `GRPOTrainer`", "",
          f"{g['size']} model (SFT-warmed), {g['prompts']} prompts × {g['group']} rollouts a step, ≤ {g['max_new_tokens']} "
          f"new tokens a turn, full fine-tuning, lr {g['lr']}, {g['steps']} steps each; step time = median after step 1"
          + (f", pooled over {len(s.get('grpo_step_speedup_by_round') or [])} alternating rounds (speedup by round: "
             + ", ".join(_f(x, '{:.2f}×') for x in s.get('grpo_step_speedup_by_round') or []) + ")"
             if len(s.get("grpo_step_speedup_by_round") or []) > 1 else "") + ".",
          "", "| framework | step s (median) | reward 2nd half | peak RSS MB |", "|---|---|---|---|"]
    for name, key in (("agentrft", "ours"), ("TRL", "trl")):
        sect = raw.get(f"grpo_{key}", {})
        L.append(f"| {name} | {_f(s['grpo_step_seconds'][key])} | {_f(s['reward_mean_second_half'].get(key))} | "
                 f"{_f(sect.get('rss_mb'), '{:.0f}')} |")
    L += ["", "Reward vs wall clock (seconds since the first step; per-step train reward):", "",
          "| step | agentrft s | agentrft reward | TRL s | TRL reward |", "|---|---|---|---|---|"]
    co, ct = s["reward_curves"]["ours"], s["reward_curves"]["trl"]
    for i in range(max(len(co), len(ct))):
        a = co[i] if i < len(co) else {}
        b = ct[i] if i < len(ct) else {}
        L.append(f"| {i + 1} | {_f(a.get('wall_s'), '{:.1f}')} | {_f(a.get('reward'))} | {_f(b.get('wall_s'), '{:.1f}')} "
                 f"| {_f(b.get('reward'))} |")
    if s.get("step_time_shares"):
        L += ["", "## 5. Where an agentrft step's time goes", "", "| part | share |", "|---|---|"]
        names = {"sampling_forward_s": "model forwards while sampling", "training_s": "learner update",
                 "grading_s": "graders", "tool_s": "tool wait (per trajectory, overlaps decoding)",
                 "overhead_s": "framework overhead (the rest)"}
        for k, v in s["step_time_shares"].items():
            L.append(f"| {names[k]} | {v:.1%} |")
    L += ["", "## Graders per second (benchmarks/bench_graders.py)", "", "| grader | grades/s |", "|---|---|"]
    for k, v in s["graders_per_s"].items():
        L.append(f"| {k} | {v:,.0f} |")
    th = raw.get("tools_http", {})
    if th.get("results"):
        L += ["", "## HTTP tool calls (benchmarks/bench_tools_http.py)", "", "```", json.dumps(th["results"])[:1500], "```"]
    L += ["", "## Peak RSS and CPU steal per benchmark", "", "| section | peak RSS MB | CPU steal |", "|---|---|---|"]
    for k, v in s["peak_rss_mb"].items():
        L.append(f"| {k} | {_f(v, '{:.0f}')} | {_f((raw.get(k) or {}).get('steal_share'), '{:.0%}')} |")
    errs = {k: v["error"] for k, v in raw.items() if isinstance(v, dict) and v.get("error")}
    if errs:
        L += ["", "## Sections that failed in this run", ""] + [f"- {k}: {v}" for k, v in errs.items()]
    if doc.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(L) + "\n"


REQUIRED_KEYS = ("matmul_gflops", "update_mfu", "rollout_speedup_vs_hf_generate", "grpo_step_speedup_vs_trl",
                 "framework_overhead_share")
ALL = ["matmul", "update", "rollout", "grpo_ours", "grpo_trl", "graders"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: exercises every path in about a minute")
    ap.add_argument("--sections", nargs="+", default=ALL, choices=ALL)
    ap.add_argument("--threads", default="auto", help="torch threads: a number or 'auto'")
    ap.add_argument("--work", default=None, help="work dir for models and task files (default: a temp dir)")
    ap.add_argument("--out-md", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--out-json", default=str(ROOT / "docs" / "benchmarks.json"))
    ap.add_argument("--grpo-steps", type=int, default=None)
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes section (repeatable)")
    ap.add_argument("--render", metavar="JSON", default=None,
                    help="only re-render the markdown from a previous run's JSON (adding any --note lines)")
    a = ap.parse_args(argv)
    if a.render:
        doc = json.loads(Path(a.render).read_text())
        doc["notes"] = list(doc.get("notes") or []) + a.note
        doc["summary"] = summarize(doc["raw"])
        for k in REQUIRED_KEYS:
            doc[k] = doc["summary"][k]
        Path(a.out_json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
        write_markdown(Path(a.out_md), render_markdown(doc))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cores = os.cpu_count() or 1
    load_start, cpu_start = _load(), _cpu_times()
    threads = (1 if load_start >= cores else cores) if a.threads == "auto" else int(a.threads)
    st = _settings(a.quick)
    if a.grpo_steps:
        st["grpo"]["steps"] = a.grpo_steps
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="agentrft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work dir {work}; threads {threads}; load {load_start:.1f}")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    from benchmarks.sections import prepare

    t0 = time.perf_counter()
    sft_sizes = sorted(set(st["rollout_sizes"]) | {st["grpo"]["size"]}, key=st["sizes"].index)
    fix = prepare(work, st["sizes"], st["sft_epochs"]) if sft_sizes == st["sizes"][: len(sft_sizes)] else None
    assert fix is not None, "the SFT-warmed sizes must be the first sizes"
    log(f"[prepare] models + SFT warm-start in {time.perf_counter() - t0:.0f}s")
    cfg = {**st, **fix, "threads": threads, "quick": a.quick, "work": str(work)}
    raw: dict[str, Any] = {"prepare": {"sft": fix["sft"], "wall_s": time.perf_counter() - t0}}
    for name in a.sections:
        if name == "graders":
            raw.update(_run_graders(st, work, log))
            continue
        if name == "update":
            cfg["peak_gflops"] = (raw.get("matmul") or {}).get("peak_gflops") or _quick_peak(threads)
        raw[name] = _run_section(name, cfg, work, log)
    if "grpo_ours" in a.sections and "grpo_trl" in a.sections:
        raw["grpo_rounds"] = []
        for _ in range(1, st["grpo"].get("rounds", 1)):
            o, t = _run_section("grpo_ours", cfg, work, log), _run_section("grpo_trl", cfg, work, log)
            raw["grpo_rounds"].append({"ours": o.get("steps"), "trl": t.get("steps")})
    if "grpo_ours" in a.sections:
        # the same GRPO steps on a larger model: the framework's own time is about the same, the model's grows
        raw["grpo_ours_by_size"] = {}
        for size in st.get("overhead_sizes", []):
            g = {**st["grpo"], "size": size, "steps": st["grpo"].get("overhead_steps", st["grpo"]["steps"])}
            raw["grpo_ours_by_size"][size] = _run_section("grpo_ours", {**cfg, "grpo": g}, work, log)
    doc = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": a.quick,
        "threads": threads,
        "machine": {"cpu": _cpu_name(), "cores": cores, "flags": _cpu_flags(), "platform": platform.platform(),
                    "load_start": load_start, "load_end": _load(), "steal_share": _steal_share(cpu_start)},
        "versions": _versions(),
        "settings": st,
        "notes": a.note,
    }
    doc["summary"] = summarize(raw)
    for k in REQUIRED_KEYS:
        doc[k] = doc["summary"][k]
    doc["raw"] = raw
    Path(a.out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out_json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    write_markdown(Path(a.out_md), render_markdown(doc))
    log(f"wrote {a.out_md} and {a.out_json} in {time.perf_counter() - t0:.0f}s")
    return 0


def _quick_peak(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    x = torch.randn(1024, 1024)
    x @ x
    t0 = time.perf_counter()
    for _ in range(5):
        x @ x
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
