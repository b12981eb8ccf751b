"""Both bundled environments: generated files pass the project's dataset validation, tool names line up,
and every grader JSON they ship resolves (python_function references import)."""

from __future__ import annotations

import json

import pytest

from agentrft.data import load_dataset
from agentrft.environments import ENVIRONMENTS
from agentrft.refs import load_callable
from agentrft.tools.registry import resolve_python_tool


def _python_refs(spec: dict) -> list[str]:
    if spec.get("type") == "multi":
        return [r for sub in spec["graders"].values() for r in _python_refs(sub)]
    return [spec["function"]] if spec.get("type") == "python_function" else []


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
def test_generated_files_fit_the_contract(name, tmp_path):
    env = ENVIRONMENTS[name]
    paths = env.generate(tmp_path, seed=1, n_train=30, n_valid=10)
    tools = {t.name for ref in env.tool_refs for t in resolve_python_tool(ref)}
    for split in ("train", "valid"):
        ds = load_dataset(paths[split], known_tools=tools)
        assert len(ds) == (30 if split == "train" else 10)
    assert len(load_dataset(paths["demos"], known_tools=tools, allow_demos=True)) == 30
    for line in paths["train"].read_text().splitlines():
        row = json.loads(line)
        assert [m["role"] for m in row["messages"]] == ["system", "user"]
        assert {t["function"]["name"] for t in row["tools"]} == tools
    assert json.loads(paths["grader"].read_text()) == env.grader
    for spec in [env.grader, env.safety_grader, *env.holdout_graders.values()]:
        for ref in _python_refs(spec):
            assert callable(load_callable(ref))
    assert env.safety_grader in env.grader["graders"].values()
    corpus = list(env.corpus(tmp_path))
    assert env.system_prompt in corpus and len(corpus) > 100


@pytest.mark.parametrize("name", sorted(ENVIRONMENTS))
@pytest.mark.parametrize(
    "kw, field",
    [({"n_train": 0}, "n_train"), ({"n_valid": -1}, "n_valid"), ({"wrong_frac": 1.5}, "wrong_frac"),
     ({"redundant_frac": -0.1}, "redundant_frac"), ({"n_demos": "5"}, "n_demos")],
)
def test_bad_generator_arguments_name_the_argument(name, kw, field, tmp_path):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ENVIRONMENTS[name].generate(tmp_path, **kw)
    assert not (tmp_path / "train.jsonl").exists()


def test_support_desk_customer_count_is_checked(tmp_path):
    with pytest.raises(ValueError, match="^n_customers:"):
        ENVIRONMENTS["support_desk"].generate(tmp_path, n_customers=3)
    # the smallest allowed database still yields every task kind
    paths = ENVIRONMENTS["support_desk"].generate(tmp_path, seed=0, n_train=80, n_valid=5, n_customers=10)
    kinds = {json.loads(line)["expected_action"] for line in paths["train"].read_text().splitlines()}
    assert kinds == {"refund", "deny", "status", "clarify"}


def test_efficiency_score_is_the_documented_line():
    from agentrft.environments.common import efficiency_score

    item = {"min_tool_calls": 1, "max_tool_calls": 5}
    got = [efficiency_score({"output_tools": [{}] * n}, item) for n in range(7)]
    assert got == [1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    traj = {"trajectory": {"tool_calls": [{"name": "grep"}] * 3}}
    assert efficiency_score(traj, {"min_tool_calls": 0, "max_tool_calls": 4}) == 0.25
    with pytest.raises(ValueError, match="item.min_tool_calls"):
        efficiency_score(traj, {})
    with pytest.raises(ValueError, match="must exceed"):
        efficiency_score(traj, {"min_tool_calls": 2, "max_tool_calls": 2})
