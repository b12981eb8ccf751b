"""`agentrft serve` as a command: a real server process, the token from the environment, the bind refusal."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

import serve_helpers as h

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _env(**kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(kw)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_with_the_token_from_the_environment(tiny_model, tmp_path_factory, tmp_path):
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentrft.cli", "serve", "--model", str(tool), "--port", str(port), "--slots", "2",
         "--store", f"sqlite:///{tmp_path / 'store.db'}"],
        env=_env(AGENTRFT_TOKEN="from-env"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0, timeout=60)
        assert [m.id for m in c.models.list().data] == [tool.name]
        r = c.chat.completions.create(model=tool.name, messages=h.PLAIN, temperature=0, max_tokens=10)
        assert r.choices[0].message.content == "hello there"
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_refuses_a_public_bind_without_a_token(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentrft.cli", "serve", "--model", str(tmp_path), "--host", "0.0.0.0"],
                       env=_env(AGENTRFT_TOKEN=""), capture_output=True, text=True, timeout=120)
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
