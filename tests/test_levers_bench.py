"""The lever benchmarks do not rot: one lever script's runner trains both arms (plain GRPO and the lever) for a step
on a bundled environment with a real (untrained) tiny model and writes its summary with curves and the paired
bootstrap. No figure is asserted — the benchmark is the judge; what is asserted is the report's shape and that
the equal-trajectory budget is applied."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.levers import common, table  # noqa: E402


def test_final_within_budget():
    arm = {"curve": [{"step": 0, "trajectories": 0}, {"step": 2, "trajectories": 40}, {"step": 4, "trajectories": 90}]}
    assert common.final_within(arm, 64) == 2 and common.final_within(arm, 90) == 4 and common.final_within(arm, 0) == 0


def test_compared_steps_pair_equal_trajectories():
    base = {"train_trajectories": 256, "curve": [{"step": 0, "trajectories": 0}, {"step": 4, "trajectories": 128},
                                                 {"step": 8, "trajectories": 256}]}
    # one refill past the budget: the lever's step-4 eval (144) against the baseline's step-4 eval (128), not its 256
    over = {"curve": [{"step": 0, "trajectories": 0}, {"step": 4, "trajectories": 144},
                      {"step": 8, "trajectories": 272}]}
    assert common.compared_steps(base, over) == (4, 4)
    # within the budget: both final evals
    even = {"curve": [{"step": 0, "trajectories": 0}, {"step": 4, "trajectories": 128},
                      {"step": 8, "trajectories": 256}]}
    assert common.compared_steps(base, even) == (8, 8)


@pytest.mark.slow  # two short training runs: a minute or more on the loaded 2-core machine
def test_lever_runner_writes_summary(tmp_path, tiny_model):
    from agentrft.environments import get_environment

    data = get_environment("repo_locator").generate(tmp_path / "data", seed=0, n_train=4, n_valid=2, n_demos=1,
                                                    wrong_frac=0.5, redundant_frac=0.5)
    s = common.main("gigpo", {"hyperparameters": {"advantage": "gigpo"}},
                    ["--model", str(tiny_model), "--data", str(Path(data["train"]).parent), "--seeds", "0",
                     "--steps", "1", "--batch", "2", "--group", "2", "--eval-rows", "2", "--eval-interval", "1",
                     "--max-new-tokens", "8", "--max-turns", "2", "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "gigpo-repo_locator.json").read_text())
    assert written["lever"] == "gigpo" and written["paired_reward"]["n_items"] == 2
    for arm in ("grpo", "gigpo"):
        assert [c["step"] for c in s[arm]["curves"][0]] == [0, 1]
        assert s[arm]["curves"][0][1]["trajectories"] == 4  # 2 rows x 2 samples
    md = table.render([written])
    assert "| gigpo | repo_locator | 1 |" in md and "Curve, gigpo on repo_locator" in md


def test_copy_probe_counts_each_row_once_by_task_and_length(tmp_path, tiny_model, capsys):
    from agentrft.environments import get_environment
    from agentrft.environments.common import read_jsonl
    from benchmarks.levers import copy_probe

    files = get_environment("repo_locator").generate(tmp_path / "d", seed=3, n_train=12, n_valid=0)
    assert copy_probe.main([str(tiny_model), "--data", str(files["train"]), "--rows", "9"]) == 0
    out = json.loads(capsys.readouterr().out)["by_task_and_files"]
    rows = list(read_jsonl(files["train"]))[:9]
    want: dict[str, int] = {}
    for r in rows:
        key = f"{r['task']} {len(r['expected_files'])}"
        want[key] = want.get(key, 0) + 1
    assert {k: v["rows"] for k, v in out.items()} == want
    # an untrained model copies nothing: every answer is counted wrong, and no category exceeds its rows
    assert all(v["exact"] == 0 and v["short"] + v["long"] <= v["rows"] for v in out.values())
