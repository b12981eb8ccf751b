"""One lever against plain GRPO on a bundled environment, several seeds, at an equal budget of trajectories.

Every arm starts from the same warm-started model (a quickstart's SFT checkpoint, ``--model``; see
``agentrft quickstart``) and trains on the same generated data with the quickstart's hyperparameters, scaled
down (``--steps``, ``--batch``, ``--group``) so a run fits a loaded 2-core CPU. Evals run on the same first
``--eval-rows`` validation rows with the same seeds at every eval (paired across arms and checkpoints).

Budget: trajectories, not wall clock (the machine is shared; wall clock there measures the neighbours). An arm
that rolls out more per step (dynamic sampling's refills) is compared at its last eval whose trajectories consumed
are within the baseline's total. Reported per arm and seed: the curve (validation reward and pass rate against
trajectories consumed) and the final eval; per lever: the final validation reward's difference from the
baseline, a paired bootstrap over validation rows (each row's mean over seeds; ``agentrft.evals.compare.paired``).

Writes ``<out>/<lever>-<env>.json`` and prints a markdown row for ``docs/levers.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# plain GRPO: the quickstart's preset, scaled down; each lever's overrides go on top
BASE_HP: dict[str, Any] = {"learning_rate": 5e-4, "eval_samples": 2, "max_new_tokens": 64, "max_turns": 6,
                           "max_episode_steps": 6, "max_context_tokens": 1024, "micro_batch_size": 32, "lora": None,
                           "temperature": 1.0, "eval_temperature": 0.7, "max_signal_free_steps": 0,
                           "save_interval_s": 1e6, "keep_checkpoints": 1}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_arm(env_name: str, model: str, data: dict[str, Path], out: Path, seed: int, hp: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    """Train one arm; returns its curve, final eval trajectories and counts."""
    from agentrft.config import parse_config
    from agentrft.environments import get_environment
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    env = get_environment(env_name)
    cfg = parse_config(_merge({
        "name": f"lever-{out.name}-s{seed}", "model": model, "training_file": str(data["train"]),
        "validation_file": str(data["valid"]), "tools": list(env.tool_refs), "grader": env.grader,
        "holdout_graders": dict(env.holdout_graders or {}), "output_dir": str(out),
        "monitors": {"enabled": False}, "hyperparameters": dict(hp, seed=seed),
    }, extra), base_dir=str(out), source=f"{out.name}")
    t0 = time.perf_counter()
    run_id = Trainer(cfg, progress=False).run()
    wall = time.perf_counter() - t0
    st = RunStore(cfg.store_url)
    train = {m["step"]: m for m in st.step_metrics(run_id, split="train")}
    consumed, curve = 0, []
    valid = st.step_metrics(run_id, split="valid")
    for m in valid:
        consumed = int(sum(t["trajectories"] for s, t in train.items() if s <= m["step"]))
        curve.append({"step": m["step"], "trajectories": consumed, "reward": m["reward_mean"],
                      "pass_rate": m["pass_rate"]})
    trajs = {m["step"]: st.trajectories(run_id, step=m["step"], split="valid") for m in valid}
    st.close()
    return {"run_id": run_id, "curve": curve, "valid_trajs": trajs, "wall_s": wall,
            "train_trajectories": curve[-1]["trajectories"] if curve else 0,
            "lever_metrics": {k: v for s in train.values() for k, v in s.items() if "/" in k and not k.startswith("time")}}


def cached_arm(env_name: str, model: str, data: dict[str, Path], out: Path, seed: int,
               hp: dict[str, Any]) -> dict[str, Any]:
    """The plain-GRPO arm, shared by every lever's script: run once per (environment, seed, model, data,
    hyperparameters) and reused from ``out/arm.json`` afterwards."""
    key = json.dumps({"model": model, "data": {k: str(v) for k, v in data.items()}, "hp": hp, "seed": seed},
                     sort_keys=True, default=str)
    cache = out / "arm.json"
    if cache.exists():
        got = json.loads(cache.read_text())
        if got.get("key") == key:
            got["valid_trajs"] = {int(k): v for k, v in got["valid_trajs"].items()}
            return got
    r = run_arm(env_name, model, data, out, seed, hp, {})
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({**r, "key": key}, default=str))
    return r


def final_within(arm: dict[str, Any], budget: int) -> int:
    """The step of the arm's last eval whose trajectories consumed are within ``budget``."""
    ok = [c for c in arm["curve"] if c["trajectories"] <= budget]
    return (ok or arm["curve"][:1])[-1]["step"]


def _at(arm: dict[str, Any], step: int) -> int:
    return next(c["trajectories"] for c in arm["curve"] if c["step"] == step)


def compared_steps(base: dict[str, Any], lever: dict[str, Any]) -> tuple[int, int]:
    """(baseline step, lever step) compared at equal trajectories: the lever at its last eval within the baseline's
    total, the baseline at its last eval within what the lever had consumed there. Pairing the lever's early eval
    with the baseline's final one instead charged an arm that overshot the budget by one refill (16 trajectories)
    a whole eval interval (measured: dynamic sampling's 131-trajectory eval against GRPO's 256-trajectory one)."""
    s = final_within(lever, base["train_trajectories"])
    return final_within(base, _at(lever, s)), s


