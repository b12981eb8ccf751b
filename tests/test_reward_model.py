"""Reward model: trajectories of the lookup task recorded in a real store (SQLite file and PostgreSQL) with the real shaped grader's scores;
``agentrft reward-model train`` fits a scoring head on the tiny base; the held-out rank correlation is reported and
checked; the ``reward_model`` grader scores new trajectories in the order the grader would, with holdout graders
recorded beside it."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

import distill_helpers as dh
import lookup_task
from pg_helpers import backend_store_url
from agentrft.graders import build_grader, grade_trajectories
from agentrft.graders.base import GraderSpecError
from agentrft.types import ToolCall, Trajectory, Turn

VARIANTS = ("right", "wrong", "redundant", "silent")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with dh.one_thread():
        yield


def make_traj(row: dict, index: int, variant: str, k: int) -> Trajectory:
    key = row["keys"][0]
    color = row["table"][key]
    msgs = [dict(m) for m in row["messages"]]
    turns = []
    n_calls = 2 if variant == "redundant" else 1
    for i in range(n_calls):
        c = ToolCall(call_id=f"c{index}-{k}-{i}", name="lookup", arguments=json.dumps({"key": key}),
                     output=f"{key} is {color}", turn_index=i)
        msgs += [{"role": "assistant", "content": "", "tool_calls": [c.as_openai()]},
                 {"role": "tool", "tool_call_id": c.call_id, "name": "lookup", "content": c.output}]
        turns.append(Turn(i, 0, 0, "", tool_calls=[c]))
    outcome = "completed"
    if variant == "silent":
        outcome = "max_turns"
    else:
        said = color if variant != "wrong" else next(c for c in lookup_task.COLORS if c != color)
        msgs.append({"role": "assistant", "content": f"ANSWER: {said}"})
        turns.append(Turn(n_calls, 0, 0, f"ANSWER: {said}"))
    return Trajectory(trace_id=f"t-{index}-{k}-{variant}", row_index=index, group_id=f"g{index}", sample_index=k,
                      messages=msgs, turns=turns, outcome=outcome)


def explorer_data(n_rows: int, seed: int):
    rng = random.Random(seed)
    rows = [lookup_task.make_row(rng, two_keys=False) for _ in range(n_rows)]
    trajs = [make_traj(r, i, v, k) for i, r in enumerate(rows) for k, v in enumerate(VARIANTS)]
    grader = build_grader(lookup_task.GRADER_SHAPED)
    grade_trajectories(trajs, {i: r for i, r in enumerate(rows)}, grader)
    return rows, trajs


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(request, tmp_path_factory):
    """A real SQLite file, or a fresh schema in the real PostgreSQL at 127.0.0.1:5432 (dropped after); module-scoped:
    the store's run is shared by this file's tests."""
    with backend_store_url("sqlite" if request.param == "sqlite" else "postgres", tmp_path_factory.mktemp("rm"),
                           prefix="agentrft_rm") as url:
        yield url


@pytest.fixture(scope="module")
def store_run(store_url):
    from agentrft.store import RunStore

    store = RunStore(store_url)
    run_id = store.create_run("explorer", {"note": "hand-built explorer trajectories"})
    rows, trajs = explorer_data(24, seed=3)
    store.record_step(run_id, 1, "train", {}, trajs)
    yield store, run_id, store_url
    store.close()


def test_train_validate_and_grade(store_run, tiny_model, tmp_path):
    from agentrft.cli import app

    store, run_id, url = store_run
    out = tmp_path / "rm"
    res = CliRunner().invoke(app, ["reward-model", "train", run_id, "--base", str(tiny_model), "--out", str(out),
                                   "--store", url, "--max-tokens", "256"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "Spearman rho held-out" in res.output
    meta = json.loads((out / "reward_model.json").read_text())
    v = meta["validation"]
    assert v["n_train"] + v["n_holdout"] == 96 and v["rows_holdout"] == 5  # rows, not trajectories, are held out
    assert v["spearman_holdout"] is not None and v["spearman_holdout"] > 0.6, v

    # the grader on fresh rows: the learned order follows the grader's (right > wrong/redundant > silent)
    rows, fresh = explorer_data(6, seed=99)
    rm = build_grader({"type": "reward_model", "name": "rm", "path": str(out)})
    exact = build_grader({**lookup_task.GRADER, "name": "exact"})
    grade_trajectories(fresh, {i: r for i, r in enumerate(rows)}, rm, holdouts={"exact": exact})
    by = {v: [t.reward for t in fresh if t.trace_id.endswith(v)] for v in VARIANTS}
    mean = {k: sum(x) / len(x) for k, x in by.items()}
    assert mean["right"] > mean["silent"] + 0.3, mean
    assert all(0.0 < t.reward < 1.0 for t in fresh)
    # guarded by holdout graders: recorded beside the learned reward, never part of it
    t = next(t for t in fresh if t.trace_id.endswith("wrong"))
    assert [g.grader_name for g in t.grades] == ["rm", "exact"]
    assert t.grades[1].metadata["holdout"] is True and t.grades[1].score == 0.0 and t.reward == t.grades[0].score


def test_reward_model_errors_are_named(store_run, tiny_model, tmp_path):
    from agentrft.rl.reward_model import RewardModelError, train_reward_model
    from agentrft.store import RunStore

    with pytest.raises(GraderSpecError, match="grader.path: .* does not exist"):
        build_grader({"type": "reward_model", "path": str(tmp_path / "nope")})
    with pytest.raises(GraderSpecError, match="grader.path: the reward model's directory is required"):
        build_grader({"type": "reward_model"})
    # a run whose trajectories all have the same label cannot teach a ranking
    store = RunStore(f"sqlite:///{tmp_path / 'one.db'}")
    rid = store.create_run("flat", {})
    rows, trajs = explorer_data(6, seed=5)
    trajs = [t for t in trajs if t.trace_id.endswith("silent")]
    store.record_step(rid, 1, "train", {}, trajs)
    with pytest.raises(RewardModelError, match="needs at least 4 training trajectories with differing labels"):
        train_reward_model(store, [rid], str(tiny_model), tmp_path / "rm")
    with pytest.raises(RewardModelError, match="--label"):
        train_reward_model(store, [rid], str(tiny_model), tmp_path / "rm", label="stars")
