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


PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A fresh store URL on each backend: a SQLite file, and a private schema on the live PostgreSQL at
    127.0.0.1:5432 (database ``test``), dropped after the test (skipped where no server answers)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    import secrets

    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True,
                               connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    schema = f"t_{secrets.token_hex(5)}"
    conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.close()
