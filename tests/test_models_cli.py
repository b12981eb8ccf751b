"""``agentrft model tiny``: a real subprocess builds a tiny model from an environment's text; errors exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
CMD = [sys.executable, "-m", "agentrft.cli", "model"]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real command in a fresh interpreter (used once: each costs an import of torch + transformers)."""
    return subprocess.run(CMD + list(args), capture_output=True, text=True, env=ENV, timeout=timeout)


def _invoke(*args: str):
    """The same Typer app in-process (the main ``agentrft`` app, so the mount is exercised too)."""
    from typer.testing import CliRunner

    from agentrft.cli import app

    return CliRunner().invoke(app, ["model", *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("tiny") / "repo"
    p = _run("tiny", "--env", "repo_locator", "--out", str(out), "--vocab-size", "600", "--hidden-size", "32",
             "--layers", "2", "--heads", "2", "--kv-heads", "1", "--n-train", "12", "--n-valid", "4", "--seed", "3")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), out


def test_tiny_writes_model_and_data(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary, out = built
    assert Path(summary["model"]) == out / "model" and Path(summary["data"]) == out / "data"
    for key in ("train", "valid", "demos", "grader"):
        assert Path(summary["files"][key]).exists(), key
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tok) == summary["vocab_size"] <= 600
    # the shape-derived count in the summary is the real number of parameters
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id


def test_tiny_tokenizer_fits_the_environment(built):
    """Trained on the environment's corpus: its demos render through the trainer's renderer (append-only), and
    BPE learned the domain — the demo text takes far fewer tokens than bytes."""
    from transformers import AutoTokenizer

    from agentrft.data import load_dataset
    from agentrft.rollout.render import ChatRenderer

    summary, out = built
    tok = AutoTokenizer.from_pretrained(out / "model")
    r = ChatRenderer(tok)
    demos = load_dataset(summary["files"]["demos"], allow_demos=True)
    n_bytes = n_tokens = 0
    for row in list(demos)[:6]:
        ids, mask = r.render_demo(row.messages, row.tools)
        assert sum(mask) > 0 and ids.count(r.eos_id) >= 2
        text = r.decode(ids)
        n_bytes += len(text.encode())
        n_tokens += len(ids)
    assert n_tokens < n_bytes / 2.5, (n_tokens, n_bytes)


def test_tiny_tokenizer_reloads_as_trained(built):
    """transformers rebuilds some model types' tokenizers from their own class (a ``qwen2`` directory loads as
    Qwen2Tokenizer with Qwen's pre-tokenizer, whatever tokenizer.json says). The directory we write must load
    with the pipeline it was trained with: names, paths and the template's words stay single tokens."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    summary, out = built
    tok = AutoTokenizer.from_pretrained(out / "model")
    raw = Tokenizer.from_file(str(out / "model" / "tokenizer.json"))
    row = json.loads(Path(summary["files"]["demos"]).read_text().splitlines()[0])
    text = tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)
    assert tok(text, add_special_tokens=False)["input_ids"] == raw.encode(text, add_special_tokens=False).ids
    symbol, path = row["symbol"], row["expected_files"][0]
    for word in (symbol, path, "arguments", "assistant"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, (word, tok.tokenize(word))


def test_a_tokenizer_that_does_not_reload_as_trained_is_refused(built, tmp_path):
    """The reason the tiny model is a Llama: the same directory labelled ``qwen2`` reloads through
    Qwen2Tokenizer, whose own pre-tokenizer splits our words — and the check says so."""
    import shutil

    import pytest
    from transformers import AutoTokenizer

    from agentrft.models.tiny import check_tokenizer_reloads

    summary, out = built
    tok = AutoTokenizer.from_pretrained(out / "model")
    row = json.loads(Path(summary["files"]["demos"]).read_text().splitlines()[0])
    texts = [tok.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False)]
    check_tokenizer_reloads(out / "model", tok, texts)  # as built: reloads identically
    qwen = tmp_path / "as-qwen2"
    shutil.copytree(out / "model", qwen)
    cfg = json.loads((qwen / "config.json").read_text())
    (qwen / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(RuntimeError, match="does not reload as trained"):
        check_tokenizer_reloads(qwen, tok, texts)


def test_tiny_is_deterministic_for_a_seed(built, tmp_path):
    """Same environment data and seed → byte-identical weights (reuse the generated data with --data)."""
    summary, out = built
    p = _invoke("tiny", "--env", "repo_locator", "--out", str(tmp_path / "again"), "--data", summary["data"],
                "--vocab-size", "600", "--hidden-size", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1",
                "--seed", "3")
    assert p.exit_code == 0, p.output
    again = json.loads(p.stdout)
    assert again["data"] == summary["data"] and again["files"] == {}
    assert (tmp_path / "again" / "model" / "model.safetensors").read_bytes() == \
        (out / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model" / "tokenizer.json").read_text() == \
        (out / "model" / "tokenizer.json").read_text()


@pytest.mark.parametrize("args, message", [
    (["--env", "nope"], "--env: unknown environment 'nope'; known environments: repo_locator, support_desk"),
    (["--env", "support_desk", "--hidden-size", "30", "--heads", "4"], "--hidden-size 30 must be a multiple of --heads 4"),
    (["--env", "support_desk", "--heads", "4", "--kv-heads", "3"], "--heads 4 must be a multiple of --kv-heads 3"),
    (["--env", "support_desk", "--data", "/nonexistent/dir"], "--data /nonexistent/dir: no such directory"),
])
def test_tiny_errors(tmp_path, args, message):
    p = _invoke("tiny", "--out", str(tmp_path / "m"), *args)
    assert p.exit_code == 2, p.output
    assert f"error: {message}" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "m" / "model").exists()


def test_tiny_empty_data_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    p = _invoke("tiny", "--env", "support_desk", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "empty"))
    assert p.exit_code == 2 and "corpus is incomplete" in p.stderr and "train.jsonl: not generated yet" in p.stderr, \
        p.output
    assert p.exception is None or isinstance(p.exception, SystemExit)


def test_model_help_lists_commands():
    p = _invoke("--help")
    assert p.exit_code == 0 and "tiny" in p.stdout and "import-gguf" in p.stdout
