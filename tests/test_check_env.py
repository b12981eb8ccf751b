"""``check`` on a bundled environment: a warm-started model on repo_locator says go; the same setup with the
environment's grader replaced by one that always returns 1 says no-go (no headroom), and the unwarmed model on
the strict exact-answer grader says no-go (no baseline). Slow: SFT of the tiny model on the environment's demos."""

from __future__ import annotations

import pytest

from agentrft.config import RunConfig
from agentrft.environments import get_environment
from agentrft.evals.check import run_check
from agentrft.models.tiny import TinyModelSpec, build_tiny_model
from agentrft.rl.sft import run_sft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env_setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("envcheck")
    env = get_environment("repo_locator")
    paths = env.generate(out / "data", seed=0, n_train=48, n_valid=16)
    tiny = build_tiny_model(list(env.corpus(out / "data")), out / "tiny", TinyModelSpec(vocab_size=640))
    run_sft(str(tiny), paths["demos"], out / "warm", epochs=5, batch_size=16, learning_rate=3e-3, lora=None)
    return out, env, paths, tiny


def _cfg(out, env, paths, model, grader):
    return RunConfig(model=str(model), training_file=str(paths["train"]), validation_file=str(paths["valid"]),
                     tools=env.tool_refs, grader=grader, holdout_graders=env.holdout_graders,
                     output_dir=str(out / "runs"), base_dir=str(out),
                     hyperparameters={"max_new_tokens": 64, "max_turns": 5, "max_episode_steps": 5,
                                      "max_context_tokens": 1024, "seed": 0})


def test_bundled_environment_go_and_broken_setups_no_go(env_setup):
    out, env, paths, tiny = env_setup
    rep = run_check(_cfg(out, env, paths, out / "warm", env.grader), samples=4, max_items=12,
                    out_dir=out / "go")
    v = rep["splits"]["valid"]
    print("repo_locator check:", rep["verdict"], {k: v[k] for k in ("reward_mean", "floor_share", "ceiling_share",
                                                                      "zero_variance_share", "within_item_variance")})
    assert rep["verdict"] == "go", rep["reasons"]
    assert 0 < v["reward_mean"] < 1 and v["within_item_variance"] > 0
    assert v["nondeterminism"] == 0.0 and v["grader_error_rate"] == 0.0

    always = {"type": "python_function", "name": "always_one", "function": "test_check_env:always_one"}
    rep = run_check(_cfg(out, env, paths, out / "warm", always), samples=2, max_items=6, record=False)
    assert rep["verdict"] == "no-go" and [r["code"] for r in rep["reasons"]] == ["no_headroom"]

    rep = run_check(_cfg(out, env, paths, tiny, env.holdout_graders["exact_answer"]), samples=2, max_items=6,
                    record=False)
    assert rep["verdict"] == "no-go" and [r["code"] for r in rep["reasons"]] == ["no_baseline"]


def always_one(sample, item):
    return 1.0
