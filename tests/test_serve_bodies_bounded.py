"""The OpenAI-compatible server bounds JSON nesting like the tool server does (issue 14, class 5, re-probed): a body,
a tool call's arguments or a graders/run sample nested thousands deep was a RecursionError — a 500 with a traceback in
the server's log; now every endpoint answers 400 naming the bound. The dashboard shows such a stored string as text.
"""

from __future__ import annotations

import json

import httpx
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agentrft.serve.app import create_app  # noqa: E402
from agentrft.serve.config import ServeConfig  # noqa: E402
from agentrft.serve.server import BackgroundServer  # noqa: E402

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/fine_tuning/jobs", "/v1/feedback",
             "/v1/fine_tuning/alpha/graders/run", "/v1/fine_tuning/alpha/graders/validate"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("bounded-bodies")
    cfg = ServeConfig(model=str(tiny_model), model_name="m", store=f"sqlite:///{root / 'store.db'}", slots=2,
                      jobs={"workers": 0, "data_dir": str(root / "data")})
    app = create_app(cfg)
    with BackgroundServer(app) as srv:
        yield srv
    app.state.serve.close()


def _nest(depth: int, open_: str, close: str, leaf: str = "1") -> str:
    return open_ * depth + leaf + close * depth


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(ENDPOINTS), depth=st.integers(101, 20_000), kind=st.sampled_from(["list", "object"]),
       field=st.sampled_from(["messages", "grader", "prompt", "extra"]))
def test_a_deeply_nested_body_is_a_400_on_every_endpoint(server, path, depth, kind, field):
    inner = _nest(depth, "[", "]") if kind == "list" else _nest(depth, '{"a":', "}")
    body = '{"model":"m","' + field + '":' + inner + "}"
    r = httpx.post(server.url + path.removeprefix("/v1"), content=body.encode(),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, (path, r.status_code, r.text[:300])
    assert "nested more than 100 levels" in r.json()["error"]["message"]


def test_nested_tool_call_arguments_and_graders_run_sample(server):
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": _nest(5000, "[", "]")}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}]
    r = httpx.post(server.url + "/chat/completions", json={"model": "m", "messages": msgs, "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and "tool call arguments are nested" in r.json()["error"]["message"], r.text
    grader = {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": "x",
              "operation": "eq"}
    r = httpx.post(server.url + "/fine_tuning/alpha/graders/run",
                   json={"grader": grader, "model_sample": _nest(5000, "[", "]")}, timeout=60)
    assert r.status_code == 200, r.text  # a sample that is not a JSON object is graded as the text it is
    assert r.json()["reward"] == 0.0
    ok = httpx.post(server.url + "/chat/completions",
                    json={"model": "m", "messages": [{"role": "user", "content": json.dumps(json.loads(
                        _nest(90, "[", "]")))}], "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200, ok.text  # nesting inside a string is only text


def test_the_dashboard_shows_a_deeply_nested_stored_string_as_text():
    from agentrft.ui.app import _pretty

    deep = _nest(5000, "[", "]")
    assert _pretty(deep) == deep
    assert _pretty('{"a": [1, 2]}') == json.dumps({"a": [1, 2]}, indent=2)
