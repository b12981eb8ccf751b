"""`agentrft serve` through the official `openai` client against a real uvicorn server on loopback."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

import serve_helpers as h
from agentrft.serve.app import ServerState, create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer

TOKEN = "sekret-token"


@pytest.fixture(scope="module")
def tool_model(tiny_model, tmp_path_factory):
    return h.tool_model_dir(tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def server(tool_model, tmp_path_factory):
    store = tmp_path_factory.mktemp("serve-store") / "store.db"
    cfg = ServeConfig(model=str(tool_model), model_name="tool", store=f"sqlite:///{store}", token=TOKEN, slots=8,
                      max_body_bytes=64 * 1024, max_tokens_cap=256)
    app = create_app(cfg)
    with BackgroundServer(app) as srv:
        srv.state = app.state.serve
        yield srv
    app.state.serve.close()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)


def _chat(client, messages, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 60)
    return client.chat.completions.create(model="tool", messages=messages, **kw)


def test_list_models(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "tool"
    assert client.models.retrieve("tool").id == "tool"


def test_chat_with_tools_gives_structured_tool_calls_and_the_round_trip(client, server):
    raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.ONE, tools=h.TOOLS,
                                                           temperature=0, max_tokens=60)
    assert raw.headers["x-agentrft-checkpoint"] == "base:tool"
    r = raw.parse()
    assert r.system_fingerprint == "base:tool"
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in ch.message.tool_calls] == \
        [("lookup", {"key": "K3"})]
    assert ch.message.tool_calls[0].id.startswith("call_")
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the tool result round trip: the assistant message as the SDK returned it, then the tool's answer
    msgs = h.ONE + [ch.message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": ch.message.tool_calls[0].id, "content": "K3 is red"}]
    r2 = _chat(client, msgs, tools=h.TOOLS)
    assert r2.choices[0].message.content == "ANSWER: red"
    assert r2.choices[0].finish_reason == "stop"
    assert not r2.choices[0].message.tool_calls


def test_parallel_tool_calls(client):
    r = _chat(client, h.TWO, tools=h.TOOLS)
    calls = r.choices[0].message.tool_calls
    assert [json.loads(c.function.arguments)["key"] for c in calls] == ["K1", "K5"]
    assert len({c.id for c in calls}) == 2


def test_tool_choice_none_offers_no_tools(client, server):
    with_tools = _chat(client, h.ONE, tools=h.TOOLS, max_tokens=1, logprobs=True)
    without = _chat(client, h.ONE, tools=h.TOOLS, tool_choice="none", max_tokens=1, logprobs=True)
    # the prompt without the tools block is shorter: the template was not given the tools
    assert without.usage.prompt_tokens < with_tools.usage.prompt_tokens


def test_stream_with_tool_call_deltas_reassembled_by_the_sdk(client):
    with client.chat.completions.stream(model="tool", messages=h.TWO, tools=h.TOOLS, temperature=0, max_tokens=60,
                                        stream_options={"include_usage": True}) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert deltas, "arguments arrived as deltas"
    msg = final.choices[0].message
    assert [json.loads(c.function.arguments) for c in msg.tool_calls] == [{"key": "K1"}, {"key": "K5"}]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.completion_tokens > 0
    # same as the non-streamed answer
    plain = _chat(client, h.TWO, tools=h.TOOLS)
    assert [c.function.arguments for c in msg.tool_calls] == \
        [c.function.arguments for c in plain.choices[0].message.tool_calls]


def test_stream_text_matches_non_streamed(client):
    chunks = list(client.chat.completions.create(model="tool", messages=h.PLAIN, temperature=0, max_tokens=20,
                                                  stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _chat(client, h.PLAIN, max_tokens=20).choices[0].message.content == "hello there"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_n_and_seed(client):
    kw = dict(temperature=2.0, max_tokens=12, n=3, seed=7)
    odd = [{"role": "user", "content": "Tell me about K9 and the weather."}]  # untrained: a flat distribution
    a = _chat(client, odd, **kw)
    b = _chat(client, odd, **kw)
    assert len(a.choices) == 3 and [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1, "the n choices are sampled independently"
    c = _chat(client, odd, temperature=2.0, max_tokens=12, seed=8)
    assert c.choices[0].message.content != a.choices[0].message.content


def test_max_tokens_length_stop_and_logprobs(client):
    r = _chat(client, h.PLAIN, max_tokens=3, logprobs=True, top_logprobs=3)
    ch = r.choices[0]
    assert ch.finish_reason == "length" and r.usage.completion_tokens == 3
    assert len(ch.logprobs.content) == 3
    for t in ch.logprobs.content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy: the sampled token is the most likely
        assert abs(t.top_logprobs[0].logprob - t.logprob) < 1e-4
    assert "".join(t.token for t in ch.logprobs.content) == ch.message.content
    s = _chat(client, h.PLAIN, stop=["lo"])
    assert s.choices[0].message.content == "hel" and s.choices[0].finish_reason == "stop"
    r2 = _chat(client, h.PLAIN, max_completion_tokens=2)
    assert r2.usage.completion_tokens == 2


def test_errors_are_sdk_exceptions_of_the_right_class(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=h.PLAIN)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "missing"}})
    assert "missing" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, tool_choice="sometimes")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tool", messages=h.ONE, tool_choice="required")  # no tools
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="tool", messages=[{"role": "user", "content": "x" * 100_000}])
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tool", messages=h.PLAIN, max_tokens=100_000)
    assert e.value.body["code"] == "max_tokens_too_large"


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"model": "tool"}).encode(), "messages"),
    (json.dumps({"model": "tool", "messages": []}).encode(), "messages"),
    (json.dumps({"model": "tool", "messages": [{"role": "bot", "content": "x"}]}).encode(), "messages.0"),
    (json.dumps({"model": "tool", "messages": [{"role": "user", "content": "x"}], "n": "two"}).encode(), "n"),
    (json.dumps({"model": "tool", "messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode(),
     "temperature"),
    (json.dumps({"model": "tool", "messages": [{"role": "tool", "content": "x"}]}).encode(), "messages.0"),
    (json.dumps({"model": "tool", "messages": [{"role": "user", "content": "x"}],
                 "tools": [{"type": "function", "function": {"name": "bad name!"}}]}).encode(), "tools.0.function.name"),
    (json.dumps({"model": "tool", "messages": [{"role": "user", "content": "x"}], "stop": ["a"] * 5}).encode(), "stop"),
    # json accepts NaN/Infinity; a range check alone answered NaN with "should be less than or equal to 2"
    (b'{"model": "tool", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "temperature"),
    (b'{"model": "tool", "messages": [{"role": "user", "content": "x"}], "top_p": Infinity}', "top_p"),
])
def test_malformed_requests_are_400_never_500(server, body, param):
    r = httpx.post(server.url + "/chat/completions", content=body,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] is not None and err["param"].startswith(param), err
    if b"NaN" in body or b"Infinity" in body:
        assert "finite" in err["message"], err
    assert "Traceback" not in r.text


def test_the_dashboard_is_mounted_under_ui_behind_the_servers_token(server, client):
    """``agentrft serve`` with a store serves the dashboard at /ui, gated by the server's own token: a Bearer header,
    or the browser login (``?token=`` sets the dashboard's cookie); without it, 401 — never the pages."""
    _chat(client, [{"role": "user", "content": "hello"}], max_tokens=4)  # a traced request, so the store is not empty
    assert httpx.get(server.base_url + "/ui/").status_code == 401
    assert httpx.get(server.base_url + "/ui/?token=wrong", follow_redirects=False).status_code == 401
    r = httpx.get(server.base_url + "/ui/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "<html" in r.text.lower() and "runs" in r.text.lower()
    with httpx.Client(base_url=server.base_url, follow_redirects=True) as browser:  # the cookie login
        r = browser.get(f"/ui/?token={TOKEN}")
        assert r.status_code == 200 and "<html" in r.text.lower()
        assert browser.get("/ui/registry").status_code == 200  # the cookie carries on, no header


def test_unknown_route_missing_token_and_health(server):
    r = httpx.get(server.url + "/nothing", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.base_url + "/health").json()["status"] == "ok"  # no token needed
    r = httpx.get(server.url + "/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 405 and "error" in r.json()


def test_sixteen_concurrent_clients_all_answered_and_traced(server, client):
    server.state.traces.flush()
    before = len(server.state.store.traces())

    def one(i: int):
        c = openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=300)
        msgs = h.ONE if i % 2 == 0 else h.PLAIN
        return c.chat.completions.create(model="tool", messages=msgs, tools=h.TOOLS if i % 2 == 0 else None,
                                         temperature=0 if i % 4 < 2 else 1.0, seed=i, max_tokens=30,
                                         extra_headers={"X-Trace-Id": f"conv-{i}"}, user=f"u{i}",
                                         metadata={"i": str(i)})

    results = h.concurrently(16, one)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    assert len(results) == 16
    for i, r in results.items():
        if i % 4 == 0:  # greedy with tools: the trained call
            assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"key": "K3"}
        if i % 4 == 1:
            assert r.choices[0].message.content == "hello there"
    server.state.traces.flush()
    traces = server.state.store.traces()
    assert len(traces) == before + 16
    t5 = server.state.store.traces(trace_id="conv-5")
    assert len(t5) == 1 and t5[0]["user"] == "u5" and t5[0]["metadata"] == {"i": "5"}
    assert t5[0]["completion_tokens"] == results[5].usage.completion_tokens
    t4 = server.state.store.traces(trace_id="conv-4")[0]
    assert t4["tool_calls"][0]["function"]["name"] == "lookup" and t4["tools"][0]["function"]["name"] == "lookup"
    assert t4["checkpoint_id"] == "base:tool" and t4["latency_s"] > 0 and t4["messages"][1]["content"] == "What color is K3?"


def test_trace_id_is_returned(client):
    raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.PLAIN, max_tokens=2)
    assert raw.headers["x-trace-id"].startswith("trace_")
    raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.PLAIN, max_tokens=2,
                                                           extra_headers={"X-Trace-Id": "mine"})
    assert raw.headers["x-trace-id"] == "mine"


