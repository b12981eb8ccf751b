"""Pool one lever's runs over several seed sets (e.g. seeds 0-2 in ``runs/levers`` and 3-5 in ``runs/levers_s345``):
the paired bootstrap over validation rows at the evals each summary compared (each row's mean over all seeds and
samples), and each seed's validation reward, GRPO → lever. The interval resamples rows, not training runs: a seed
whose run collapses moves every row of that seed at once, which only more seeds show — hence the per-seed column.

    python -m benchmarks.levers.pool --lever gigpo --env support_desk --out runs/levers runs/levers_s345
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def pooled(lever: str, env: str, outs: list[Path]) -> dict[str, Any]:
    from agentrft.evals.compare import paired
    from agentrft.store import RunStore

    base: list[dict] = []
    lev: list[dict] = []
    per_seed = []
    for out in outs:
        s = json.loads((out / f"{lever}-{env}.json").read_text())
        # summaries written before the baseline's compared step was recorded compared its final eval
        bsteps = s["grpo"].get("final_steps") or [c[-1]["step"] for c in s["grpo"]["curves"]]
        for seed, bstep, lstep in zip(s["seeds"], bsteps, s[lever]["final_steps"]):
            arm = json.loads((out / f"grpo-{env}-s{seed}" / "arm.json").read_text())
            bt = arm["valid_trajs"][str(bstep)]
            st = RunStore("sqlite:///" + str(out / f"{lever}-{env}" / f"{lever}-s{seed}" / "agentrft.db"))
            try:
                lt = st.trajectories(st.list_runs()[0]["id"], step=lstep, split="valid")  # newest run: a rerun's
            finally:
                st.close()
            base += bt
            lev += lt
            per_seed.append({"seed": seed, "grpo": sum(t["reward"] for t in bt) / len(bt),
                             "lever": sum(t["reward"] for t in lt) / len(lt)})
    return {"lever": lever, "env": env, "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
            "paired_reward": paired(base, lev, "reward", seed=0), "paired_pass_rate": paired(base, lev, "passed", seed=0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lever", required=True)
    ap.add_argument("--env", required=True)
    ap.add_argument("--out", nargs="+", required=True, help="the lever scripts' --out directories")
    a = ap.parse_args()
    r = pooled(a.lever, a.env, [Path(o) for o in a.out])
    d, p = r["paired_reward"], r["paired_pass_rate"]
    seeds = ", ".join(f"{x['grpo']:.2f}→{x['lever']:.2f}" for x in r["per_seed"])
    print(f"| {a.lever} | {a.env} | {len(r['seeds'])} | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
          f"{p['diff']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}] | {seeds} |")


if __name__ == "__main__":
    main()
