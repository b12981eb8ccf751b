"""Shared fixtures: a tiny tool-calling model built locally (no hub) for the lookup task."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lookup_task  # noqa: E402


@pytest.fixture(scope="session")
def lookup_files(tmp_path_factory) -> dict[str, Path]:
    return lookup_task.write_task(tmp_path_factory.mktemp("lookup"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(lookup_files, tmp_path_factory) -> Path:
    """An untrained tiny Llama-style model + BPE tokenizer with the ChatML tool template."""
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model

    return build_tiny_model(lookup_task.corpus(lookup_files), tmp_path_factory.mktemp("tiny") / "model",
                            TinyModelSpec(vocab_size=512))


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh store URL on each backend: a SQLite file, and a private schema on the live PostgreSQL at
    127.0.0.1:5432 (database ``test``), dropped after the test (skipped where no server answers)."""
    from pg_helpers import backend_store_url

    with backend_store_url(request.param, tmp_path) as url:
        yield url