def test_client_disconnect_frees_the_slot(server):
    worker = server.state.manager.base
    with httpx.Client(timeout=60) as hc:
        with hc.stream("POST", server.url + "/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                       json={"model": "tool", "messages": h.PLAIN, "temperature": 2.0, "max_tokens": 256,
                             "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and worker.active() > 0:
                    break  # a slot is decoding our request; hang up
    deadline = time.monotonic() + 60
    while worker.active() > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.active() == 0
    assert server.state.metrics.generated  # it did decode before the hang-up


def test_metrics_in_prometheus_text(server, client):
    _chat(client, h.PLAIN, max_tokens=2)
    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'agentrft_requests_total{endpoint="chat.completions",model="tool",status="200"}' in text
    assert "agentrft_request_latency_seconds_bucket" in text and "agentrft_queue_depth 0" in text
    assert "agentrft_loaded_adapters 0" in text and "agentrft_completion_tokens_total" in text


def test_completions_token_ids_and_text(client, server):
    tok = server.state.manager.base.tok
    prompt = server.state.manager.base.renderer.prompt_ids(h.PLAIN, None)
    r = client.completions.create(model="tool", prompt=prompt, max_tokens=8, temperature=0, logprobs=2,
                                  extra_body={"return_token_ids": True})
    ch = r.choices[0]
    d = ch.model_dump()
    assert d["prompt_token_ids"] == prompt
    ids = d["token_ids"]
    assert tok.decode(ids[:-1]) == ch.text == "hello there" and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(ch.logprobs.token_logprobs) == len(ids) and all(lp <= 0 for lp in ch.logprobs.token_logprobs)
    assert len(ch.logprobs.top_logprobs[0]) == 2
    text = tok.decode(prompt)
    r2 = client.completions.create(model="tool", prompt=text, max_tokens=8, temperature=0)
    assert r2.choices[0].text == "hello there"
    r3 = client.completions.create(model="tool", prompt=[prompt, prompt], max_tokens=8, temperature=0)
    assert [c.text for c in r3.choices] == ["hello there"] * 2
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tool", prompt=[10**6], max_tokens=2)


def test_rate_limit_and_bind_refusal(server, tool_model):
    from agentrft.config import ConfigError
    from agentrft.serve.config import check_bind

    cfg = ServeConfig(model=str(tool_model), model_name="tool", rate_limit_tpm=400, record_traces=False)
    state = ServerState(cfg, manager=server.state.manager)
    with BackgroundServer(create_app(cfg, state=state)) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0)
        c.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, max_tokens=200, temperature=0)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, max_tokens=200, temperature=0)
        assert int(e.value.response.headers["retry-after"]) >= 1
    with pytest.raises(ConfigError, match="token"):
        check_bind(ServeConfig(model="m", host="0.0.0.0"))
    check_bind(ServeConfig(model="m", host="0.0.0.0", token="t"))
    check_bind(ServeConfig(model="m", host="::1"))


