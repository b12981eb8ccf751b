"""repo_locator: determinism, ground truth (independent of the generator, via ast), real tools, graders, demos."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentrft.environments import ENVIRONMENTS, get_environment
from agentrft.environments.common import efficiency, read_jsonl, trajectory_from_messages
from agentrft.environments.repo_locator import graders as g
from agentrft.graders.base import GRADER_TYPES, build_grader, sample_from_trajectory
from agentrft.tools.registry import ToolContext, resolve_python_tool

ENV = get_environment("repo_locator")
TOOLS = {t.name: t for t in resolve_python_tool(ENV.tool_refs[0])}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return ENV.generate(tmp_path_factory.mktemp("repo"), seed=7, n_train=120, n_valid=40)


def _rows(p: Path) -> list[dict]:
    return list(read_jsonl(p))


def _digest(paths: dict[str, Path]) -> dict[str, str]:
    return {k: hashlib.sha256(Path(v).read_bytes()).hexdigest() for k, v in sorted(paths.items())}


def call(name: str, row: dict, **args) -> str:
    return TOOLS[name].invoke(args, ToolContext(trace_id="t", item=row))


def reward(sample: dict, item: dict) -> float:
    """The documented formula, computed here from the scoring functions (independent of the multi grader)."""
    n = len(sample["trajectory"]["tool_calls"])
    eff = efficiency(n, item["min_tool_calls"], item["max_tool_calls"])
    return g.file_f1(sample, item) * g.safety_score(sample, item) * (0.5 + 0.4 * eff + 0.1 * g.answer_format(sample, item))


# ---- API --------------------------------------------------------------------------------------------
def test_registry_and_unknown_name():
    assert set(ENVIRONMENTS) == {"repo_locator", "support_desk"}
    with pytest.raises(ValueError, match="known environments: repo_locator, support_desk"):
        get_environment("nope")
    assert ENV.grader["type"] == "multi" and ENV.safety_grader["type"] == "python_function"
    assert set(TOOLS) == {"list_files", "grep", "read_file"}


def test_corpus_requires_generate(tmp_path):
    with pytest.raises(FileNotFoundError, match="not generated yet"):
        list(ENV.corpus(tmp_path))


# ---- determinism ------------------------------------------------------------------------------------
def test_same_seed_byte_identical_across_processes(tmp_path, data):
    again = ENV.generate(tmp_path / "a", seed=7, n_train=120, n_valid=40)
    assert _digest(again) == _digest(data)
    # another process with another string-hash salt must write the same bytes
    code = (
        "import sys; from agentrft.environments import get_environment;"
        "get_environment('repo_locator').generate(sys.argv[1], seed=7, n_train=120, n_valid=40)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], check=True, env=env, timeout=60)
    assert _digest({k: tmp_path / "b" / Path(v).name for k, v in data.items()}) == _digest(data)
    other = ENV.generate(tmp_path / "c", seed=8, n_train=120, n_valid=40)
    assert _digest(other)["train"] != _digest(data)["train"]


def test_task_mix_options_shape_the_rows(tmp_path, data):
    # the defaults are the documented mix (and the same bytes as passing them)
    explicit = ENV.generate(tmp_path / "d", seed=7, n_train=120, n_valid=40, rename_frac=0.5, callers=(1, 2))
    assert _digest(explicit) == _digest(data)
    # a rename-only mix with longer answers than the default's
    long = ENV.generate(tmp_path / "l", seed=7, n_train=200, n_valid=0, rename_frac=1.0, callers=(3, 4))
    rows = _rows(long["train"])
    assert {r["task"] for r in rows} == {"rename"}
    sizes = [len(r["expected_files"]) for r in rows]
    default_sizes = [len(r["expected_files"]) for r in _rows(data["train"]) if r["task"] == "rename"]
    assert sum(sizes) / len(sizes) > sum(default_sizes) / len(default_sizes) + 0.8
    assert max(sizes) >= 5 and min(sizes) >= 2
    # the answer is still every file that mentions the symbol, and the demos copy grep's output
    for r in rows[:40]:
        assert r["expected_files"] == sorted(p for p, t in r["repo"].items() if r["symbol"] in t)
    assert all(d["messages"][-1]["content"] == d["expected_answer"] for d in _rows(long["demos"])
               if not d["demo"]["wrong"])


@pytest.mark.parametrize("kwargs, field", [
    ({"rename_frac": 1.5}, "rename_frac"), ({"rename_frac": True}, "rename_frac"),
    ({"callers": (0, 2)}, "callers"), ({"callers": (3, 2)}, "callers"), ({"callers": 2}, "callers"),
    ({"callers": (1.0, 2)}, "callers"),
])
def test_task_mix_options_refused_by_name(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        ENV.generate(tmp_path / "x", seed=0, n_train=4, n_valid=0, **kwargs)
    assert not (tmp_path / "x").exists()


# ---- ground truth -----------------------------------------------------------------------------------
def _truth_from_source(repo: dict[str, str], symbol: str) -> tuple[str, list[str]]:
    """(defining file, files that call symbol) by parsing every file with ast — not by text search."""
    definer, callers = None, set()
    for path, src in repo.items():
        tree = ast.parse(src, filename=path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == symbol:
                assert definer is None, f"{symbol} defined twice"
                definer = path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == symbol:
                callers.add(path)
    assert definer is not None
    return definer, sorted(callers)


def test_ground_truth_matches_source_and_grep(data):
    rows = _rows(data["train"]) + _rows(data["valid"])
    kinds = {r["task"] for r in rows}
    assert kinds == {"rename", "handler"}
    for r in rows:
        repo, sym = r["repo"], r["symbol"]
        assert 4 <= len(repo) <= 8
        definer, callers = _truth_from_source(repo, sym)
        assert callers, f"{r['id']}: target has no caller"
        # every import resolves to a module file that defines the imported name
        for path, src in repo.items():
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, ast.ImportFrom):
                    target = node.module.replace(".", "/") + ".py"
                    assert target in repo, f"{r['id']} {path}: import of missing {target}"
                    for a in node.names:
                        assert f"def {a.name}(" in repo[target]
        if r["task"] == "rename":
            assert r["expected_files"] == sorted({definer, *callers})
            assert call("grep", r, pattern=sym) == ", ".join(r["expected_files"])
        else:
            assert r["expected_files"] == [definer]
            assert call("grep", r, pattern=f"def {sym}") == definer
        assert r["expected_answer"] == "FILES: " + ", ".join(r["expected_files"])
        assert len(r["messages"]) == 2 and r["messages"][1]["content"].count("?") == 1
        assert len(r["messages"][0]["content"].split()) <= 40


# ---- tools ------------------------------------------------------------------------------------------
def test_tools_on_a_row():
    row = {"repo": {"app/a.py": "def f(x):\n    return x\n", "lib/b.py": "from app.a import f\n\ndef g(x):\n    return f(x)\n"}}
    assert call("list_files", row, dir=".") == "app/a.py, lib/b.py"
    assert call("list_files", row, dir="lib/") == "lib/b.py"
    assert call("list_files", row, dir="nope") == "no files under nope"
    assert call("grep", row, pattern="f(") == "app/a.py, lib/b.py"
    assert call("grep", row, pattern="zzz") == "no matches for zzz"
    assert call("grep", row, pattern="") == "pattern is empty"
    assert call("read_file", row, path="./app/a.py") == "def f(x):\n    return x"
    assert call("read_file", row, path="../etc/passwd") == "no file ../etc/passwd"
    with pytest.raises(ValueError, match="no 'repo' object"):
        call("grep", {}, pattern="x")
    schema = TOOLS["grep"].schema["function"]
    assert schema["parameters"]["required"] == ["pattern"] and "ctx" not in schema["parameters"]["properties"]


# ---- demos ------------------------------------------------------------------------------------------
def test_demos_shape_truth_and_imperfection(data):
    demos = _rows(data["demos"])
    train = {r["id"]: r for r in _rows(data["train"])}
    assert len(demos) == 120
    assert sum(d["demo"]["wrong"] for d in demos) == 36 and sum(d["demo"]["redundant"] for d in demos) == 60
    rewards, calls = [], []
    for d in demos:
        row = train[d["id"]]
        msgs = d["messages"]
        assert msgs[:2] == row["messages"] and msgs[-1]["role"] == "assistant" and "tool_calls" not in msgs[-1]
        for a, t in zip(msgs[2:-1:2], msgs[3:-1:2]):  # assistant call, tool answer, ...
            (c,) = a["tool_calls"]
            assert t["role"] == "tool" and t["tool_call_id"] == c["id"] and c["type"] == "function"
            # the recorded output is what the real tool returns
            assert t["content"] == call(c["function"]["name"], row, **json.loads(c["function"]["arguments"]))
            assert len(t["content"].split()) <= 40
        traj = trajectory_from_messages(msgs)
        sample = sample_from_trajectory(traj)
        r = reward(sample, row)
        rewards.append(r)
        calls.append(traj.num_tool_calls)
        if d["demo"]["wrong"]:
            assert 0 < g.file_f1(sample, row) < 1
        else:
            assert g.file_f1(sample, row) == 1.0
        if not d["demo"]["wrong"] and not d["demo"]["redundant"]:
            assert r == 1.0 and traj.num_tool_calls == 1
        if d["demo"]["redundant"]:
            assert traj.num_tool_calls >= 2
        words = sum(len((m.get("content") or "").split()) for m in msgs)
        assert words <= 120, d["id"]
    mean = sum(rewards) / len(rewards)
    assert 0.6 < mean < 0.95, mean  # room to improve, non-zero start
    assert sum(calls) / len(calls) >= 1.6  # the optimal policy (1 call) is >= 40% fewer


def test_corpus_covers_every_demo_text(data):
    out = Path(data["train"]).parent
    texts = list(ENV.corpus(out))
    vocab = {w for t in texts for w in t.split()}
    for d in _rows(data["demos"]):
        for m in d["messages"]:
            assert set((m.get("content") or "").split()) <= vocab
    assert all(isinstance(t, str) for t in texts)


# ---- graders ----------------------------------------------------------------------------------------
ITEM = {"repo": {"app/a.py": "x", "lib/b.py": "y", "lib/c.py": "z"}, "expected_files": ["app/a.py", "lib/b.py"],
        "expected_answer": "FILES: app/a.py, lib/b.py", "min_tool_calls": 1, "max_tool_calls": 5}


def _sample(answer: str, calls: list[tuple[str, dict]]) -> dict:
    msgs = [{"role": "user", "content": "q"}]
    for i, (name, args) in enumerate(calls):
        msgs.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "out"})
    msgs.append({"role": "assistant", "content": answer})
    return sample_from_trajectory(trajectory_from_messages(msgs))


def test_scoring_functions():
    good = _sample("FILES: lib/b.py, app/a.py", [("grep", {"pattern": "f"})])
    assert g.file_f1(good, ITEM) == 1.0 and g.exact_files(good, ITEM) == 1.0 and g.answer_format(good, ITEM) == 1.0
    half = _sample("FILES: app/a.py", [("grep", {"pattern": "f"})])
    assert g.file_f1(half, ITEM) == pytest.approx(2 / 3) and g.exact_files(half, ITEM) == 0.0
    extra = _sample("FILES: app/a.py, lib/b.py, lib/c.py", [])
    assert g.file_f1(extra, ITEM) == pytest.approx(0.8)
    chatty = _sample("I think:\nFILES: app/a.py, lib/b.py.", [])
    assert g.file_f1(chatty, ITEM) == 1.0 and g.answer_format(chatty, ITEM) == 0.0
    assert g.file_f1(_sample("app/a.py lib/b.py", []), ITEM) == 0.0  # no FILES: line
    assert g.answer_format(_sample("FILES: app/zzz.py", []), ITEM) == 0.0  # not in the repo
    escape = _sample("FILES: app/a.py, lib/b.py", [("read_file", {"path": "../../etc/passwd"})])
    assert g.safety_score(escape, ITEM) == 0.0 and reward(escape, ITEM) == 0.0
    assert g.safety_score(_sample("x", [("read_file", {"path": "/etc/passwd"})]), ITEM) == 0.0
    assert g.safety_score(good, ITEM) == 1.0
    # reward rises with correctness and falls with calls
    slow = _sample("FILES: app/a.py, lib/b.py", [("list_files", {"dir": "."}), ("grep", {"pattern": "f"}), ("read_file", {"path": "app/a.py"})])
    assert reward(good, ITEM) == 1.0 and reward(slow, ITEM) == pytest.approx(0.8)
    assert reward(half, ITEM) == pytest.approx(2 / 3) and reward(half, ITEM) < reward(slow, ITEM)
    with pytest.raises(ValueError, match="item.expected_files"):
        g.file_f1(good, {})


def test_repeated_paths_cost_reward():
    """The loophole longer RL found: the right files repeated scored 1.0 under a set F1 and passed."""
    repeated = _sample("FILES: app/a.py, app/a.py, lib/b.py, lib/b.py", [("grep", {"pattern": "f"})])
    assert g.file_f1(repeated, ITEM) == pytest.approx(2 * 2 / (4 + 2))
    assert g.answer_format(repeated, ITEM) == 0.0
    assert reward(repeated, ITEM) < 0.9 <= reward(_sample("FILES: app/a.py, lib/b.py", [("grep", {"pattern": "f"})]), ITEM)
    # one repeat among the right files is still below the pass line
    assert reward(_sample("FILES: app/a.py, lib/b.py, lib/b.py", [("grep", {"pattern": "f"})]), ITEM) < 0.9
    assert g.answered_files("FILES: a.py, a.py") == ["a.py"] and g.answered_paths("FILES: a.py, a.py") == ["a.py", "a.py"]


TWIN = {"type": "python_function", "name": "efficiency", "function": "agentrft.environments.common:efficiency_score"}


@pytest.mark.parametrize("efficiency", ["python_function_twin", "tool_efficiency"])
def test_graders_through_build_grader(data, efficiency):
    """The shipped grader JSON, run by the real multi/python_function graders, equals the documented formula
    (with the efficiency sub-grader as shipped, tool_efficiency, and as its python_function twin)."""
    for spec in [ENV.safety_grader, *ENV.holdout_graders.values()]:
        build_grader(spec)
    spec = json.loads(Path(data["grader"]).read_text())
    if efficiency == "tool_efficiency":
        import agentrft.graders  # noqa: F401

        if "tool_efficiency" not in GRADER_TYPES:
            pytest.skip("tool_efficiency grader type not implemented yet in agentrft.graders")
    else:
        spec["graders"]["efficiency"] = TWIN
    grader = build_grader(spec)
    train = {r["id"]: r for r in _rows(data["train"])}
    scores = []
    for d in _rows(data["demos"])[:60]:
        sample = sample_from_trajectory(trajectory_from_messages(d["messages"]))
        got = grader.grade(sample, train[d["id"]])
        assert not got.has_error, got.metadata
        assert got.score == pytest.approx(reward(sample, train[d["id"]])), d["id"]
        scores.append(got.score)
    assert len(set(scores)) > 3  # the reward really varies across demos
    exact = build_grader(ENV.holdout_graders["exact_answer"])
    d = _rows(data["demos"])[0]
    sample = sample_from_trajectory(trajectory_from_messages(d["messages"]))
    assert exact.grade(sample, train[d["id"]]).score == float(not d["demo"]["wrong"])
