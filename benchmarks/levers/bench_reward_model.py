"""Reward-model lever: how well a learned scorer reproduces the grader on trajectories it never saw.

    python benchmarks/levers/bench_reward_model.py --quickstart runs/quickstart [--base DIR]

Data: the quickstart's RFT run in its store — the training rollouts (temperature 1: the explorer trajectories) with
the grader's rewards. A reward model (frozen ``--base``, default the quickstart's pre-trained ``base``; a scoring head)
is trained by :func:`agentrft.rl.reward_model.train_reward_model` on the ``train`` split with 20% of the rows held
out; reported: Spearman ρ on the held-out rows, ρ on the run's validation rollouts (other rows, other checkpoints),
and the within-group pairwise accuracy on those — the share of pairs of the same task with different rewards that
the model orders like the grader (what a GRPO advantage needs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quickstart", type=Path, default=ROOT / "runs" / "quickstart")
    ap.add_argument("--base", type=Path, default=None, help="default: the quickstart's pre-trained base model")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_reward_model")
    ap.add_argument("--max-tokens", type=int, default=384)
    ap.add_argument("--rl-steps", type=int, default=0,
                    help="then RFT from the quickstart's SFT model for this many steps with the reward model as the "
                         "reward and the environment's grader as a holdout (recorded, never the reward), against the "
                         "quickstart's own run (same start, seed and settings) at the same steps")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from agentrft.evals.monitors import spearman
    from agentrft.graders.reward_model import RewardHead, encoder, load_meta, trajectory_text
    from agentrft.rl.reward_model import train_reward_model
    from agentrft.store import RunStore

    qs = args.quickstart.resolve()
    s = json.loads((qs / "report" / "summary.json").read_text())
    store = RunStore(f"sqlite:///{qs / 'runs' / 'agentrft.db'}", mode="existing")
    base = str((args.base or qs / "base").resolve())
    load = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    res = train_reward_model(store, [s["run_id"]], base, args.out, split="train", max_tokens=args.max_tokens)
    t_train = time.perf_counter() - t0
    meta = load_meta(args.out)
    head = RewardHead(meta["mu"], meta["sigma"], meta["w"], meta["b"])
    valid = [t for t in store.trajectories(s["run_id"], split="valid") if t["reward"] is not None]
    t0 = time.perf_counter()
    scores = head.scores(encoder(base, args.max_tokens).features([trajectory_text(t["messages"]) for t in valid]))
    t_score = time.perf_counter() - t0
    rewards = [float(t["reward"]) for t in valid]
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(valid):
        groups.setdefault((t["step"], t["row_index"]), []).append(i)
    agree = total = 0
    for idx in groups.values():
        for a, b in combinations(idx, 2):
            if rewards[a] != rewards[b]:
                total += 1
                agree += (scores[a] - scores[b]) * (rewards[a] - rewards[b]) > 0
    load.append(os.getloadavg()[0])
    result = {"validation": res["validation"], "valid_split": {
        "n": len(valid), "spearman": spearman(scores, rewards), "pairwise_accuracy": agree / total if total else None,
        "pairs": total}, "base": base, "train_s": t_train, "score_s_per_traj": t_score / max(1, len(valid)),
        "load_avg_1m": load, "command": " ".join(["python", "benchmarks/levers/bench_reward_model.py", *sys.argv[1:]])}
    if args.rl_steps:
        import yaml

        from agentrft.config import load_config
        from agentrft.rl.trainer import Trainer

        raw = yaml.safe_load((qs / "config.yaml").read_text())
        true = dict(raw["grader"], name="true_reward")
        rl = dict(raw, name="bench-reward-model-rl", output_dir=str(args.out.resolve() / "runs"),
                  grader={"type": "reward_model", "name": "rm", "path": str(args.out.resolve())},
                  holdout_graders={**raw.get("holdout_graders", {}), "true_reward": true})
        rl["hyperparameters"] = {**raw["hyperparameters"], "max_steps": args.rl_steps}
        (args.out / "rl.yaml").write_text(yaml.safe_dump(rl, sort_keys=False))
        t0 = time.perf_counter()
        rid = Trainer(load_config(args.out / "rl.yaml"), progress=False).run()
        rl_store = RunStore(f"sqlite:///{args.out.resolve() / 'runs' / 'agentrft.db'}")
        mine = {m["step"]: m for m in rl_store.step_metrics(rid, split="valid")}
        base_run = {m["step"]: m for m in store.step_metrics(s["run_id"], split="valid")}
        result["rl"] = {"run_id": rid, "steps": args.rl_steps, "wall_s": time.perf_counter() - t0,
                        "by_step": [{"step": k, "true_reward_with_rm": mine[k].get("grader/true_reward"),
                                     "rm_reward": mine[k]["reward_mean"],
                                     "true_reward_with_grader": base_run.get(k, {}).get("reward_mean")}
                                    for k in sorted(mine)]}
    (args.out / "bench_reward_model.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
