"""The flywheel turns once, for real: a served tiny tool model answers agentic conversations from the `openai` client
(tool calls, tool results, answers) on a live `agentrft serve`, users post feedback with labels, `traces export`
writes RFT rows and demonstrations from the store, `agentrft validate` accepts a run config over the rows, and
`agentrft train` (max_steps 2) trains on them and records its steps in a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

import serve_helpers as h
from agentrft.data import load_dataset
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer
from agentrft.store import RunStore
from agentrft.traces.export import ExportSpec, export

pytestmark = pytest.mark.slow  # a served model, two CLI subprocesses and a 2-step training run: ~1-2 min loaded

TABLE = {"K1": "blue", "K3": "red", "K5": "green"}
TOOL_MODULE = '''
from agentrft.tools.registry import tool

TABLE = {table!r}


@tool
def lookup(key: str) -> str:
    """Look up the color of a key.

    Args:
        key: The key, like K3.
    """
    return f"{{key}} is {{TABLE[key]}}" if key in TABLE else f"no key {{key}}"
'''


def _converse(client: openai.OpenAI, messages: list[dict], trace_id: str, tools: list | None) -> list[dict]:
    """The client's agent loop: call the model, run the tools it calls, until it answers (at most 3 turns)."""
    for _ in range(3):
        kw = {"tools": tools} if tools else {}
        r = client.chat.completions.create(model="tool", messages=messages, temperature=0, max_tokens=60,
                                           extra_headers={"X-Trace-Id": trace_id}, **kw)
        msg = r.choices[0].message
        messages = messages + [msg.model_dump(exclude_none=True)]
        if not msg.tool_calls:
            break
        for c in msg.tool_calls:
            key = json.loads(c.function.arguments).get("key")
            messages.append({"role": "tool", "tool_call_id": c.id,
                             "content": f"{key} is {TABLE[key]}" if key in TABLE else f"no key {key}"})
    return messages


def test_served_traces_become_a_dataset_that_trains(tiny_model, tmp_path_factory, tmp_path):
    tool_model = h.tool_model_dir(tiny_model, tmp_path_factory)
    store_url = f"sqlite:///{tmp_path / 'prod.db'}"
    cfg = ServeConfig(model=str(tool_model), model_name="tool", store=store_url, slots=4)
    app = create_app(cfg)
    with BackgroundServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
        one = _converse(client, h.ONE, "prod-1", h.TOOLS)
        two = _converse(client, h.TWO, "prod-2", h.TOOLS)
        _converse(client, [{"role": "user", "content": "Say hello. I am jo@example.com"}], "prod-3", None)
        assert one[-1]["content"] == "ANSWER: red" and two[-1]["content"] == "ANSWER: blue, green"
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            for tid, label in (("prod-1", "ANSWER: red"), ("prod-2", "ANSWER: blue, green")):
                r = c.post("/feedback", json={"trace_id": tid, "score": 1, "label": label, "actor": "qa"})
                assert r.status_code == 200, r.text
            assert c.post("/feedback", json={"trace_id": "prod-3", "score": 0}).status_code == 200
    app.state.serve.close()

    store = RunStore(store_url, mode="read")
    assert len(store.traces(model="tool")) == 5  # two requests per tool conversation, one for the greeting
    rows, demos = tmp_path / "rows.jsonl", tmp_path / "demos.jsonl"
    rep = export(store, ExportSpec(rows=str(rows), demos=str(demos), model="tool", status="ok", feedback="with",
                                   require_reference=True))
    store.close()
    assert (rep["selected"], rep["rows"], rep["demos"]) == (2, 2, 2), rep
    assert rep["skipped"] == {"a --reference-from value is missing": 1}  # prod-3 has a score but no label
    train_rows = load_dataset(rows)
    assert [r.item["reference"] for r in train_rows] == ["ANSWER: red", "ANSWER: blue, green"]
    assert [r.messages for r in train_rows] == [h.ONE, h.TWO] and train_rows[0].tool_names == ["lookup"]
    demo_rows = load_dataset(demos, allow_demos=True)
    assert [m["role"] for m in demo_rows[0].messages] == ["system", "user", "assistant", "tool", "assistant"]

    # the next job trains on them
    (tmp_path / "flywheel_tools.py").write_text(TOOL_MODULE.format(table=TABLE))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tool_model), "training_file": str(rows), "tools": ["flywheel_tools:lookup"],
        "grader": {"type": "string_check", "name": "answer", "input": "{{ sample.output_text }}",
                   "reference": "{{ item.reference }}", "operation": "eq"},
        "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "group_size": 2, "max_new_tokens": 24, "max_turns": 3,
                            "max_signal_free_steps": 0, "seed": 0, "lora": None}}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    v = subprocess.run([sys.executable, "-m", "agentrft.cli", "validate", str(config)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert v.returncode == 0 and "ok" in v.stdout, v.stdout + v.stderr
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "train", str(config), "--no-progress"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"2-step training on exported traces: {time.monotonic() - t0:.1f} s (loaded machine)")
    runs = RunStore(f"sqlite:///{tmp_path / 'runs' / 'agentrft.db'}", mode="read")
    (run,) = runs.list_runs()
    assert run["status"] == "succeeded"
    steps = sorted({m["step"] for m in runs.step_metrics(run["id"], split="train")})
    assert steps == [1, 2]
    trajs = runs.trajectories(run["id"], split="train")
    assert len(trajs) == 2 * 2 * 2 and all(t["reward"] is not None for t in trajs)
