"""Checkpoint comparison with real rollouts: paired seeds make a model compared with itself differ by exactly 0;
two different models get per-metric intervals, per-item deltas, plots, and a recorded compare run."""

from __future__ import annotations

import json

import lookup_task as lt
import pytest
from test_check import FUZZY
from test_monitors import EXACT

from agentrft.config import RunConfig
from agentrft.evals.compare import compare_models, compare_trajectories, find_checkpoint, resolve_model
from agentrft.models.tiny import TinyModelSpec, build_tiny_model
from agentrft.store import RunStore


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return lt.write_task(tmp_path_factory.mktemp("cmp"), seed=9, n_train=4, n_valid=5, n_demos=1)


def _cfg(tmp_path, model, files):
    return RunConfig(model=str(model), training_file=str(files["train"]), validation_file=str(files["valid"]),
                     tools=["lookup_task:lookup"], grader=FUZZY, holdout_graders={"exact": EXACT},
                     output_dir=str(tmp_path / "runs"), base_dir=str(tmp_path),
                     hyperparameters={"max_new_tokens": 8, "max_turns": 2, "max_episode_steps": 2, "seed": 4})


@pytest.mark.slow  # three models × two datasets of real rollouts (~1 min on 2 shared cores)
def test_same_model_is_exactly_paired_and_other_model_differs(tmp_path, tiny_model, files):
    other = build_tiny_model(lt.corpus(files) + lt.corpus(files), tmp_path / "other",
                             TinyModelSpec(vocab_size=512, seed=1))
    cfg = _cfg(tmp_path, tiny_model, files)
    extra = tmp_path / "adversarial.jsonl"
    extra.write_text("".join(files["valid"].read_text().splitlines(keepends=True)[:3]))
    rep = compare_models(cfg, ["baseline", str(tiny_model), str(other)], extra_data=[extra], samples=2,
                         out_dir=tmp_path / "report")
    assert set(rep["datasets"]) == {"valid", "adversarial"}
    same = rep["datasets"]["valid"]["comparisons"][str(tiny_model)]
    for m in ("reward", "num_tool_calls", "completion_tokens", "grader/fuzzy"):
        d = same["metrics"][m]
        assert d["diff"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0, m  # same seeds, same rollouts
    assert same["unchanged"] == 5 and same["improved"] == same["worsened"] == 0
    diff = rep["datasets"]["valid"]["comparisons"][str(other)]
    assert diff["metrics"]["reward"]["n_items"] == 5
    assert len(diff["items"]) == 5 and diff["items"][0]["delta"] >= diff["items"][-1]["delta"]
    assert diff["metrics"]["reward"]["ci_low"] <= diff["metrics"]["reward"]["diff"] <= diff["metrics"]["reward"]["ci_high"]
    tools = rep["datasets"]["valid"]["tools"]["baseline"]
    assert sum(tools["tool_calls_histogram"].values()) == 10 and sum(tools["first_tool"].values()) == 10
    out = tmp_path / "report"
    for f in ("report.json", "report.md", "valid_reward_vs_latency.png", "valid_tools.png",
              "adversarial_reward_vs_latency.png"):
        assert (out / f).stat().st_size > 100, f
    assert json.loads((out / "report.json").read_text())["run_id"] == rep["run_id"]
    st = RunStore(cfg.store_url)
    assert [(m["step"], m["split"]) for m in st.step_metrics(rep["run_id"])] == [
        (0, "eval:adversarial"), (0, "eval:valid"), (1, "eval:adversarial"), (1, "eval:valid"),
        (2, "eval:adversarial"), (2, "eval:valid")]
    assert st.count_trajectories(rep["run_id"]) == 3 * (5 + 3) * 2


def test_report_from_recorded_trajectories(tmp_path, lookup_files):
    """build_comparison + write_report on graded trajectories: intervals, item deltas, plots, markdown."""
    from test_monitors import graded, honest

    from agentrft.data import load_dataset
    from agentrft.evals.compare import build_comparison, write_report

    rows = list(load_dataset(lookup_files["valid"]))[:8]
    base, _ = graded(rows, honest, grader=EXACT, holdouts=(), samples=2)
    cand, _ = graded(rows, lambda r, k: r.item["answer"], grader=EXACT, holdouts=(), samples=2, calls=2)
    results = {"valid": {"baseline": base, "ckpt": cand}}
    rep = build_comparison(results)
    c = rep["datasets"]["valid"]["comparisons"]["ckpt"]
    assert c["metrics"]["reward"]["diff"] == pytest.approx(0.5) and c["metrics"]["reward"]["significant"]
    assert c["metrics"]["num_tool_calls"]["diff"] == pytest.approx(1.0)
    assert c["metrics"]["num_tool_calls"]["higher_is_better"] is False
    assert c["improved"] == 8 and rep["datasets"]["valid"]["tools"]["ckpt"]["tool_calls_histogram"] == {2: 16}
    write_report(rep, results, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| reward | 0.500 | 1.000 | +0.500 |" in md and "items improved 8" in md
    assert (tmp_path / "r" / "valid_tools.png").stat().st_size > 1000


def test_bootstrap_deltas_by_hand():
    """Trajectory dicts as the store returns them: item 0 improves by 1, item 1 by 0 → Δ = 0.5."""
    def t(row, r):
        return {"trace_id": f"t{row}{r}", "row_index": row, "outcome": "completed", "reward": r, "grades": [],
                "tool_calls": [], "num_tool_calls": 0}
    c = compare_trajectories([t(0, 0.0), t(1, 1.0)], [t(0, 1.0), t(1, 1.0)], metrics=["reward"])
    assert c["metrics"]["reward"]["diff"] == pytest.approx(0.5)
    assert c["improved"] == 1 and c["unchanged"] == 1 and c["items"][0]["row_index"] == 0


def test_model_references(tmp_path, files):
    cfg = _cfg(tmp_path, tmp_path / "m", files)
    st = RunStore(cfg.store_url)
    with pytest.raises(ValueError, match="at least two models"):
        compare_models(cfg, ["baseline"])
    run = st.create_run("r", {})
    with pytest.raises(ValueError, match="has no checkpoints"):
        find_checkpoint(st, run)
    for step, r in ((0, 0.2), (3, 0.6), (6, 0.6)):
        st.record_checkpoint(run, f"{run}:step-{step}", step, tmp_path / f"s{step}", {}, r)
    assert find_checkpoint(st, run, "best")["step"] == 3  # ties: the earlier step
    assert find_checkpoint(st, run, "latest")["step"] == 6
    assert resolve_model(cfg, f"{run}:step-6", st) == (f"{run}:step-6", str(tmp_path / "s6"))
    assert resolve_model(cfg, "baseline", st)[0] == "baseline"
    with pytest.raises(ValueError, match=r"no checkpoint 'step-9' \(it has: step-0, step-3, step-6\)"):
        resolve_model(cfg, f"{run}:step-9", st)
