"""The ToolRouter: one place for everything every tool call goes through, whatever its backend.

For each call the model makes, in order:

1. **Unknown tool** — not offered by any backend → ``unknown_tool``.
2. **Scope** — a row that lists ``tools`` may call only those (and the run only what it configured) → ``refused``.
3. **Arguments** — must be a JSON object fitting the tool's parameters → ``bad_arguments``.
4. **Approval** — tools marked ``requires_approval`` go through the approval policy (allow, deny, or a
   function that sees the call, the row and the conversation); the decision is recorded in ``meta["approval"]``.
   Denied → ``refused``.
5. **Run** — the backend runs it with the per-call timeout; exceptions → ``error``, past the timeout → ``timeout``.

Every outcome becomes a tool message the model sees (an error says what went wrong and how to fix it) and is
counted in the trajectory. The audit fields (output hash and size, latency, retries, approval) go into
``ToolCall.meta`` and from there into the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import threading
import time
from typing import Any, Callable

from agentrft.refs import load_callable
from agentrft.tools.base import ToolBackend
from agentrft.tools.registry import ToolContext
from agentrft.types import ToolCall

ApprovalFn = Callable[[dict[str, Any], dict[str, Any], list[dict[str, Any]]], Any]


def make_approval_policy(policy: str) -> ApprovalFn:
    """``allow`` | ``deny`` | ``module:function`` taking (call, item, messages) → bool or (bool, reason)."""
    if policy == "allow":
        return lambda call, item, messages: (True, "policy: allow")
    if policy == "deny":
        return lambda call, item, messages: (False, "policy: deny")
    return load_callable(policy)


class ToolRouter:
    def __init__(
        self,
        backends: list[ToolBackend],
        *,
        timeout_s: float = 30.0,
        max_workers: int = 16,
        approval: str | ApprovalFn = "allow",
    ):
        self.backends = backends
        self.timeout_s = timeout_s
        self._owner: dict[str, ToolBackend] = {}
        for b in backends:
            for name in b.names():
                if name in self._owner:
                    raise ValueError(f"tools: {name!r} is provided by two backends")
                self._owner[name] = b
        self.approval = make_approval_policy(approval) if isinstance(approval, str) else approval
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="toolcall")
        self._lock = threading.Lock()

    # ---- catalogue -------------------------------------------------------------------------------
    @property
    def names(self) -> set[str]:
        return set(self._owner)

    def schemas(self, only: set[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for b in self.backends:
            for s in b.schemas():
                name = s["function"]["name"] if "function" in s else s["name"]
                if only is None or name in only:
                    out.append(s)
        return out

    # ---- calls -----------------------------------------------------------------------------------
    def submit(self, call: ToolCall, ctx: ToolContext, *, allowed: set[str] | None, messages: list[dict[str, Any]]) -> cf.Future:
        return self._pool.submit(self.execute, call, ctx, allowed=allowed, messages=messages)

    def execute(
        self, call: ToolCall, ctx: ToolContext, *, allowed: set[str] | None = None, messages: list[dict[str, Any]] | None = None
    ) -> ToolCall:
        """Run ``call`` through the checks and its backend; fills in output/status/latency/meta and returns it."""
        t0 = time.perf_counter()
        try:
            self._execute(call, ctx, allowed, messages or [])
        except Exception as e:  # a bug in a backend must not kill the run
            call.status, call.error = "error", f"{type(e).__name__}: {e}"
            call.output = f"Error: tool {call.name!r} failed: {call.error}"
        call.latency_s = time.perf_counter() - t0
        data = call.output.encode("utf-8", "replace")
        call.meta.setdefault("output_sha256", hashlib.sha256(data).hexdigest())
        call.meta.setdefault("output_bytes", len(data))
        return call

    def _execute(self, call: ToolCall, ctx: ToolContext, allowed: set[str] | None, messages: list[dict[str, Any]]) -> None:
        backend = self._owner.get(call.name)
        if backend is None:
            known = ", ".join(sorted(allowed if allowed is not None else self._owner))
            call.status, call.error = "unknown_tool", f"unknown tool {call.name!r}"
            call.output = f"Error: unknown tool {call.name!r}. Available tools: {known}."
            return
        if allowed is not None and call.name not in allowed:
            call.status, call.error = "refused", f"tool {call.name!r} is not in scope for this task"
            call.output = f"Error: tool {call.name!r} is not allowed for this task. Allowed: {', '.join(sorted(allowed))}."
            return
        args = call.parsed_arguments()
        if args is None:
            call.status, call.error = "bad_arguments", "arguments are not a JSON object"
            call.output = f"Error: the arguments of {call.name!r} must be a JSON object, got: {call.arguments[:200]}"
            return
        problem = backend.check_arguments(call.name, args)
        if problem:
            call.status, call.error = "bad_arguments", problem
            call.output = f"Error: bad arguments for {call.name!r}: {problem}"
            return
        if backend.requires_approval(call.name):
            ok, reason = self._approve(call, ctx, messages)
            call.meta["approval"] = {"approved": ok, "reason": reason}
            if not ok:
                call.status, call.error = "refused", f"approval denied: {reason}"
                call.output = f"Error: {call.name!r} needs approval and it was denied ({reason})."
                return
        res = backend.call(call.name, args, ctx.for_call(call.call_id), self.timeout_s)
        call.output, call.status, call.error, call.retries = res.output, res.status, res.error, res.retries
        call.meta.update(res.meta)
        if res.drop:
            call.meta["drop"] = True

    def _approve(self, call: ToolCall, ctx: ToolContext, messages: list[dict[str, Any]]) -> tuple[bool, str]:
        try:
            verdict = self.approval({"name": call.name, "arguments": call.arguments, "call_id": call.call_id}, ctx.item, messages)
        except Exception as e:
            return False, f"approval policy failed: {type(e).__name__}: {e}"
        if isinstance(verdict, tuple):
            return bool(verdict[0]), str(verdict[1])
        return bool(verdict), "approval function"

    def end_rollout(self, ctx: ToolContext) -> list[str]:
        errors = []
        for b in self.backends:
            try:
                b.end_rollout(ctx)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
        return errors + ctx.close()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for b in self.backends:
            b.close()


def build_router(tool_specs: list[Any], *, timeout_s: float, max_workers: int, approval: str = "allow",
                 row_schemas: dict[str, dict[str, Any]] | None = None) -> ToolRouter:
    """A router over the backends a config's ``tools`` entries name (agentrft.tools.backends)."""
    from agentrft.tools.backends import BackendOptions, build_backends

    backends = build_backends(tool_specs, BackendOptions(max_workers=max_workers, row_schemas=row_schemas))
    return ToolRouter(backends, timeout_s=timeout_s, max_workers=max_workers, approval=approval)