def main(lever: str, overrides: dict[str, Any], argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=f"{lever} vs plain GRPO (benchmarks/levers)")
    ap.add_argument("--env", default="repo_locator", choices=["repo_locator", "support_desk"])
    ap.add_argument("--model", required=True, help="warm-started model (a quickstart's <out>/sft)")
    ap.add_argument("--data", help="directory with train.jsonl/valid.jsonl (default: generated like the quickstart)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--eval-rows", type=int, default=24)
    ap.add_argument("--eval-interval", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=BASE_HP["max_new_tokens"])
    ap.add_argument("--max-turns", type=int, default=BASE_HP["max_turns"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "levers"))
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from agentrft.evals.compare import paired

    out = Path(a.out).resolve() / f"{lever}-{a.env}"
    if a.data:
        data = {"train": Path(a.data) / "train.jsonl", "valid": Path(a.data) / "valid.jsonl"}
    else:
        from agentrft.environments import get_environment
        from agentrft.quickstart import PRESETS

        data = get_environment(a.env).generate(out / "data", seed=0, **PRESETS[a.env]["generate"])
    hp = dict(BASE_HP, max_steps=a.steps, batch_size=a.batch, group_size=a.group, eval_rows=a.eval_rows,
              eval_interval=a.eval_interval, max_new_tokens=a.max_new_tokens, max_turns=a.max_turns,
              max_episode_steps=a.max_turns)
    arms: dict[str, list[dict[str, Any]]] = {"grpo": [], lever: []}
    load = [os.getloadavg()[0]]
    for seed in a.seeds:
        for name, extra in (("grpo", {}), (lever, overrides)):
            r = cached_arm(a.env, a.model, data, out.parent / f"grpo-{a.env}-s{seed}", seed, hp) if name == "grpo" \
                else run_arm(a.env, a.model, data, out / f"{name}-s{seed}", seed, hp, extra)
            arms[name].append(r)
            load.append(os.getloadavg()[0])
            print(f"[{lever}/{a.env}] {name} seed {seed}: final reward {r['curve'][-1]['reward']:.3f} pass "
                  f"{r['curve'][-1]['pass_rate']:.3f}, {r['train_trajectories']} trajectories, {r['wall_s']:.0f}s",
                  file=sys.stderr, flush=True)
    # final evals at equal trajectories: each seed's lever arm at its last eval within that seed's baseline budget,
    # against the baseline's last eval within what the lever had consumed there (compared_steps)
    base_final, lever_final, steps_used, base_steps = [], [], [], []
    for b, lv in zip(arms["grpo"], arms[lever]):
        bs, s = compared_steps(b, lv)
        steps_used.append(s)
        base_steps.append(bs)
        base_final += b["valid_trajs"][bs]
        lever_final += lv["valid_trajs"][s]
    diff = paired(base_final, lever_final, "reward", seed=0)
    diff_pass = paired(base_final, lever_final, "passed", seed=0) if base_final else None

    def mean_final(arm: list[dict[str, Any]], which: str, at: list[int] | None = None) -> float:
        vals = []
        for i, r in enumerate(arm):
            step = at[i] if at else r["curve"][-1]["step"]
            vals.append(next(c[which] for c in r["curve"] if c["step"] == step))
        return sum(vals) / len(vals)

    summary = {
        "lever": lever, "env": a.env, "seeds": a.seeds, "overrides": overrides, "hyperparameters": hp,
        "model": a.model,
        "budget": "equal trajectories (the lever at its last eval within the baseline's count, the baseline at its "
                  "last eval within the lever's count there)",
        "grpo": {"final_reward": mean_final(arms["grpo"], "reward", base_steps),
                 "final_pass_rate": mean_final(arms["grpo"], "pass_rate", base_steps), "final_steps": base_steps,
                 "compared_trajectories": [_at(r, st) for r, st in zip(arms["grpo"], base_steps)],
                 "trajectories": [r["train_trajectories"] for r in arms["grpo"]],
                 "wall_s": [r["wall_s"] for r in arms["grpo"]], "curves": [r["curve"] for r in arms["grpo"]]},
        lever: {"final_reward": mean_final(arms[lever], "reward", steps_used),
                "final_pass_rate": mean_final(arms[lever], "pass_rate", steps_used), "final_steps": steps_used,
                "compared_trajectories": [_at(r, st) for r, st in zip(arms[lever], steps_used)],
                "trajectories": [r["train_trajectories"] for r in arms[lever]],
                "wall_s": [r["wall_s"] for r in arms[lever]], "curves": [r["curve"] for r in arms[lever]],
                "lever_metrics_last": [r["lever_metrics"] for r in arms[lever]]},
        "paired_reward": diff, "paired_pass_rate": diff_pass, "load_average": load,
        "threads": a.threads,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{lever}-{a.env}.json").write_text(json.dumps(summary, indent=2, default=str))
    d = diff
    print(f"| {lever} | {a.env} | {len(a.seeds)} | {summary['grpo']['final_reward']:.3f} | "
          f"{summary[lever]['final_reward']:.3f} | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
          f"{summary['grpo']['final_pass_rate']:.3f} → {summary[lever]['final_pass_rate']:.3f} |")
    return summary