def test_stream_logprobs_match_non_streamed(client):
    kw = dict(model="tool", messages=h.PLAIN, temperature=0, max_tokens=20, logprobs=True)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    plain = client.chat.completions.create(**kw).choices[0].logprobs.content
    assert [t.token for t in streamed] == [t.token for t in plain]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in plain], abs=1e-6)


def test_tool_choice_required_and_named_start_the_turn_as_a_call(client, server):
    renderer = server.state.manager.base.renderer
    free = _chat(client, h.ONE, tools=h.TOOLS)
    named = _chat(client, h.ONE, tools=h.TOOLS, tool_choice={"type": "function", "function": {"name": "lookup"}})
    prefix = renderer.dialect.forced_prefix("lookup")
    assert prefix.startswith("<tool_call>") and '"lookup"' in prefix
    assert named.usage.prompt_tokens == free.usage.prompt_tokens + len(renderer.encode(prefix))
    assert [(c.function.name, json.loads(c.function.arguments)) for c in named.choices[0].message.tool_calls] == \
        [("lookup", {"key": "K3"})]
    # after the tool result the model answers in text; "required" starts the turn as a call instead
    first = free.choices[0].message
    msgs = h.ONE + [first.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "K3 is red"}]
    assert _chat(client, msgs, tools=h.TOOLS).choices[0].message.content == "ANSWER: red"
    forced = _chat(client, msgs, tools=h.TOOLS, tool_choice="required", max_tokens=30).choices[0].message
    assert forced.tool_calls or (forced.content or "").startswith("<tool_call>")  # a call (well-formed or not)


