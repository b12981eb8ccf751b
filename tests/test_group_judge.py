"""``group_judge`` (RULER-style relative judging): one request per group to an OpenAI-compatible judge on loopback.

The judge is an external boundary (a hosted model we cannot run here), so it is a scripted FastAPI judge served by
uvicorn on loopback: it reads the group the grader sent, and scores each attempt deterministically from what it
shows (1 when the answered colour is the one the tool returned, 0.5 for a wrong answer, 0 for no answer) — the
request/response path, the prompt rendering, the parsing and the per-group batching are all real."""

from __future__ import annotations

import json
import re
import threading

import pytest
from fastapi import FastAPI, Request

from agentrft.graders import build_grader, grade_trajectories
from agentrft.graders.base import GraderSpecError
from agentrft.serve.server import BackgroundServer
from agentrft.types import ToolCall, Trajectory, Turn

PROMPT = [{"role": "system", "content": "Find the color, reply ANSWER: color."},
          {"role": "user", "content": "What color is K3?"}]


def traj(trace: str, group: str, answer: str | None, row: int = 0) -> Trajectory:
    msgs = [dict(m) for m in PROMPT]
    call = ToolCall(call_id=f"c-{trace}", name="lookup", arguments='{"key": "K3"}', output="K3 is red")
    msgs += [{"role": "assistant", "content": "", "tool_calls": [call.as_openai()]},
             {"role": "tool", "tool_call_id": call.call_id, "name": "lookup", "content": "K3 is red"}]
    turns = [Turn(0, 0, 0, "", tool_calls=[call])]
    if answer is not None:
        msgs.append({"role": "assistant", "content": f"ANSWER: {answer}"})
        turns.append(Turn(1, 0, 0, f"ANSWER: {answer}"))
    return Trajectory(trace_id=trace, row_index=row, group_id=group, messages=msgs, turns=turns,
                      outcome="completed" if answer is not None else "max_turns")


class Judge:
    """The scripted judge: ``mode`` = "score" | "garbage" | "missing" | "error"."""

    def __init__(self):
        self.mode = "score"
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            with self.lock:
                self.requests.append(body)
            if self.mode == "error":
                from fastapi.responses import JSONResponse

                return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
            user = body["messages"][-1]["content"]
            scores = []
            for tid, block in re.findall(r'<trajectory id="(\d+)">\n(.*?)\n</trajectory>', user, re.S):
                truth = re.search(r"returned: \w+ is (\w+)", block)
                ans = re.search(r"assistant: ANSWER: (\w+)", block)
                s = 0.0 if not ans else 1.0 if truth and ans.group(1) == truth.group(1) else 0.5
                scores.append({"trajectory_id": tid, "explanation": "scripted", "score": s})
            if self.mode == "missing":
                scores = scores[:-1]
            text = "I cannot decide." if self.mode == "garbage" else json.dumps({"scores": scores})
            return {"id": "j", "object": "chat.completion", "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}

        self.app = app


@pytest.fixture(scope="module")
def judge():
    j = Judge()
    with BackgroundServer(j.app) as srv:
        j.url = srv.url
        yield j


def spec(judge, **kw):
    return {"type": "group_judge", "name": "ruler", "model": "judge-1", "base_url": judge.url,
            "rubric": "Prefer answers that match the tool output.", **kw}


def test_one_request_per_group_and_a_score_per_member(judge):
    judge.mode, judge.requests = "score", []
    g = build_grader(spec(judge))
    trajs = [traj("a1", "g1", "red"), traj("a2", "g1", "blue"), traj("a3", "g1", None),
             traj("b1", "g2", "blue", row=1), traj("b2", "g2", "red", row=1)]
    items = {0: {"answer": "ANSWER: red"}, 1: {"answer": "ANSWER: red"}}
    grade_trajectories(trajs, items, g)
    assert [t.reward for t in trajs] == [1.0, 0.5, 0.0, 0.5, 1.0]
    assert len(judge.requests) == 2  # one per group, not one per trajectory
    sent = sorted(judge.requests, key=lambda b: b["messages"][-1]["content"].count("<trajectory"))
    user = sent[-1]["messages"][-1]["content"]
    assert user.count("<trajectory id=") == 3 and "What color is K3?" in user
    assert "Prefer answers that match the tool output." in user
    assert "assistant calls lookup(" in user and "(ended without an answer: max_turns)" in user
    assert sent[-1]["model"] == "judge-1"
    gr = trajs[0].grades[0]
    assert gr.grader_type == "group_judge" and gr.metadata["group_size"] == 3
    assert gr.metadata["token_usage"]["prompt_tokens"] == 100 and not gr.errors


def test_a_bad_judge_answer_flags_the_whole_group(judge):
    g = build_grader(spec(judge))
    for mode, flag, words in (("garbage", "model_grader_parse_error", "not JSON with a 'scores' list"),
                              ("missing", "model_grader_parse_error", "scored no trajectory 2 (of 2)")):
        judge.mode = mode
        trajs = [traj("x1", "g", "red"), traj("x2", "g", "blue")]
        grade_trajectories(trajs, {0: {}}, g)
        for t in trajs:
            gr = t.grades[0]
            assert gr.errors == {flag: True} and gr.score == 0.0 and words in gr.metadata["error"]
            assert gr.passed is False


def test_an_unreachable_judge_is_a_server_error_after_retries(judge):
    judge.mode = "error"
    g = build_grader(spec(judge))
    trajs = [traj("y1", "g", "red")]
    grade_trajectories(trajs, {0: {}}, g)
    gr = trajs[0].grades[0]
    assert gr.errors == {"model_grader_server_error": True} and "HTTP 503" in gr.metadata["error"]
    judge.mode = "score"


def test_spec_errors_name_the_field(judge, monkeypatch):
    monkeypatch.delenv("AGENTRFT_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(GraderSpecError, match="grader.model"):
        build_grader({"type": "group_judge", "base_url": judge.url})
    with pytest.raises(GraderSpecError, match="grader.base_url"):
        build_grader({"type": "group_judge", "model": "m", "base_url": "ftp://x"})
    with pytest.raises(GraderSpecError, match="grader.max_chars"):
        build_grader({"type": "group_judge", "model": "m", "base_url": judge.url, "max_chars": 5})
    with pytest.raises(GraderSpecError, match="grader.rubrik: unknown key"):
        build_grader({"type": "group_judge", "model": "m", "base_url": judge.url, "rubrik": "x"})
    with pytest.raises(GraderSpecError, match="no judge endpoint is configured"):
        build_grader({"type": "group_judge", "model": "m"})


def test_parse_is_strict_about_members():
    from agentrft.graders.group_judge import GroupJudgeGrader

    ok, _ = GroupJudgeGrader.parse('```json\n{"scores": [{"trajectory_id": "2", "score": 1.7}, '
                                   '{"trajectory_id": "1", "score": -1}]}\n```', 2)
    assert ok == [(0.0, ""), (1.0, "")]  # clamped to [0, 1], back in member order
    bad, why = GroupJudgeGrader.parse('{"scores": [{"trajectory_id": "1", "score": 1}, '
                                      '{"trajectory_id": "1", "score": 0}]}', 2)
    assert bad is None and "scored twice" in why
    bad, why = GroupJudgeGrader.parse('{"scores": [{"trajectory_id": "1", "score": "high"}]}', 1)
    assert bad is None and "is not a number" in why
