"""Model graders, the endpoint grader and the embeddings backend against real HTTP servers on 127.0.0.1.

The judge is a small deterministic OpenAI-compatible server (``/v1/chat/completions``, ``/v1/embeddings``)
and a grading service (``/grade``), run in a thread for the module; nothing is mocked."""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentrft.graders import GraderSpecError, build_grader
from agentrft.graders import endpoint as endpoint_mod
from agentrft.graders import model_graders
from agentrft.graders.base import sample_from_text
from agentrft.graders.text_similarity import similarity

STATE: dict = {"requests": [], "flaky": {}}


def judge_answer(body: dict) -> tuple[int, dict]:
    msgs = body["messages"]
    user = "\n".join(m["content"] for m in msgs if m["role"] == "user")
    system_last = msgs[-1]["content"]
    usage = {"prompt_tokens": sum(len(m["content"]) for m in msgs) // 4, "completion_tokens": 10,
             "total_tokens": sum(len(m["content"]) for m in msgs) // 4 + 10}

    def reply(content, refusal=None, finish="stop"):
        return 200, {"id": "x", "object": "chat.completion", "model": body["model"], "usage": usage,
                     "choices": [{"index": 0, "finish_reason": finish,
                                  "message": {"role": "assistant", "content": content, "refusal": refusal}}]}

    if "FAIL500" in user:
        return 500, {"error": "boom"}
    if "BADREQ" in user:
        return 400, {"error": {"message": "bad request"}}
    if "REFUSE" in user:
        return reply(None, refusal="I can't help with that.")
    if "FILTER" in user:
        return reply("", finish="content_filter")
    if "GARBAGE" in user:
        return reply("I think it is pretty good.")
    if "NOTNUM" in user:
        return reply(json.dumps({"steps": [], "result": "great"}))
    if "FENCED" in user:
        return reply("```json\n{\"steps\": [], \"result\": 0.7}\n```")
    m = re.search(r"SCORE=(-?[\d.]+)", user)
    if m:
        return reply(json.dumps({"steps": [{"description": "d", "conclusion": "c"}], "result": float(m.group(1))}))
    a = re.search(r"Answer: (.*)", user)
    r = re.search(r"Reference: (.*)", user)
    same = bool(a and r and a.group(1).strip() == r.group(1).strip())
    if "exactly one of" in system_last:
        return reply(json.dumps({"steps": [], "result": "correct" if same else "incorrect"}))
    return reply(json.dumps({"steps": [{"description": "compare", "conclusion": str(same)}],
                             "result": 1.0 if same else 0.3}))


def embed(text: str) -> list[float]:
    v = [0.0] * 16
    for w in re.findall(r"\w+", text.lower()):
        v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 16] += 1.0
    return v


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code: int, obj, raw: bytes | None = None, headers: dict | None = None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out on purpose (test_endpoint_timeout)
            pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(n))
        STATE["requests"].append({"path": self.path, "body": body, "headers": dict(self.headers),
                                  "t": time.monotonic(), "size": n})
        if self.path == "/v1/chat/completions":
            code, obj = judge_answer(body)
            return self._send(code, obj)
        if self.path == "/v1/embeddings":
            data = [{"index": i, "embedding": embed(t)} for i, t in enumerate(body["input"])]
            return self._send(200, {"data": data, "model": body["model"]})
        if self.path == "/grade":
            mode = body["item"].get("mode", "ok")
            tid = body["trace_id"]
            if mode == "ok":
                return self._send(200, {"score": len(body["sample"]["output_text"]) / 10, "why": "length"})
            if mode == "500":
                return self._send(500, {"error": "down"})
            if mode == "flaky":
                k = STATE["flaky"][tid] = STATE["flaky"].get(tid, 0) + 1
                return self._send(503 if k <= 2 else 200, {"score": 0.9})
            if mode == "404":
                return self._send(404, {"error": "no"})
            if mode == "big":
                return self._send(200, None, raw=b'{"score": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}')
            if mode == "noscore":
                return self._send(200, {"value": 1})
            if mode == "notjson":
                return self._send(200, None, raw=b"<html>")
            if mode == "slow":
                time.sleep(1.0)
                return self._send(200, {"score": 1})
        return self._send(404, {"error": "unknown path"})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture
def judge_env(server, monkeypatch):
    monkeypatch.setenv("AGENTRFT_JUDGE_BASE_URL", server + "/v1")
    monkeypatch.setenv("AGENTRFT_JUDGE_API_KEY", "sk-test")
    monkeypatch.setattr(model_graders.HTTPJudge, "BACKOFF", (0.01, 0.01, 0.01))
    monkeypatch.setattr(endpoint_mod, "BACKOFF", (0.01, 0.01, 0.01))
    STATE["requests"].clear()
    return server


def score_model(content, **kw):
    spec = {"type": "score_model", "name": "judge", "model": "judge-1",
            "input": [{"role": "system", "content": "You grade answers."},
                      {"role": "user", "content": content}],
            "sampling_params": {"temperature": 0, "seed": 7, "max_completions_tokens": 64}, **kw}
    return build_grader(spec)