def test_content_parts_developer_role_and_limits(client, server):
    parts = [{"role": "developer", "content": [{"type": "text", "text": h.SYSTEM}]},
             {"role": "user", "content": [{"type": "text", "text": "What color "}, {"type": "text", "text": "is K3?"}]}]
    r = _chat(client, parts, tools=h.TOOLS)
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"key": "K3"}  # rendered like ONE
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, h.PLAIN, n=17)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:  # a tool call whose arguments are not a JSON object
        _chat(client, h.ONE + [{"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "not json"}}]}])
    assert "arguments" in e.value.message
    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'agentrft_requests_total{endpoint="chat.completions",model="",status="400"}' in text


def test_refused_requests_are_traced_too(client, server):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=h.PLAIN, extra_headers={"X-Trace-Id": "refused-1"},
                                       user="zed")
    server.state.traces.flush()
    (t,) = server.state.store.traces(trace_id="refused-1")
    assert t["status"] == 404 and "nope" in t["error"] and t["user"] == "zed" and t["messages"][0]["content"]


def test_parallel_tool_calls_false_keeps_one_call(client):
    r = _chat(client, h.TWO, tools=h.TOOLS, parallel_tool_calls=False)
    assert [json.loads(c.function.arguments) for c in r.choices[0].message.tool_calls] == [{"key": "K1"}]
    with client.chat.completions.stream(model="tool", messages=h.TWO, tools=h.TOOLS, temperature=0, max_tokens=60,
                                        parallel_tool_calls=False) as s:
        for _ in s:
            pass
        calls = s.get_final_completion().choices[0].message.tool_calls
    assert [json.loads(c.function.arguments) for c in calls] == [{"key": "K1"}]


def test_stream_never_sends_text_past_a_stop_string(client):
    for stop in (["lo"], ["o t"], ["ere"]):
        chunks = list(client.chat.completions.create(model="tool", messages=h.PLAIN, temperature=0, max_tokens=20,
                                                      stop=stop, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == _chat(client, h.PLAIN, stop=stop).choices[0].message.content == "hello there".split(stop[0])[0]


def test_a_malformed_tool_call_comes_back_as_content_and_is_counted(client, server):
    """A call cut off before its closing tag (here by max_tokens) does not parse: the text is returned whole as
    content, with no tool_calls, and agentrft_malformed_tool_calls_total counts it — streamed or not."""
    def counted() -> int:
        text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        line = [x for x in text.splitlines() if x.startswith('agentrft_malformed_tool_calls_total{model="tool"}')]
        return int(line[0].split()[-1]) if line else 0

    before = counted()
    r = _chat(client, h.ONE, tools=h.TOOLS, max_tokens=5)
    ch = r.choices[0]
    assert ch.message.content.startswith("<tool_call>") and not ch.message.tool_calls
    assert ch.finish_reason == "length"
    assert counted() == before + 1
    chunks = list(client.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, temperature=0,
                                                  max_tokens=5, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ch.message.content and not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert counted() == before + 2


SCHEMA = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}


def test_response_format_is_validated_and_each_answer_is_checked_against_it(client, server):
    """Decoding is not constrained, so the server says per choice whether the answer conforms
    (``response_format_errors``), in the answer, the stream's last chunk, the trace and the metrics; a schema that is
    not a JSON schema is a 400."""
    rf = {"type": "json_schema", "json_schema": {"name": "color", "schema": SCHEMA}}
    raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.PLAIN, temperature=0,
                                                           max_tokens=20, response_format=rf,
                                                           extra_headers={"X-Trace-Id": "rf-1"})
    ch = raw.parse().choices[0]
    assert ch.message.content == "hello there"  # the tiny model does not write JSON: reported, not hidden
    assert ch.model_extra["response_format_errors"][0].startswith("not JSON")
    chunks = list(client.chat.completions.create(model="tool", messages=h.PLAIN, temperature=0, max_tokens=20,
                                                  response_format={"type": "json_object"}, stream=True))
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "stop" and last.model_extra["response_format_errors"][0].startswith("not JSON")
    plain = _chat(client, h.PLAIN, max_tokens=20)  # no response_format: nothing to report
    assert "response_format_errors" not in plain.choices[0].model_extra
    tc = _chat(client, h.ONE, tools=h.TOOLS, response_format=rf)  # a tool-call turn is not a formatted answer
    assert tc.choices[0].message.tool_calls and "response_format_errors" not in tc.choices[0].model_extra
    server.state.traces.flush()
    (t,) = server.state.store.traces(trace_id="rf-1")
    assert t["params"]["response_format"] == rf and t["choices"][0]["response_format_errors"]
    text = httpx.get(server.base_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert 'agentrft_response_format_violations_total{model="tool"} 2' in text
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, h.PLAIN, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"color": {"type": "colour"}}}}})
    assert e.value.body["param"].startswith("response_format") and "properties/color/type" in e.value.message


