"""A warm pool of sandboxed worker processes for the ``python`` grader.

Each worker is a separate Python process (``sandbox_worker.py``) started with an empty environment (only
``PATH``, ``HOME``/``TMPDIR`` = its scratch directory, ``LANG``, and single-threaded BLAS settings) — it never
sees the trainer's environment variables — which then isolates itself (network, read-only filesystem, tmpfs
scratch, hidden /proc, rlimits, no capabilities, seccomp; see the worker's docstring). Workers stay alive between
grades, so a grade costs one JSON round trip over a pipe (thousands per second), not a process start.

Per grade the parent enforces the wall-clock limit (``timeout_s``, OpenAI's 2 minutes by default): a worker
that does not answer in time is killed (SIGKILL) and replaced on the next request; so is a worker that dies
(memory bomb killed by the kernel, a crash) or breaks the protocol. Each of these is one
:class:`SandboxResult` with ``kind`` set — the caller flags it; the pool carries on.

Thread-safe: callers in many threads each take an idle worker (starting a new one while fewer than ``size``
exist) and give it back.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
MAX_RESPONSE = 4 * 1024 * 1024


@dataclass
class SandboxResult:
    ok: bool
    score: float = 0.0
    kind: str = ""  # exception | non_float | source_error | timeout | killed | protocol | server
    error: str = ""
    stdout: str = ""
    isolation: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0


class SandboxError(RuntimeError):
    pass


class _Worker:
    def __init__(self, pool: "SandboxPool", idx: int):
        self.scratch = os.path.join(pool.root, f"w{idx}")
        os.makedirs(self.scratch, exist_ok=True)
        os.chmod(self.scratch, 0o700)
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        # the life pipe: nothing is ever written to it; when this process dies (even by SIGKILL) its end closes and
        # the kernel sends the worker SIGIO, which terminates it (see sandbox_worker.die_with_parent)
        life_r, self.life_w = os.pipe()
        cfg = {"scratch": self.scratch, "memory_mb": pool.memory_mb, "disk_mb": pool.disk_mb,
               "warm_imports": list(pool.warm_imports), "hide_paths": list(pool.hide_paths), "life_fd": life_r}
        env = {"PATH": "/usr/bin:/bin", "HOME": self.scratch, "TMPDIR": self.scratch, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", WORKER, str(req_r), str(resp_w), json.dumps(cfg)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(req_r, resp_w, life_r), env=env, cwd=self.scratch, start_new_session=True,
            )
        except BaseException:
            os.close(self.life_w)
            raise
        finally:
            os.close(req_r)
            os.close(resp_w)
            os.close(life_r)
        self.isolation: dict[str, Any] = {}
        self.dead = False
        self._closed_fds = False
        try:
            ready = self.recv(pool.start_timeout_s)
        except SandboxError as e:
            err = b""
            try:
                self.kill()
                err = self.proc.stderr.read() if self.proc.stderr else b""
            except Exception:
                pass
            raise SandboxError(f"sandbox worker failed to start: {e}; {err.decode(errors='replace')[-2000:]}") from None
        if self.proc.stderr:
            self.proc.stderr.close()  # the worker's fd 2 now points at /dev/null
        self.isolation = ready.get("isolation", {})
        self.pid = ready.get("pid")

    def send(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False, default=repr).encode("utf-8")
        data = struct.pack(">I", len(data)) + data
        try:
            view = memoryview(data)
            while view:
                k = os.write(self.req_w, view)
                view = view[k:]
        except (BrokenPipeError, OSError) as e:
            raise SandboxError(f"worker pipe closed: {e}") from None

    def _read(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            poller = select.poll()  # not select(): a busy trainer may hold fds past FD_SETSIZE (1024)
            poller.register(self.resp_r, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(max(1, int(left * 1000))):
                raise TimeoutError
            chunk = os.read(self.resp_r, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError
            buf += chunk
        return bytes(buf)

    def recv(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        try:
            (n,) = struct.unpack(">I", self._read(4, deadline))
            if n > MAX_RESPONSE:
                raise SandboxError(f"worker answered {n} bytes (limit {MAX_RESPONSE})")
            return json.loads(self._read(n, deadline).decode("utf-8"))
        except TimeoutError:
            raise
        except EOFError:
            raise
        except (ValueError, UnicodeDecodeError) as e:
            raise SandboxError(f"worker broke the protocol: {e}") from None

    def terminate(self) -> None:
        """SIGKILL the worker from another thread; its owner sees EOF and cleans up (no fd is closed here, so
        a pipe number cannot be reused under the owner's feet)."""
        for kill in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
            try:
                kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def kill(self) -> None:
        if self.dead and self._closed_fds:
            return
        self.dead = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._closed_fds = True
        for fd in (self.req_w, self.resp_r, self.life_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def exit_description(self) -> str:
        try:
            rc = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "worker stopped answering"
        if rc < 0:
            name = signal.Signals(-rc).name
            hint = {"SIGKILL": " (memory or CPU limit, or killed)", "SIGSEGV": " (crashed)",
                    "SIGXCPU": " (CPU limit)", "SIGXFSZ": " (file size limit)"}.get(name, "")
            return f"worker killed by {name}{hint}"
        return f"worker exited with status {rc}"


class SandboxPool:
    """``size`` warm workers (default: CPU count, at most 8). Limits follow OpenAI's python grader sandbox.
    ``hide_paths``: directories covered by an empty tmpfs inside the sandbox (default: the trainer's home)."""

    def __init__(self, size: int | None = None, *, memory_mb: int = 2048, disk_mb: int = 1024,
                 timeout_s: float = 120.0, start_timeout_s: float = 60.0, warm_imports: tuple[str, ...] = (),
                 hide_paths: tuple[str, ...] | None = None):
        self.size = max(1, size or min(8, os.cpu_count() or 1))
        self.memory_mb = memory_mb
        self.disk_mb = disk_mb
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.warm_imports = tuple(warm_imports)
        # directories the graders must not read (default: the trainer's home, where keys and tokens live)
        self.hide_paths = tuple(hide_paths) if hide_paths is not None else (os.path.expanduser("~"),)
        self.root = tempfile.mkdtemp(prefix="agentrft-sandbox-")
        os.chmod(self.root, 0o711)
        self._reaper, self._reaper_w = _start_reaper(self.root)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._count = 0
        self._live: set[_Worker] = set()  # every started worker not yet retired, idle or busy
        self._next_idx = 0
        self._closed = False
        self.stats = {"grades": 0, "timeouts": 0, "killed": 0, "restarts": 0}
        self.last_isolation: dict[str, Any] = {}

    # ---- worker checkout ------------------------------------------------------------------------------
    def _acquire(self) -> _Worker:
        """An idle worker, or a new one while fewer than ``size`` exist, else wait. Waiting re-checks the count:
        a worker that died frees its slot without coming back to the idle queue."""
        while True:
            try:
                return self._idle.get_nowait()
            except queue.Empty:
                pass
            with self._lock:
                if self._closed:
                    raise SandboxError("sandbox pool is closed")
                start = self._count < self.size
                if start:
                    self._count += 1
                    idx = self._next_idx
                    self._next_idx += 1
            if start:
                try:
                    w = _Worker(self, idx)
                except BaseException:
                    with self._lock:
                        self._count -= 1
                    raise
                with self._lock:
                    self._live.add(w)
                self.last_isolation = w.isolation
                return w
            try:
                return self._idle.get(timeout=0.05)
            except queue.Empty:
                continue

    def _release(self, w: _Worker) -> None:
        if w.dead:
            with self._lock:
                self._live.discard(w)
                self._count -= 1
                self.stats["restarts"] += 1
            shutil.rmtree(w.scratch, ignore_errors=True)
            return
        if self._closed:
            w.kill()
            with self._lock:
                self._live.discard(w)
            return
        self._idle.put(w)

    # ---- one grade ----------------------------------------------------------------------------------------
    def run(self, source: str, sample: Any, item: Any, timeout_s: float | None = None) -> SandboxResult:
        t0 = time.monotonic()
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            w = self._acquire()
        except SandboxError as e:
            return SandboxResult(False, kind="server", error=str(e), wall_s=time.monotonic() - t0)
        try:
            try:
                w.send({"source": source, "sample": sample, "item": item})
                resp = w.recv(timeout)
            except TimeoutError:
                w.kill()
                self.stats["timeouts"] += 1
                return SandboxResult(False, kind="timeout", error=f"grade() ran past {timeout:g} s and was killed",
                                     isolation=w.isolation, wall_s=time.monotonic() - t0)
            except (EOFError, SandboxError) as e:
                desc = w.exit_description() if isinstance(e, EOFError) else str(e)
                w.kill()
                self.stats["killed"] += 1
                kind = "killed" if isinstance(e, EOFError) else "protocol"
                return SandboxResult(False, kind=kind, error=desc, isolation=w.isolation,
                                     wall_s=time.monotonic() - t0)
            self.stats["grades"] += 1
            if resp.get("recycle"):
                w.kill()  # the worker retires itself; its slot is refilled by the next request
            return SandboxResult(bool(resp.get("ok")), score=float(resp.get("score", 0.0) or 0.0),
                                 kind=str(resp.get("kind", "")), error=str(resp.get("error", "")),
                                 stdout=str(resp.get("stdout", "")), isolation=w.isolation,
                                 wall_s=time.monotonic() - t0)
        finally:
            self._release(w)

    def warm(self, n: int | None = None) -> None:
        """Start up to ``n`` workers now (default: all) so the first grades do not pay the start-up."""
        ws = []
        for _ in range(min(n or self.size, self.size)):
            with self._lock:
                if self._count >= self.size:
                    break
            ws.append(self._acquire())
        for w in ws:
            self._release(w)

    def close(self) -> None:
        """Kill every worker — idle ones here, busy ones by signal (their grading threads then see the worker
        killed and return at once, so Ctrl-C is not stuck behind a grader that never ends) — and remove the
        scratch directories."""
        self._closed = True
        idle = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            busy = [w for w in self._live if w not in idle]
            self._live.clear()
        for w in busy:
            w.terminate()
        for w in idle:
            w.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._reaper_w is not None:
            os.close(self._reaper_w)  # the reaper finds nothing left to remove and exits
            self._reaper_w = None


def _start_reaper(root: str) -> tuple[Any, int | None]:
    """A tiny process (``sh``) that removes ``root`` once this process is gone, however it ends: it blocks reading a
    pipe whose only writer is this process, and a SIGKILL closes that writer too. (atexit does not run on SIGKILL;
    the workers die by themselves, but their scratch directories would be left behind.)"""
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", 'read _ignored; rm -rf -- "$1"', "agentrft-sandbox-reaper", root],
                                stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # not stopped by the terminal's Ctrl-C before we clean up
    except OSError:
        os.close(w)
        return None, None
    finally:
        os.close(r)
    return proc, w


_POOLS: dict[tuple, SandboxPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(size: int | None = None, **kw: Any) -> SandboxPool:
    """The process-wide pool for these settings (python graders with the same limits share workers)."""
    key = (size, tuple(sorted(kw.items())))
    with _POOLS_LOCK:
        p = _POOLS.get(key)
        if p is None or p._closed:
            p = _POOLS[key] = SandboxPool(size, **kw)
        return p


@atexit.register
def _close_all() -> None:
    for p in list(_POOLS.values()):
        p.close()


def interrupt_all() -> None:
    """On Ctrl-C: kill every sandbox worker of this process now (busy ones included)."""
    _close_all()