def test_score_model_scores_and_sends_rendered_messages(judge_env):
    g = score_model("Answer: {{sample.output_text}}\nReference: {{item.ref}}", pass_threshold=0.5)
    r = g.grade(sample_from_text("Paris"), {"ref": "Paris"})
    assert r.score == 1.0 and r.passed is True and r.errors == {}
    assert r.metadata["steps"] == [{"description": "compare", "conclusion": "True"}]
    assert r.metadata["token_usage"]["completion_tokens"] == 10
    req = STATE["requests"][-1]
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "judge-1" and body["temperature"] == 0 and body["seed"] == 7
    assert body["max_completion_tokens"] == 64 and body["response_format"]["type"] == "json_schema"
    assert body["messages"][1] == {"role": "user", "content": "Answer: Paris\nReference: Paris"}
    r = g.grade(sample_from_text("Lyon"), {"ref": "Paris"})
    assert r.score == pytest.approx(0.3) and r.passed is False


@pytest.mark.parametrize("value,rng,expected", [(5, [0, 1], 1.0), (-2, [0, 1], 0.0), (5, [0, 10], 5.0),
                                                (0.5, [1, 7], 1.0)])
def test_score_model_range_clipping(judge_env, value, rng, expected):
    r = score_model(f"SCORE={value}", range=rng).grade(sample_from_text(""), {})
    assert r.score == expected and r.errors == {} and r.metadata["raw_result"] == value


@pytest.mark.parametrize(
    "content,flag",
    [("GARBAGE", "model_grader_parse_error"), ("NOTNUM", "model_grader_parse_error"),
     ("REFUSE", "model_grader_refusal_error"), ("FILTER", "model_grader_refusal_error"),
     ("FAIL500", "model_grader_server_error"), ("BADREQ", "model_grader_server_error"),
     ("{{ item.missing }}", "invalid_variable_error")],
)
def test_score_model_errors(judge_env, content, flag):
    n0 = len(STATE["requests"])
    r = score_model(content).grade(sample_from_text(""), {})
    assert r.score == 0.0 and r.errors == {flag: True}, r.metadata
    sent = len(STATE["requests"]) - n0
    assert sent == {"FAIL500": 4, "invalid_variable_error": 0}.get(content if content == "FAIL500" else flag, 1)


def test_fenced_json_is_accepted(judge_env):
    assert score_model("FENCED").grade(sample_from_text(""), {}).score == pytest.approx(0.7)


def test_unreachable_judge(monkeypatch):
    monkeypatch.setenv("AGENTRFT_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setattr(model_graders.HTTPJudge, "BACKOFF", (0.01, 0.01, 0.01))
    r = score_model("x").grade(sample_from_text(""), {})
    assert r.errors == {"model_grader_server_error": True} and "after 3 retries" in r.metadata["errors_detail"][0]


def test_label_model(judge_env):
    spec = {"type": "label_model", "name": "lab", "model": "judge-1",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Answer: {{sample.output_text}}"},
                                                   {"type": "input_text", "text": "Reference: {{item.ref}}"}]}],
            "labels": ["correct", "incorrect"], "passing_labels": ["correct"]}
    g = build_grader(spec)
    r = g.grade(sample_from_text("42"), {"ref": "42"})
    assert r.score == 1.0 and r.passed is True and r.metadata["label"] == "correct"
    r = g.grade(sample_from_text("41"), {"ref": "42"})
    assert r.score == 0.0 and r.passed is False and r.errors == {}
    # the judge picks a label outside the list -> parse error
    g2 = build_grader({**spec, "labels": ["yes", "no"], "passing_labels": ["yes"]})
    r = g2.grade(sample_from_text("42"), {"ref": "42"})
    assert r.errors == {"model_grader_parse_error": True}


@pytest.mark.parametrize(
    "change,needle",
    [({"passing_labels": ["maybe"]}, "grader.passing_labels"), ({"labels": []}, "grader.labels"),
     ({"input": []}, "grader.input"), ({"input": [{"role": "tool", "content": "x"}]}, "grader.input[0].role"),
     ({"sampling_params": {"temprature": 1}}, "grader.sampling_params.temprature")],
)
def test_label_model_validate(change, needle):
    spec = {"type": "label_model", "name": "lab", "model": "m", "input": [{"role": "user", "content": "x"}],
            "labels": ["a", "b"], "passing_labels": ["a"], **change}
    with pytest.raises(GraderSpecError, match=re.escape(needle)):
        build_grader(spec)


def test_score_model_range_validate():
    with pytest.raises(GraderSpecError, match="grader.range"):
        score_model("x", range=[1, 0])


def test_local_judge_hook():
    class Local:
        def __init__(self):
            self.seen = None

        def chat(self, messages, sampling_params):
            self.seen = (messages, sampling_params)
            return '{"result": 0.25, "steps": []}'

    j = Local()
    model_graders.register_judge("local-tiny", j)
    try:
        g = build_grader({"type": "score_model", "name": "s", "model": "local-tiny",
                          "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}],
                          "sampling_params": {"temperature": 0.5}})
        r = g.grade(sample_from_text("hi"), {})
        assert r.score == 0.25 and r.errors == {}
        assert j.seen[0][0] == {"role": "user", "content": "Rate hi"} and j.seen[1] == {"temperature": 0.5}
    finally:
        model_graders.register_judge("local-tiny", None)


