"""The markdown for docs/levers.md from the lever benchmarks' summaries (``<out>/<lever>-<env>.json``): the final
comparison at equal trajectories with its paired-bootstrap interval, and each lever's sample-efficiency curve
(validation reward and pass rate, mean over seeds, against trajectories consumed).

    python -m benchmarks.levers.table [--out runs/levers]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.levers.common import ROOT


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _compared(arm: dict) -> list[float]:
    # summaries written before compared_trajectories existed give each arm's total
    return arm.get("compared_trajectories") or arm["trajectories"]


def render(summaries: list[dict]) -> str:
    out = ["| lever | env | seeds | GRPO reward | lever reward | Δ reward, 95% paired-bootstrap CI | "
           "pass rate GRPO → lever | trajectories at the compared evals (GRPO / lever, mean per seed) |",
           "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lv, d = s["lever"], s["paired_reward"]
        out.append(f"| {lv} | {s['env']} | {len(s['seeds'])} | {s['grpo']['final_reward']:.3f} | "
                   f"{s[lv]['final_reward']:.3f} | {d['diff']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | "
                   f"{s['grpo']['final_pass_rate']:.3f} → {s[lv]['final_pass_rate']:.3f} | "
                   f"{_mean(_compared(s['grpo'])):.0f} / {_mean(_compared(s[lv])):.0f} |")
    out.append("")
    for s in summaries:
        lv = s["lever"]
        out += [f"Curve, {lv} on {s['env']} (mean over seeds {s['seeds']}; trajectories consumed → validation "
                "reward / pass rate):", "", "| arm | " + " | ".join(
                    str(c["trajectories"]) for c in s["grpo"]["curves"][0]) + " |",
                "|---|" + "---|" * len(s["grpo"]["curves"][0])]
        for arm in ("grpo", lv):
            curves = s[arm]["curves"]
            cells = []
            for i in range(min(len(c) for c in curves)):
                r = _mean([c[i]["reward"] for c in curves])
                p = _mean([c[i]["pass_rate"] for c in curves])
                t = _mean([c[i]["trajectories"] for c in curves])
                cells.append(f"{r:.3f} / {p:.2f}" + ("" if arm == "grpo" else f" @{t:.0f}"))
            out.append(f"| {arm} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "runs" / "levers"))
    a = ap.parse_args()
    summaries = [json.loads(p.read_text()) for p in sorted(Path(a.out).glob("*-*.json"))]
    print(render([s for s in summaries if "lever" in s]))


if __name__ == "__main__":
    main()
