"""A model grader with no judge configured refuses to build: nothing is ever sent to a default public endpoint
(issue 14, class 2)."""

from __future__ import annotations

import socket

import pytest

from agentrft.graders import build_grader, model_graders
from agentrft.graders.base import GraderSpecError

SPECS = [
    {"type": "score_model", "name": "s", "model": "gpt-4o-mini", "input": [{"role": "user", "content": "{{sample.output_text}}"}]},
    {"type": "label_model", "name": "l", "model": "gpt-4o-mini", "labels": ["a", "b"], "passing_labels": ["a"],
     "input": [{"role": "user", "content": "{{sample.output_text}}"}]},
    {"type": "process", "name": "p", "rules": [{"when": "final", "score": 1}],
     "judge": {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "{{sample.turn.text}}"}]}},
]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"a network connection was attempted: {a!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("AGENTRFT_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-would-be-sent")


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s["type"])
def test_no_judge_endpoint_refuses_to_build(no_network, spec):
    with pytest.raises(GraderSpecError, match=r"grader\.(judge\.)?model 'gpt-4o-mini': no judge endpoint") as e:
        build_grader(spec)
    assert "AGENTRFT_JUDGE_BASE_URL" in str(e.value)


def test_http_judge_without_base_url_sends_nothing(no_network):
    reply = model_graders.HTTPJudge().complete("m", [{"role": "user", "content": "x"}], {}, None)
    assert reply.error and "no judge endpoint" in reply.error


def test_configured_endpoint_or_local_judge_builds(no_network, monkeypatch):
    monkeypatch.setenv("AGENTRFT_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    assert build_grader(SPECS[0]).type == "score_model"
    monkeypatch.delenv("AGENTRFT_JUDGE_BASE_URL")
    model_graders.register_judge("gpt-4o-mini", type("J", (), {"chat": lambda self, m, s: '{"result": 1}'})())
    try:
        assert build_grader(SPECS[1]).type == "label_model"
    finally:
        model_graders.register_judge("gpt-4o-mini", None)
