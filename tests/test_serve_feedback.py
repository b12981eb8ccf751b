"""POST/GET /v1/feedback on a real `agentrft serve` on loopback: feedback on a conversation the server answered (the
`openai` client makes the request, httpx posts the verdict), stored in the run store; errors name the field."""

from __future__ import annotations

import httpx
import openai
import pytest

import serve_helpers as h
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer
from agentrft.store import RunStore

TOKEN = "fb-token"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tool_model = h.tool_model_dir(tiny_model, tmp_path_factory)
    store = tmp_path_factory.mktemp("fb-store") / "store.db"
    cfg = ServeConfig(model=str(tool_model), model_name="tool", store=f"sqlite:///{store}", token=TOKEN, slots=4)
    app = create_app(cfg)
    with BackgroundServer(app) as srv:
        srv.store_url = cfg.store
        yield srv
    app.state.serve.close()


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)


def test_feedback_on_a_served_conversation_is_stored_and_listed(server):
    client = openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)
    raw = client.chat.completions.with_raw_response.create(model="tool", messages=h.PLAIN, temperature=0,
                                                           max_tokens=8, extra_headers={"X-Trace-Id": "conv-fb-1"})
    assert raw.headers["x-trace-id"] == "conv-fb-1"
    request_id = raw.headers["x-request-id"]
    with _http(server) as c:
        # posted at once after the answer: the server's pending trace write is flushed before the lookup
        r = c.post("/feedback", json={"trace_id": "conv-fb-1", "score": 1, "comment": "good", "actor": "alice",
                                      "request_id": request_id})
        assert r.status_code == 200, r.text
        row = r.json()
        assert row["object"] == "feedback" and row["score"] == 1.0 and row["actor"] == "alice"
        assert row["request_id"] == request_id and row["id"] > 0 and row["created_at"]
        assert c.post("/feedback", json={"trace_id": "conv-fb-1", "label": "greeting_ok"}).status_code == 200
        listed = c.get("/feedback", params={"trace_id": "conv-fb-1"}).json()["data"]
        assert [(f["score"], f["label"]) for f in listed] == [(1.0, None), (None, "greeting_ok")]
        assert c.get("/feedback", params={"trace_id": "conv-fb-1", "limit": 1}).json()["data"][0]["label"] == \
            "greeting_ok"
    st = RunStore(server.store_url, mode="read")  # what the server wrote is in the store, for export and KPIs
    try:
        assert [f["comment"] for f in st.feedback(trace_ids=["conv-fb-1"])] == ["good", ""]
    finally:
        st.close()


@pytest.mark.parametrize("body, status, param, words", [
    ({"trace_id": "never-served", "score": 1}, 404, "trace_id", "no served conversation with trace_id"),
    ({"trace_id": "conv-fb-2", "score": 1, "request_id": "req_nope"}, 404, "request_id", "is not a request of"),
    ({"trace_id": "conv-fb-2"}, 400, "score", "give a score"),
    ({"trace_id": "conv-fb-2", "score": "high"}, 400, "score", "score"),
    ({"trace_id": "conv-fb-2", "score": True}, 400, "score", "score"),
    ({"trace_id": "", "score": 1}, 400, "trace_id", "trace_id"),
    ({"trace_id": "conv-fb-2", "label": "x" * 201}, 400, "label", "label"),
    ({"trace_id": "conv-fb-2", "scor": 1}, 400, "scor", "scor"),
])
def test_bad_feedback_is_an_openai_error_naming_the_field(server, body, status, param, words):
    client = openai.OpenAI(base_url=server.url, api_key=TOKEN, max_retries=0, timeout=120)
    client.chat.completions.create(model="tool", messages=h.PLAIN, max_tokens=2, extra_headers={"X-Trace-Id":
                                                                                                 "conv-fb-2"})
    with _http(server) as c:
        r = c.post("/feedback", json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], err
        assert c.post("/feedback", content=b"{not json").json()["error"]["code"] == "invalid_json"
    assert all(f["trace_id"] == "conv-fb-1" for f in RunStore(server.store_url, mode="read").feedback())


def test_feedback_needs_the_token(server):
    r = httpx.post(server.url + "/feedback", json={"trace_id": "conv-fb-1", "score": 1})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    # and the SDK's raw request path sends its key like any other call
    client = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.post("/feedback", body={"trace_id": "conv-fb-1", "score": 1}, cast_to=object)


@pytest.mark.parametrize("path", ["/feedback?trace_id=conv-fb-1", "/approvals", "/files", "/fine_tuning/jobs"])
@pytest.mark.parametrize("limit", ["many", "0", "-1", "10001"])
def test_every_list_endpoint_answers_a_bad_limit_with_a_400_naming_it(server, path, limit):
    with _http(server) as c:
        r = c.get(path, params={"limit": limit})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "limit" and err["message"].startswith("limit must be")
