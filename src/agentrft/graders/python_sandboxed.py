"""``python``: an untrusted ``grade(sample, item) -> float`` run in a sandboxed, warm worker process.

``{"type": "python", "name", "source", "image_tag"?, "pass_threshold"?}`` as OpenAI; agentrft adds the optional
``timeout_s`` (default 120, OpenAI's 2 minutes; at most 600) and ``memory_mb`` (default 2048, OpenAI's 2 GB).

Validation (``graders/validate``, no code runs): ``source`` is a string of at most 256 kB (UTF-8), parses as
Python, and defines at top level ``def grade(sample, item)`` with exactly two positional parameters.

Grading: the sample and item go to a worker of the shared :class:`~agentrft.graders.sandbox.SandboxPool`
(JSON, so they must be JSON data). The score is ``grade``'s return value as float. Flags (score 0 each):

* ``python_grader_runtime_error`` — the source failed to execute, ``grade`` raised, returned a non-number
  (``bool`` and NaN/inf included), ran past ``timeout_s`` (the worker is killed), or the worker died (memory
  limit, crash) — ``metadata["sandbox_error_kind"]`` says which;
* ``python_grader_server_error`` — the sandbox itself failed (worker would not start, broke the protocol).

``metadata`` keeps the grader's captured output (``stdout``, last 16 kB) and, on errors, the traceback lines of
the grader's own code. ``image_tag`` is recorded but not used: every grader runs in this project's Python.
"""

from __future__ import annotations

import ast
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import check_pass_threshold, error_grade, optional, require
from agentrft.graders.sandbox import SandboxPool, get_pool

MAX_SOURCE_BYTES = 256 * 1024
RUNTIME_KINDS = {"exception", "non_float", "source_error", "timeout", "killed"}


def check_source(source: str) -> None:
    n = len(source.encode("utf-8"))
    if n > MAX_SOURCE_BYTES:
        raise GraderSpecError(f"grader.source: {n} bytes, over the 256 kB limit")
    try:
        tree = ast.parse(source, filename="<grader>")
    except SyntaxError as e:
        raise GraderSpecError(f"grader.source: line {e.lineno}: syntax error: {e.msg}") from None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "grade":
            a = node.args
            n_pos = len(a.posonlyargs) + len(a.args)
            if n_pos != 2 or a.vararg or a.kwarg or a.kwonlyargs:
                raise GraderSpecError(
                    f"grader.source: line {node.lineno}: grade must take exactly two arguments (sample, item)"
                )
            if isinstance(node, ast.AsyncFunctionDef):
                raise GraderSpecError(f"grader.source: line {node.lineno}: grade must not be async")
            return
    raise GraderSpecError("grader.source: defines no top-level function grade(sample, item)")


@register_grader
class PythonGrader(Grader):
    type = "python"
    io_bound = True

    def validate_spec(self) -> None:
        src = require(self.spec, "source", str)
        optional(self.spec, "image_tag", str)
        check_pass_threshold(self.spec)
        check_source(src)
        t = optional(self.spec, "timeout_s", (int, float), 120.0)
        if not 0 < t <= 600:
            raise GraderSpecError(f"grader.timeout_s: must be in (0, 600], got {t}")
        m = optional(self.spec, "memory_mb", int, 2048)
        if not 64 <= m <= 65536:
            raise GraderSpecError(f"grader.memory_mb: must be in [64, 65536], got {m}")
        self.timeout_s = float(t)
        self.memory_mb = m
        self._pool: SandboxPool | None = None

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = get_pool(memory_mb=self.memory_mb)
        return self._pool

    def use_pool(self, pool: SandboxPool) -> "PythonGrader":
        """Run in a given pool (tests, benchmarks, a trainer sizing its own)."""
        self._pool = pool
        return self

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        r = self.pool.run(self.spec["source"], sample, item, timeout_s=self.timeout_s)
        meta: dict[str, Any] = {}
        if r.stdout:
            meta["stdout"] = r.stdout
        if r.ok:
            return self.make_grade(r.score, metadata=meta)
        meta["sandbox_error_kind"] = r.kind
        flag = "python_grader_runtime_error" if r.kind in RUNTIME_KINDS else "python_grader_server_error"
        return error_grade(self, flag, r.error or r.kind, metadata=meta)
