"""Both bundled environments: generated files pass the project's dataset validation, tool names line up,
and every grader JSON they ship resolves (python_function references import)."""

from __future__ import annotations

import json

import pytest

from agentrft.data import load_dataset
from agentrft.environments import ENVIRONMENTS
from agentrft.graders.base import load_callable
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
