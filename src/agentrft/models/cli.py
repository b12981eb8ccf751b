"""``agentrft model``: build and import models offline.

* ``agentrft model tiny --env repo_locator --out models/tiny [--vocab-size 1024 --hidden-size 128 --layers 4
  --seed 0]`` — generates the environment's data into ``DIR/data`` (unless ``--data`` points at already generated
  data), trains a byte-level BPE tokenizer on its corpus (prompts, tool schemas, demo turns, tool outputs) and
  writes an untrained Llama-style model with the ChatML tool template to ``DIR/model``. Prints a JSON summary
  (paths, parameters, vocabulary). The model needs the SFT warm-start on ``DIR/data/demos.jsonl`` before RL.
* ``agentrft model tiny --data DIR --out models/tiny`` (no ``--env``) — the same from your own OpenAI-format files:
  ``DIR``'s train.jsonl / valid.jsonl / demos.jsonl, or the files named by ``--train/--valid/--demos``. A model
  for trying the flywheel on your task on a CPU, before a real one.
* ``agentrft model import-gguf PATH --out DIR [--template auto|gemma|chatml] [--keep-template] [--overwrite]``
  — a GGUF file → float32 transformers directory with a tool-calling chat template (see
  :mod:`agentrft.models.gguf`). Prints the import record as JSON.

Errors (unknown environment, missing or non-GGUF file, unsupported architecture, a template whose markers are
not tokens of the vocabulary, a non-empty output directory) print ``error: …`` naming the argument or file and
exit 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Build and import models offline.", no_args_is_help=True, add_completion=False)


def _die(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _quiet() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


@app.command()
def tiny(
    env: Optional[str] = typer.Option(None, "--env", help="environment (bundled or module:function) whose text "
                                      "trains the tokenizer; without it, --data/--train/--valid/--demos files do"),
    out: Path = typer.Option(..., "--out", help="output directory (gets model/ and data/)"),
    vocab_size: int = typer.Option(1024, "--vocab-size", min=300, help="BPE vocabulary size (≥ 300: bytes + specials)"),
    hidden_size: int = typer.Option(128, "--hidden-size", min=8),
    layers: int = typer.Option(4, "--layers", min=1),
    heads: int = typer.Option(4, "--heads", min=1),
    kv_heads: int = typer.Option(2, "--kv-heads", min=1),
    seed: int = typer.Option(0, "--seed"),
    data: Optional[Path] = typer.Option(None, "--data", help="with --env: data already generated here; without: a "
                                        "directory of OpenAI-format train.jsonl / valid.jsonl / demos.jsonl"),
    train: Optional[Path] = typer.Option(None, "--train", help="training rows (OpenAI RFT JSONL), without --env"),
    valid: Optional[Path] = typer.Option(None, "--valid", help="validation rows, without --env"),
    demos: Optional[Path] = typer.Option(None, "--demos", help="demonstration conversations, without --env"),
    n_train: int = typer.Option(200, "--n-train", min=1, help="rows to generate (when --data is not given)"),
    n_valid: int = typer.Option(50, "--n-valid", min=1),
) -> None:
    """Build a tiny tool-calling model whose tokenizer is trained on an environment's text (--env) or on your own
    OpenAI-format files (--data DIR, or --train/--valid/--demos)."""
    _quiet()
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model

    if hidden_size % heads:
        _die(f"--hidden-size {hidden_size} must be a multiple of --heads {heads}")
    if heads % kv_heads:
        _die(f"--heads {heads} must be a multiple of --kv-heads {kv_heads}")
    t0 = time.perf_counter()
    if env is None:
        texts, paths, data_dir = _dataset_texts(data, train, valid, demos)
        env_label = None
    else:
        texts, paths, data_dir = _environment_texts(env, out, data, seed, n_train, n_valid)
        env_label = env
    spec = TinyModelSpec(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=layers, num_heads=heads,
                         num_kv_heads=kv_heads, intermediate_size=3 * hidden_size, seed=seed)
    model_dir = build_tiny_model(texts, out / "model", spec)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    n_params = _param_count(cfg)
    demos_path = paths.get("demos") or (Path(data_dir) / "demos.jsonl")
    summary = {
        "model": str(model_dir), "data": str(data_dir), "env": env_label,
        "files": {k: str(v) for k, v in paths.items()},
        "vocab_size": cfg.vocab_size, "hidden_size": hidden_size, "layers": layers, "parameters": n_params,
        "corpus_texts": len(texts), "seconds": round(time.perf_counter() - t0, 2),
        "next": f"agentrft sft: warm-start {model_dir} on {demos_path} before RL",
    }
    typer.echo(json.dumps(summary, indent=2))


def _dataset_texts(data: Optional[Path], train: Optional[Path], valid: Optional[Path], demos: Optional[Path]
                   ) -> tuple[list[str], dict[str, Path], Path]:
    """The tokenizer corpus of the user's own files (``--data DIR`` or ``--train/--valid/--demos``)."""
    from agentrft.data import DatasetError
    from agentrft.models.tiny import dataset_corpus

    named = {"train": train, "valid": valid, "demos": demos}
    if data is not None:
        if not data.is_dir():
            _die(f"--data {data}: no such directory")
        for k in named:
            if named[k] is None and (data / f"{k}.jsonl").exists():
                named[k] = data / f"{k}.jsonl"
    paths = {k: p for k, p in named.items() if p is not None}
    if not paths:
        _die("give --env, or your data: --data DIR (with train.jsonl / valid.jsonl / demos.jsonl) or "
             "--train/--valid/--demos FILE")
    for k, p in paths.items():
        if not p.is_file():
            _die(f"--{k} {p}: no such file")
    try:
        texts = list(dataset_corpus(paths.values()))
    except DatasetError as e:
        _die(str(e))
    return texts, paths, data if data is not None else next(iter(paths.values())).parent


