"""The readiness check: real rollouts of a locally built model with the real tools and graders, real store.

The untrained tiny model never produces a correct answer: with the exact-match grader that is "a task the base
model never solves" (no-go, no baseline); with a grader that always returns 1 it is "no headroom" (no-go); with a
partial-credit grader (fuzzy similarity to the answer) its samples differ and score above zero (go). The
bundled-environment "go" with a warm-started model is in test_check_env.py (slow).
"""

from __future__ import annotations

import json

import lookup_task as lt
import pytest
from test_monitors import EXACT, graded, honest

from agentrft.config import RunConfig
from agentrft.data import load_dataset
from agentrft.evals.check import CheckThresholds, assess_split, dataset_problems, run_check, verdict
from agentrft.store import RunStore

ALWAYS_ONE = {"type": "string_check", "name": "always", "input": "yes", "reference": "yes", "operation": "eq"}
FUZZY = {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
         "evaluation_metric": "fuzzy_match", "pass_threshold": 0.9}


def _cfg(tmp_path, model, files, grader, holdouts=None):
    return RunConfig(model=str(model), training_file=str(files["train"]), validation_file=str(files["valid"]),
                     tools=["lookup_task:lookup"], grader=grader, holdout_graders=holdouts or {},
                     output_dir=str(tmp_path / "runs"), base_dir=str(tmp_path),
                     hyperparameters={"max_new_tokens": 8, "max_turns": 2, "max_episode_steps": 2, "seed": 3})


@pytest.fixture(scope="module")
def small_files(lookup_files, tmp_path_factory):
    return lt.write_task(tmp_path_factory.mktemp("check"), seed=5, n_train=12, n_valid=6, n_demos=1)


def test_never_solves_is_no_go(tmp_path, tiny_model, small_files):
    cfg = _cfg(tmp_path, tiny_model, small_files, EXACT)
    rep = run_check(cfg, samples=2, max_items=4, out_dir=tmp_path / "report")
    assert rep["verdict"] == "no-go"
    assert [r["code"] for r in rep["reasons"]] == ["no_baseline"]
    assert "never scores" in rep["reasons"][0]["message"] and "SFT" in rep["reasons"][0]["fix"]
    v = rep["splits"]["valid"]
    assert v["floor_share"] == 1.0 and v["reward_mean"] == 0.0 and v["items"] == 4 and v["samples"] == 8
    assert v["nondeterminism"] == 0.0 and v["regraded"] == 8  # string_check is deterministic
    # recorded: both splits' samples are in the store under the check run
    store = RunStore(cfg.store_url)
    assert store.count_trajectories(rep["run_id"], "eval:check-valid") == 8
    assert store.count_trajectories(rep["run_id"], "eval:check-train") == 8
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["verdict"] == "no-go"
    assert "NO-GO" in (tmp_path / "report" / "report.md").read_text()


def test_grader_that_always_passes_is_no_go(tmp_path, tiny_model, small_files):
    rep = run_check(_cfg(tmp_path, tiny_model, small_files, ALWAYS_ONE), samples=2, max_items=4, record=False)
    assert rep["verdict"] == "no-go" and [r["code"] for r in rep["reasons"]] == ["no_headroom"]
    assert rep["splits"]["valid"]["ceiling_share"] == 1.0


def test_partial_credit_gives_go(tmp_path, tiny_model, small_files):
    rep = run_check(_cfg(tmp_path, tiny_model, small_files, FUZZY, {"exact": EXACT}), samples=3, max_items=6,
                    record=False)
    v = rep["splits"]["valid"]
    assert rep["verdict"] == "go", rep["reasons"]
    assert 0 < v["reward_mean"] < 1 and v["floor_share"] == 0.0 and v["zero_variance_share"] < 0.5
    assert v["within_item_variance"] > 0
    assert v["agreement"]["exact"]["rho"] is None  # exact is 0 everywhere: undefined, not a fake number
    assert {w["code"] for w in rep["warnings"]} <= {"train_size"}


def test_dataset_problems_grader_noise_and_disagreement(lookup_files, tmp_path):
    rows = list(load_dataset(lookup_files["valid"]))
    # duplicates and leakage, reported with file lines
    train_path = tmp_path / "train.jsonl"
    lines = lookup_files["valid"].read_text().splitlines()
    train_path.write_text("\n".join(lines[:3] + lines[:1] + [lines[10]]) + "\n")
    train = list(load_dataset(train_path))
    d = dataset_problems(train, rows)
    assert d["train_duplicates"] == [{"line": 4, "duplicate_of_line": 1}]
    assert [o["valid_line"] for o in d["overlap"]] == [1, 2, 3, 11] and d["overlap_share"] == pytest.approx(4 / 24)
    # a noisy grader: re-grades differ on a third of the samples
    trajs, _ = graded(rows, honest, grader=EXACT, holdouts=(), samples=3)
    again = {t.trace_id: (1 - t.reward if t.sample_index == 2 else t.reward) for t in trajs}
    st = assess_split(trajs, lo=0, hi=1, regrade=again)
    assert st["nondeterminism"] == pytest.approx(1 / 3) and st["regrade_max_abs_diff"] == 1.0
    # a holdout that disagrees with the reward (ρ < 0.8) is a warning
    trajs2, _ = graded(rows, lambda r, k: "ANSWER: " + ", ".join(lt.COLORS) if k else r.item["answer"],
                       grader={"type": "python_function", "name": "loophole", "function": "test_monitors:loophole"},
                       holdouts=(EXACT,), samples=4)
    st2 = assess_split(trajs2, lo=0, hi=1, regrade={})
    assert st2["agreement"]["exact"]["rho"] is None  # the loophole pays 1 everywhere
    nogo, warn = verdict({"valid": st, "train": st2}, d, CheckThresholds(), has_valid=True)
    codes = [r["code"] for r in nogo]
    assert "grader_nondeterministic" in codes and "train_valid_overlap" in codes and "no_baseline" not in codes
    assert "train_duplicates" in {w["code"] for w in warn}
    assert "line 4 = line 1" in next(w for w in warn if w["code"] == "train_duplicates")["message"]


def test_bad_arguments_are_clear(tmp_path, tiny_model, small_files):
    with pytest.raises(ValueError, match="samples must be ≥ 2"):
        run_check(_cfg(tmp_path, tiny_model, small_files, EXACT), samples=1)


def test_check_command_exit_codes(tmp_path, tiny_model, small_files):
    """`agentrft check CONFIG` (mounted with register): no-go exits 1 with the reason; a bad config exits 2."""
    import typer
    import yaml
    from typer.testing import CliRunner

    from agentrft.evals.cli import register

    top = typer.Typer()
    register(top)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(small_files["train"]),
        "validation_file": str(small_files["valid"]), "tools": ["lookup_task:lookup"], "grader": EXACT,
        "output_dir": str(tmp_path / "runs"), "hyperparameters": {"max_new_tokens": 8, "max_turns": 2}}))
    r = CliRunner().invoke(top, ["check", str(conf), "--samples", "2", "--max-items", "3", "--no-progress",
                                 "--out", str(tmp_path / "rep")])
    assert r.exit_code == 1, r.output
    assert "no_baseline" in r.output and (tmp_path / "rep" / "report.md").exists()
    conf.write_text(yaml.safe_dump({"model": "m", "training_file": "t.jsonl"}))
    r = CliRunner().invoke(top, ["check", str(conf)])
    assert r.exit_code == 2 and "grader" in r.output and "Traceback" not in r.output
