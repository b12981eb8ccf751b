"""`agentrft serve` as a command: a real server process, the token from the environment, the bind refusal."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai

import serve_helpers as h
from proc_helpers import serve_process, src_env


def test_serve_command_answers_with_the_token_from_the_environment(tiny_model, tmp_path_factory, tmp_path):
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    args = ["--model", str(tool), "--slots", "2", "--store", f"sqlite:///{tmp_path / 'store.db'}"]
    with serve_process(args, tmp_path / "serve.log", src_env(AGENTRFT_TOKEN="from-env")) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == [tool.name]
        r = c.chat.completions.create(model=tool.name, messages=h.PLAIN, temperature=0, max_tokens=10)
        assert r.choices[0].message.content == "hello there"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_serve_refuses_a_public_bind_without_a_token(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "serve", "--model", str(tmp_path), "--host", "0.0.0.0"],
                       env=src_env(AGENTRFT_TOKEN=""), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in r.stderr + r.stdout


def test_serve_config_from_a_serve_yaml_or_a_run_config(tmp_path, lookup_files):
    import yaml

    import lookup_task
    from agentrft.config import ConfigError
    from agentrft.serve.config import load_serve_config

    (tmp_path / "m").mkdir()
    (tmp_path / "lora").mkdir()
    serve = tmp_path / "serve.yaml"
    serve.write_text(yaml.safe_dump({"model": "m", "slots": 4, "loras": {"x": "lora"}, "rate_limit_tpm": 1000}))
    cfg = load_serve_config(serve, {"port": 9000, "token": None})
    assert cfg.model == str((tmp_path / "m").resolve()) and cfg.loras == {"x": str((tmp_path / "lora").resolve())}
    assert (cfg.slots, cfg.port, cfg.rate_limit_tpm, cfg.host) == (4, 9000, 1000, "127.0.0.1")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": "m", "training_file": str(lookup_files["train"]),
                                   "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER, "output_dir": "out"}))
    cfg = load_serve_config(run, {})
    assert cfg.model == str(tmp_path / "m") and cfg.store == "sqlite:///" + str(tmp_path / "out" / "agentrft.db")
    serve.write_text(yaml.safe_dump({"model": "m", "slots": 0}))
    try:
        load_serve_config(serve, {})
    except ConfigError as e:
        assert "slots" in str(e) and "serve.yaml" in str(e)
    else:
        raise AssertionError("slots: 0 was accepted")


def test_the_openai_sdk_checklist_against_a_server_process(tiny_model, tmp_path_factory, tmp_path):
    """Issue 15's client checks against `agentrft serve` as its own process (tests/test_serve.py runs them in depth on
    a uvicorn thread of the test process, where it can also look at the server's state): models, tool calls and the
    tool result round trip, tool-call deltas reassembled by the SDK, n > 1 and seeds, the error classes, and 16
    concurrent clients."""
    import json

    import pytest
    import yaml

    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tool), "model_name": "tool", "slots": 16, "token": "t0k",
                                   "max_body_bytes": 64 * 1024, "record_traces": False}))
    with serve_process(["--config", str(cfg)], tmp_path / "serve.log", src_env(AGENTRFT_TOKEN="")) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="t0k", max_retries=0, timeout=120)
        assert [m.id for m in c.models.list().data] == ["tool"]
        r = c.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, temperature=0, max_tokens=60)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and json.loads(msg.tool_calls[0].function.arguments) == \
            {"key": "K3"}
        after = h.ONE + [msg.model_dump(exclude_none=True),
                         {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "K3 is red"}]
        assert c.chat.completions.create(model="tool", messages=after, tools=h.TOOLS, temperature=0,
                                         max_tokens=60).choices[0].message.content == "ANSWER: red"
        with c.chat.completions.stream(model="tool", messages=h.TWO, tools=h.TOOLS, temperature=0,
                                       max_tokens=60) as s:
            kinds = [e.type for e in s]
            calls = s.get_final_completion().choices[0].message.tool_calls
        assert "tool_calls.function.arguments.delta" in kinds
        assert [json.loads(x.function.arguments) for x in calls] == [{"key": "K1"}, {"key": "K5"}]
        odd = [{"role": "user", "content": "Tell me about K9 and the weather."}]
        kw = dict(model="tool", messages=odd, temperature=2.0, max_tokens=12, n=3, seed=5)
        a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
        assert len(a.choices) == 3 and [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
        with pytest.raises(openai.NotFoundError):
            c.chat.completions.create(model="nope", messages=h.PLAIN)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        r = httpx.get(url + "/v1/models")  # no token at all
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="tool", messages=[{"role": "user", "content": "x" * 100_000}])
        assert e.value.status_code == 413
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS,
                                      tool_choice={"type": "function", "function": {"name": "missing"}})
        def one(i: int):
            return openai.OpenAI(base_url=url + "/v1", api_key="t0k", max_retries=0, timeout=300).chat.\
                completions.create(model="tool", messages=h.ONE if i % 2 else h.PLAIN,
                                   tools=h.TOOLS if i % 2 else None, temperature=0, max_tokens=30)

        out = h.concurrently(16, one)
        assert len(out) == 16 and not [x for x in out.values() if isinstance(x, Exception)], out
        for i, x in out.items():
            if i % 2:
                assert json.loads(x.choices[0].message.tool_calls[0].function.arguments) == {"key": "K3"}
            else:
                assert x.choices[0].message.content == "hello there"
