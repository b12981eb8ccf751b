"""Servers in their own processes, for the tests that start one: a free loopback port, an environment whose
PYTHONPATH reaches the source tree, the wait for ``/health`` and the stop. One copy, so every test waits and
reports a dead server the same way."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def src_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment with the source tree and the tests folder first on PYTHONPATH (a server imports
    the tests' tool modules); an override of None removes that variable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, str(TESTS), env.get("PYTHONPATH", "")])
    for k, v in overrides.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def wait_healthy(proc: subprocess.Popen, url: str, output: Callable[[], str], timeout_s: float = 180) -> None:
    """Return once ``url``/health answers 200; fail with the server's ``output()`` if it exits first."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, "the server exited:\n" + output()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not come up in {timeout_s:.0f} s:\n" + output()[-3000:]
        time.sleep(0.2)


def stop(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """Terminate, then kill what does not stop within ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_process(args: list[str], log: Path, env: dict[str, str] | None = None,
                  timeout_s: float = 180) -> Iterator[str]:
    """``agentrft serve ARGS --port P`` in its own process; yields its base URL once it is healthy. Its output goes
    to the file ``log``, not a pipe: nobody reads a pipe while the server runs, and once its buffer fills the server
    blocks on a log write."""
    url = f"http://127.0.0.1:{(port := free_port())}"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "serve", *args, "--port", str(port)],
                                env=env or src_env(), stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            wait_healthy(proc, url, log.read_text, timeout_s)
            yield url
        finally:
            stop(proc)