# ---- endpoint -------------------------------------------------------------------------------------------
def endpoint(server, **kw):
    return build_grader({"type": "endpoint", "name": "ep", "url": server + "/grade", **kw})


def test_endpoint_scores_and_sends_contract_payload(judge_env, monkeypatch):
    monkeypatch.setenv("GRADER_TOKEN", "tok-123")
    g = endpoint(judge_env, headers={"Authorization": "Bearer ${GRADER_TOKEN}"}, pass_threshold=0.4)
    r = g.grade(sample_from_text("hello"), {"mode": "ok"}, trace_id="trace_abc")
    assert r.score == 0.5 and r.passed is True and r.metadata["endpoint"] == {"why": "length"}
    req = STATE["requests"][-1]
    assert set(req["body"]) == {"sample", "item", "trace_id"} and req["body"]["trace_id"] == "trace_abc"
    assert req["headers"]["Authorization"] == "Bearer tok-123"
    assert "tok-123" not in json.dumps(g.spec)  # the secret is not part of the grader (nor its version)


def test_endpoint_retries_then_succeeds(judge_env):
    r = endpoint(judge_env).grade(sample_from_text("x"), {"mode": "flaky"}, trace_id="trace_flaky")
    assert r.score == 0.9 and r.errors == {} and r.metadata["attempts"] == 3


@pytest.mark.parametrize("mode,needle,calls", [("500", "after 3 retries", 4), ("404", "HTTP 404", 1),
                                               ("big", "over the 1 MB limit", 1), ("noscore", "no numeric", 1),
                                               ("notjson", "not JSON", 1)])
def test_endpoint_failures_drop_the_rollout(judge_env, mode, needle, calls):
    n0 = len(STATE["requests"])
    r = endpoint(judge_env).grade(sample_from_text("x"), {"mode": mode}, trace_id="t")
    assert r.score == 0.0 and r.errors == {"unresponsive_reward_error": True}
    assert r.metadata["drop_rollout"] is True and needle in r.metadata["errors_detail"][0]
    assert len(STATE["requests"]) - n0 == calls


def test_endpoint_timeout(judge_env):
    r = endpoint(judge_env, timeout_s=0.2).grade(sample_from_text("x"), {"mode": "slow"}, trace_id="t")
    assert r.errors == {"unresponsive_reward_error": True} and "Timeout" in r.metadata["errors_detail"][0]


def test_endpoint_rate_limit(judge_env):
    import concurrent.futures as cf

    g = endpoint(judge_env, rate_limit=20)
    with cf.ThreadPoolExecutor(8) as ex:  # warm the client's connections first
        list(ex.map(lambda k: g.grade(sample_from_text("abc"), {"mode": "ok"}, trace_id=f"w{k}"), range(8)))
    n0 = len(STATE["requests"])
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda k: g.grade(sample_from_text("abc"), {"mode": "ok"}, trace_id=f"t{k}"), range(11)))
    assert all(r.score == pytest.approx(0.3) for r in rs)
    ts = sorted(q["t"] for q in STATE["requests"][n0:])
    assert len(ts) == 11 and ts[-1] - ts[0] >= 10 / 20 * 0.8  # 11 requests at 20/s span about 0.5 s


def test_endpoint_oversized_request_drops_trajectory(judge_env):
    sample = {**sample_from_text("hi"), "trajectory": {"messages": [{"content": "x" * (1024 * 1024)}]}}
    r = endpoint(judge_env).grade(sample, {"mode": "ok"}, trace_id="t")
    assert r.score == pytest.approx(0.2) and "trajectory left out" in r.metadata["note"]
    assert "trajectory" not in STATE["requests"][-1]["body"]["sample"]
    r = endpoint(judge_env).grade(sample_from_text("y" * (1024 * 1024 + 1)), {"mode": "ok"}, trace_id="t")
    assert r.errors == {"unresponsive_reward_error": True} and r.metadata["drop_rollout"]


def test_endpoint_validate():
    with pytest.raises(GraderSpecError, match="grader.url"):
        build_grader({"type": "endpoint", "url": "ftp://x"})
    with pytest.raises(GraderSpecError, match="grader.rate_limit"):
        build_grader({"type": "endpoint", "url": "http://x", "rate_limit": 0})


# ---- cosine through an OpenAI-compatible embeddings endpoint -------------------------------------------
def test_cosine_via_embeddings_endpoint(judge_env, monkeypatch):
    monkeypatch.setenv("AGENTRFT_EMBEDDINGS_BASE_URL", judge_env + "/v1")
    s, _ = similarity("cosine", "red apple pie", "apple pie red")
    assert s == pytest.approx(1.0)
    a, b = embed("red apple"), embed("red pear")
    expected = sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    assert similarity("cosine", "red apple", "red pear")[0] == pytest.approx(max(0.0, expected))
    assert STATE["requests"][-1]["path"] == "/v1/embeddings"
