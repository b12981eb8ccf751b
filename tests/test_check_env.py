"""``check`` on the bundled repo_locator environment (slow: real rollouts with the environment's tools).

Broken setups get no-go with the right reason: a grader that always returns 1 (no headroom) and a model that
never solves the task (the unwarmed tiny model on the environment's exact-answer grader: no baseline).

The "go" case needs a warm-started model that actually solves some tasks. A tiny model after a short SFT
(5 epochs × 48 demos, 15 optimizer steps) does not: measured, it scored 0 on every sample and check correctly
said no-go (no_baseline). The go test therefore uses the quickstart's warm-started model when one exists
(``AGENTRFT_QUICKSTART`` or ``runs/quickstart`` with ``sft/`` and ``data/``) and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agentrft.config import RunConfig
from agentrft.environments import get_environment
from agentrft.evals.check import run_check
from agentrft.models.tiny import build_tiny_model

pytestmark = pytest.mark.slow


def always_one(sample, item):
    return 1.0


def _cfg(out, env, train, valid, model, grader):
    return RunConfig(model=str(model), training_file=str(train), validation_file=str(valid),
                     tools=env.tool_refs, grader=grader, holdout_graders=env.holdout_graders,
                     output_dir=str(out / "runs"), base_dir=str(out),
                     hyperparameters={"max_new_tokens": 48, "max_turns": 3, "max_episode_steps": 3,
                                      "max_context_tokens": 1024, "seed": 0})


def test_bundled_environment_broken_setups_are_no_go(tmp_path):
    env = get_environment("repo_locator")
    paths = env.generate(tmp_path / "data", seed=0, n_train=12, n_valid=6)
    tiny = build_tiny_model(list(env.corpus(tmp_path / "data")), tmp_path / "tiny")
    always = {"type": "python_function", "name": "always_one", "function": "test_check_env:always_one"}
    rep = run_check(_cfg(tmp_path, env, paths["train"], paths["valid"], tiny, always), samples=2, max_items=4,
                    record=False)
    assert rep["verdict"] == "no-go" and [r["code"] for r in rep["reasons"]] == ["no_headroom"]
    rep = run_check(_cfg(tmp_path, env, paths["train"], paths["valid"], tiny, env.holdout_graders["exact_answer"]),
                    samples=2, max_items=4, record=False)
    assert rep["verdict"] == "no-go" and [r["code"] for r in rep["reasons"]] == ["no_baseline"]


def test_bundled_environment_warm_model_is_go(tmp_path):
    qs = Path(os.environ.get("AGENTRFT_QUICKSTART", Path(__file__).parent.parent / "runs" / "quickstart"))
    if not (qs / "sft").exists() or not (qs / "data" / "train.jsonl").exists():
        pytest.skip(f"no warm-started quickstart model under {qs} (run `agentrft quickstart` first)")
    env = get_environment("repo_locator")
    grader = json.loads((qs / "data" / "grader.json").read_text())
    rep = run_check(_cfg(tmp_path, env, qs / "data" / "train.jsonl", qs / "data" / "valid.jsonl", qs / "sft", grader),
                    samples=4, max_items=12, out_dir=tmp_path / "go")
    v = rep["splits"]["valid"]
    assert rep["verdict"] == "go", rep["reasons"]
    assert 0 < v["reward_mean"] < 1 and v["within_item_variance"] > 0 and v["grader_error_rate"] == 0.0
