"""A sampling engine the trainer starts itself: a subprocess (``agentrft serve …``, ``vllm serve …``) waited on until
its ``/health`` answers 200, and stopped (SIGTERM, then SIGKILL after a grace period) when training ends.

The command runs in its own process group with its output in a log file (the run directory's ``engine.log``), so a
failed start is reported with the log's last lines rather than as a bare timeout.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import httpx

from agentrft.policy.remote_sampler import RemoteEngineError


class EngineStartError(RemoteEngineError):
    """The engine command exited or did not become healthy in time; the message quotes its log's tail."""


def health_url(base_url: str) -> str:
    """``http://host:port/v1`` → ``http://host:port/health`` (vLLM and agentrft serve both answer there)."""
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/health"


class EngineProcess:
    def __init__(self, command: str | list[str], base_url: str, log_path: str | Path, *,
                 startup_timeout_s: float = 600.0, env: dict[str, str] | None = None):
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise EngineStartError("sampler.command is empty")
        self.url = health_url(base_url)
        self.log_path = Path(log_path)
        self.timeout = startup_timeout_s
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "EngineProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        except OSError as e:
            raise EngineStartError(f"sampler.command: cannot start {self.argv[0]!r}: {e.strerror}") from None
        finally:
            log.close()
        deadline = time.monotonic() + self.timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise EngineStartError(f"sampler.command exited with status {code} before {self.url} answered; "
                                       f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EngineStartError(f"sampler.command: {self.url} did not answer within {self.timeout:.0f} s "
                                       f"(sampler.startup_timeout_s); last lines of {self.log_path}:\n"
                                       f"{self.log_tail()}")
            time.sleep(0.25)

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


__all__ = ["EngineProcess", "EngineStartError", "health_url"]
