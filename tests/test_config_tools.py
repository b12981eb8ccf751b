"""Config validation messages and the tool router (in-process tools, their errors, scopes, approvals)."""

from __future__ import annotations

import threading
import time

import pytest

from agentrft.config import ConfigError, load_config, parse_config
from agentrft.tools.registry import ToolContext, make_tool, tool
from agentrft.tools.python_backend import PythonToolBackend
from agentrft.tools.router import ToolRouter, build_router
from agentrft.types import ToolCall

GRADER = {"type": "string_check", "name": "g", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"}


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_config({"model": "m", "training_file": "t.jsonl", "grader": GRADER,
                      "hyperparameters": {"group_size": 1, "batch_sise": 4, "lora": {"r": 0}}}, source="c.yaml")
    msg = str(e.value)
    assert "c.yaml: hyperparameters.group_size: Input should be greater than or equal to 2" in msg
    assert "hyperparameters.batch_sise: Extra inputs are not permitted" in msg
    assert "hyperparameters.lora.r" in msg
    with pytest.raises(ConfigError, match="training_file: Field required"):
        parse_config({"model": "m", "grader": GRADER})
    with pytest.raises(ConfigError, match="grader.type is required"):
        parse_config({"model": "m", "training_file": "t", "grader": {"name": "x"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ntraining_file: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_config(bad)
    g = tmp_path / "grader.json"
    g.write_text("{not json")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\ntraining_file: t.jsonl\ngrader: grader.json\n")
    with pytest.raises(ConfigError, match=r"grader: .*grader.json:1: not valid JSON"):
        load_config(cfg)


def test_config_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "g.json").write_text('{"type": "string_check", "name": "g", "input": "a", "reference": "a", "operation": "eq"}')
    c = tmp_path / "c.yaml"
    c.write_text("model: some/hf-id\ntraining_file: data/t.jsonl\ngrader: g.json\nstore: sqlite:///db/x.db\n")
    cfg = load_config(c)
    assert cfg.path(cfg.training_file) == tmp_path / "data/t.jsonl"
    assert cfg.store_url == "sqlite:///" + str(tmp_path / "db/x.db")
    assert cfg.model_path == "some/hf-id"  # not a local path: kept as a hub id
    assert cfg.grader["type"] == "string_check"


def test_schema_from_signature_and_docstring():
    def find(query: str, limit: int = 5, exact: bool | None = None, ctx: ToolContext | None = None) -> str:
        """Search the index.

        Args:
            query: What to look for.
            limit: At most this many hits.
        """
        return ""

    t = make_tool(find)
    p = t.schema["function"]["parameters"]
    assert t.schema["function"]["description"] == "Search the index."
    assert p["required"] == ["query"]
    assert p["properties"]["query"] == {"type": "string", "description": "What to look for."}
    assert p["properties"]["limit"] == {"type": "integer", "description": "At most this many hits.", "default": 5}
    assert "ctx" not in p["properties"] and t.ctx_param == "ctx"
    assert t.check_arguments({"query": 3}) == "argument 'query' should be string, got int"
    assert "missing required argument(s): query" in t.check_arguments({})


@tool(requires_approval=True)
def refund(order: str) -> str:
    """Refund an order.

    Args:
        order: Order id.
    """
    return f"refunded {order}"


def _router(**kw):
    def boom(x: str) -> str:
        raise RuntimeError("disk on fire")

    def slow(x: str) -> str:
        time.sleep(2)
        return "late"

    def data(x: str) -> dict:
        return {"x": x, "n": 1}

    tools = [make_tool(boom), make_tool(slow, timeout_s=0.2), make_tool(data), refund.__agentrft_tool__]
    return ToolRouter([PythonToolBackend(tools)], timeout_s=5, **kw)


def _call(name, args='{"x": "a"}'):
    return ToolCall(call_id="call_1", name=name, arguments=args)


def test_router_outcomes_become_messages_and_statuses():
    r = _router()
    ctx = ToolContext("trace_1", {})
    c = r.execute(_call("boom"), ctx)
    assert c.status == "error" and "disk on fire" in c.output
    c = r.execute(_call("slow"), ctx)
    assert c.status == "timeout" and "timed out after 0.2s" in c.output
    c = r.execute(_call("data"), ctx)
    assert c.status == "ok" and c.output == '{"x": "a", "n": 1}'
    assert c.meta["output_bytes"] == len(c.output) and len(c.meta["output_sha256"]) == 64
    c = r.execute(_call("nope"), ctx)
    assert c.status == "unknown_tool" and "Available tools: boom, data, refund, slow" in c.output
    c = r.execute(_call("data", "not json"), ctx)
    assert c.status == "bad_arguments"
    c = r.execute(_call("data", '{"x": "a"}'), ctx, allowed={"boom"})
    assert c.status == "refused" and "not allowed for this task" in c.output
    c = r.execute(_call("refund", '{"order": "O-1"}'), ctx)
    assert c.ok and c.meta["approval"] == {"approved": True, "reason": "policy: allow"}
    r.close()


def test_approval_deny_is_recorded():
    r = _router(approval="deny")
    c = r.execute(_call("refund", '{"order": "O-1"}'), ToolContext("t", {}))
    assert c.status == "refused" and c.meta["approval"]["approved"] is False
    assert "needs approval and it was denied" in c.output


def test_parallel_calls_of_a_turn_run_concurrently():
    """Two calls that can only finish if they overlap: each waits for the other to have started."""
    barrier = threading.Barrier(2, timeout=5)

    def meet(x: str) -> str:
        barrier.wait()
        return "met " + x

    r = ToolRouter([PythonToolBackend([make_tool(meet)])], timeout_s=10)
    ctx = ToolContext("t", {})
    futs = [r.submit(_call("meet", f'{{"x": "{i}"}}'), ctx, allowed=None, messages=[]) for i in range(2)]
    out = [f.result(timeout=10) for f in futs]
    assert [c.output for c in out] == ["met 0", "met 1"]


def test_build_router_errors_name_the_entry():
    with pytest.raises(ValueError, match=r"tools\[0\]: 'no_such_module:f': cannot import"):
        build_router(["no_such_module:f"], timeout_s=1, max_workers=1)
    with pytest.raises(ValueError, match=r"tools\[1\]: expected"):
        build_router(["lookup_task:lookup", {"what": 1}], timeout_s=1, max_workers=1)
