"""Stores for tests on both backends: a SQLite file, or a private schema on the live PostgreSQL at 127.0.0.1:5432
(database ``test``, trust auth) that is dropped afterwards, so every run leaves the server as it found it. One
copy of the schema set-up for every test file that needs one (a test is skipped where no server answers)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def pg_schema(prefix: str = "t") -> Iterator[tuple[str, str, object]]:
    """Yields (store URL whose search_path is a new schema, the schema's name, an autocommit psycopg connection to
    the database); the schema is dropped with everything in it on exit."""
    psycopg = pytest.importorskip("psycopg")
    try:
        conn = psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True,
                               connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}", schema, conn
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@contextlib.contextmanager
def backend_store_url(backend: str, tmp_dir: Path, prefix: str = "t") -> Iterator[str]:
    """A fresh store URL on ``backend`` ("sqlite": a file in ``tmp_dir``; "postgres": :func:`pg_schema`)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_dir / 'store.db'}"
        return
    with pg_schema(prefix) as (url, _schema, _conn):
        yield url