def test_response_format_answer_check():
    from agentrft.serve.protocol import ResponseFormat
    from agentrft.serve.response_format import AnswerCheck

    schema = AnswerCheck.of(ResponseFormat(type="json_schema", json_schema={"name": "c", "schema": SCHEMA}))
    assert schema.errors('{"color": "red"}') == []
    assert schema.errors('{"colour": "red"}') == ["(root): 'color' is a required property"]
    assert schema.errors('{"color": 3}') == ["color: 3 is not of type 'string'"]
    obj = AnswerCheck.of(ResponseFormat(type="json_object"))
    assert obj.errors('{"a": 1}') == [] and obj.errors("[1]") == ["not a JSON object (a list)"]
    assert obj.errors(None)[0].startswith("not JSON")
    assert obj.errors("[" * 100_000) == ["not JSON this server reads: nested too deeply"]  # no RecursionError
    assert AnswerCheck.of(ResponseFormat(type="text")) is None and AnswerCheck.of(None) is None


def test_a_template_that_cannot_render_the_messages_is_a_422(tool_model, tmp_path):
    """Real templates refuse some conversations (a system message that is not first, roles out of order): that is
    a 422 naming the template's reason, never a 500."""
    import shutil

    model = tmp_path / "strict"
    shutil.copytree(tool_model, model)
    cfg_path = model / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    guard = ("{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
             "{{ raise_exception('System message must be at the beginning.') }}{% endif %}{% endfor %}")
    if "chat_template" in tc:
        tc["chat_template"] = guard + tc["chat_template"]
        cfg_path.write_text(json.dumps(tc))
    else:
        jinja = model / "chat_template.jinja"
        jinja.write_text(guard + jinja.read_text())
    app = create_app(ServeConfig(model=str(model), model_name="strict", slots=2, record_traces=False))
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            assert c.chat.completions.create(model="strict", messages=h.ONE, max_tokens=2).choices  # renders
            with pytest.raises(openai.UnprocessableEntityError) as e:
                c.chat.completions.create(model="strict", messages=h.PLAIN + [{"role": "system", "content": "late"}],
                                          max_tokens=2)
            assert e.value.body["param"] == "messages" and "System message must be at the beginning" in e.value.message
            assert "Traceback" not in e.value.response.text
    finally:
        app.state.serve.close()
