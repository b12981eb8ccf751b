"""A teacher for the distillation tests: the conftest's untrained tiny model fine-tuned until greedy decoding
reproduces the correct, shortest solutions of a few lookup rows (it has memorised them: on those rows it is an
expert teacher), and a helper that runs ``agentrft serve`` on it as a real subprocess on loopback."""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Iterator

import torch

import lookup_task
from proc_helpers import serve_process, src_env
from serve_helpers import fine_tune_copy


def teacher_rows(n: int = 4, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    return [lookup_task.make_row(rng, two_keys=False) for _ in range(n)]


def write_rows(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_teacher(tiny_model: Path, out: Path, rows: list[dict], steps: int = 600) -> Path:
    """Copy ``tiny_model`` to ``out`` and fine-tune it on the rows' correct one-call solutions."""
    rng = random.Random(0)
    demos = [(lookup_task.make_demo(row, rng, 0.0, 0.0)["messages"], row["tools"]) for row in rows]
    return fine_tune_copy(tiny_model, out, demos, steps)


@contextlib.contextmanager
def served(model: Path, store: Path, slots: int = 4) -> Iterator[str]:
    """``agentrft serve --model MODEL`` as a subprocess on a free loopback port; yields its ``/v1`` base URL. Its
    output goes to ``<store>.log``."""
    env = src_env(AGENTRFT_TOKEN=None, OMP_NUM_THREADS="1")  # one thread: see one_thread()
    args = ["--model", str(model), "--slots", str(slots), "--store", f"sqlite:///{store}"]
    with serve_process(args, Path(str(store) + ".log"), env) as url:
        yield url + "/v1"


@contextlib.contextmanager
def served_in_process(model: Path, store: Path, slots: int = 4) -> Iterator[str]:
    """The same server in this process (uvicorn on a thread, loopback): for the default suite, where a serve
    subprocess per test is too heavy. The request log is flushed to ``store`` on exit."""
    from agentrft.serve.app import create_app
    from agentrft.serve.config import ServeConfig
    from agentrft.serve.server import BackgroundServer

    app = create_app(ServeConfig(model=str(model), store=f"sqlite:///{store}", token=None, slots=slots))
    try:
        with BackgroundServer(app) as srv:
            yield srv.url
    finally:
        app.state.serve.close()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the duration: on a shared 2-core machine two OpenMP threads wait at barriers for a
    descheduled partner (measured many times slower for these tiny models; see benchmarks/harness.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