def _environment_texts(env: str, out: Path, data: Optional[Path], seed: int, n_train: int, n_valid: int
                       ) -> tuple[list[str], dict[str, Path], Path]:
    """The tokenizer corpus of an environment's generated data (generated into ``OUT/data`` unless ``--data``)."""
    from agentrft.environments import get_environment

    try:
        environment = get_environment(env)
    except ValueError as e:
        _die(f"--env: {e}")
    if data is None:
        data_dir = out / "data"
        paths = environment.generate(data_dir, seed=seed, n_train=n_train, n_valid=n_valid)
    else:
        data_dir = data
        if not data_dir.is_dir():
            _die(f"--data {data_dir}: no such directory")
        paths = {}
    try:
        texts = list(environment.corpus(data_dir))
    except FileNotFoundError as e:
        _die(f"--data {data_dir}: the {env} corpus is incomplete: {e}")
    if not texts:
        _die(f"--data {data_dir}: the {env} corpus is empty (was the environment generated there?)")
    return texts, paths, data_dir


def _param_count(cfg) -> int:  # noqa: ANN001
    """Parameters of a Llama/Qwen2 config with tied embeddings, computed from its shapes (no weights loaded):
    embeddings V·h; per layer q (h·h), k and v (2·h·kv), o (h·h), MLP 3·h·i, two RMSNorms 2·h, plus the q/k/v
    biases (h + 2·kv) when the config has them (Qwen2 always, Llama with ``attention_bias``); final norm h."""
    h, v, i, n = cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size, cfg.num_hidden_layers
    d = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * d
    bias = (h + 2 * kv) if getattr(cfg, "attention_bias", cfg.model_type == "qwen2") else 0
    layer = h * h + 2 * h * kv + h * h + 3 * h * i + 2 * h + bias
    return v * h + n * layer + h


@app.command("import-gguf")
def import_gguf_cmd(
    path: Path = typer.Argument(..., help="the .gguf file"),
    out: Path = typer.Option(..., "--out", help="output model directory (float32 safetensors + tokenizer)"),
    template: str = typer.Option("auto", "--template", help="auto | gemma | chatml"),
    keep_template: bool = typer.Option(False, "--keep-template", help="keep the file's own chat template if any"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty --out"),
) -> None:
    """Import a GGUF checkpoint as a float32 transformers model with a tool-calling chat template."""
    _quiet()
    from agentrft.models.gguf import GGUFImportError, import_gguf

    try:
        res = import_gguf(path, out, template=template, keep_file_template=keep_template, overwrite=overwrite,
                          on_stage=lambda s: typer.echo(s, err=True))
    except GGUFImportError as e:
        _die(str(e))
    except OSError as e:
        _die(f"{getattr(e, 'filename', None) or path}: {e.strerror or e}")
    typer.echo(json.dumps(res.as_dict(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
