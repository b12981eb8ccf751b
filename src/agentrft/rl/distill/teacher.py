"""The teacher as the agent: multi-turn tool-calling rollouts of an OpenAI-compatible chat endpoint on dataset rows.

The student's agent loop (:mod:`agentrft.rollout.agent`) works on token ids, which a hosted teacher does not share;
the teacher is driven at the message level instead — ``POST {base_url}/chat/completions`` with the row's messages
and tools, its ``tool_calls`` run through the run's own :class:`~agentrft.tools.router.ToolRouter` (same scopes,
budgets, approval policy and per-rollout state as training), tool results appended as ``role: tool`` messages,
until it answers without a call. The limits are the run's: ``max_turns`` assistant turns, ``max_episode_steps``
tool calls (a call past the budget ends the rollout as ``tool_budget``, as in the student's loop).

Each rollout becomes a :class:`TeacherTrajectory`: the message view graders read (no token view — the teacher's
tokens are not the student's), its tool calls with outputs and statuses, and the endpoint's billed usage summed
over its requests (``prompt_tokens``/``completion_tokens``), priced when the config gives prices. A request that
fails after retries drops the rollout with the endpoint's answer as the reason — never a silent empty answer.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from agentrft.rollout.agent import RolloutLimits
from agentrft.tools.registry import ToolContext
from agentrft.tools.router import ToolRouter
from agentrft.types import ToolCall, Trajectory, Turn, new_call_id, new_trace_id


class TeacherError(RuntimeError):
    """The teacher endpoint did not give a usable answer (after retries); the message says what came back."""


@dataclass
class TeacherTrajectory(Trajectory):
    """A teacher rollout: billed tokens instead of a token view. The store reads ``prompt_len`` as the prompt
    tokens and ``completion_tokens`` as the sampled ones, so the teacher's usage lands in the same columns."""

    usage_completion_tokens: int = 0
    cost: float | None = None
    requests: int = 0

    @property
    def completion_tokens(self) -> int:  # type: ignore[override]
        return self.usage_completion_tokens


class TeacherClient:
    """``/chat/completions`` of an OpenAI-compatible endpoint over httpx, retrying 429/5xx/connection errors."""

    RETRIES = 3
    BACKOFF = (0.5, 1.0, 2.0)

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 120.0,
                 price_prompt_per_million: float | None = None, price_completion_per_million: float | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prices = (price_prompt_per_million, price_completion_per_million)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    @classmethod
    def from_config(cls, t: Any) -> "TeacherClient":
        """From a :class:`agentrft.config.TeacherConfig`; the key is read from ``api_key_env`` here, never stored."""
        key = None
        if t.api_key_env:
            key = os.environ.get(t.api_key_env)
            if not key:
                raise TeacherError(f"distill.teacher.api_key_env: the environment variable {t.api_key_env!r} is "
                                   "not set")
        return cls(t.base_url, t.model, api_key=key, timeout_s=t.timeout_s,
                   price_prompt_per_million=t.price_prompt_per_million,
                   price_completion_per_million=t.price_completion_per_million)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        p, c = self.prices
        if p is None and c is None:
            return None
        return (prompt_tokens * (p or 0.0) + completion_tokens * (c or 0.0)) / 1e6

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` (JSON) with retries; the parsed answer, or :class:`TeacherError` naming what came back."""
        import httpx

        last = ""
        for attempt in range(self.RETRIES + 1):
            if attempt:
                time.sleep(self.BACKOFF[min(attempt - 1, len(self.BACKOFF) - 1)])
            try:
                r = self.http.post(path, json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                continue
            if r.status_code != 200:
                raise TeacherError(f"teacher {self.base_url}{path} answered HTTP {r.status_code}: {r.text[:300]}")
            try:
                return r.json()
            except ValueError:
                raise TeacherError(f"teacher {self.base_url}{path} answered non-JSON: {r.text[:300]}") from None
        raise TeacherError(f"teacher {self.base_url}{path} unreachable after {self.RETRIES} retries: {last}")

    def chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, *, temperature: float,
             max_tokens: int, seed: int) -> tuple[dict[str, Any], dict[str, int], str]:
        """One assistant message: ``(message, usage, finish_reason)``."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "max_tokens": max_tokens, "seed": seed}
        if tools:
            body["tools"] = tools
        data = self.post("/chat/completions", body)
        try:
            choice = data["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher {self.base_url}: malformed chat completion: {json.dumps(data)[:300]}") from None
        usage = {k: int(v) for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        return msg, usage, str(choice.get("finish_reason") or "stop")

    def close(self) -> None:
        self.http.close()


@dataclass
class TeacherTask:
    row: Any  # agentrft.data.Row
    seed: int
    sample_index: int = 0
    data_dir: str | None = None
    trace_id: str = field(default_factory=new_trace_id)


def teacher_rollout(client: TeacherClient, router: ToolRouter, task: TeacherTask, limits: RolloutLimits, *,
                    temperature: float, max_tokens: int) -> TeacherTrajectory:
    """Run the teacher as the agent on one row (see the module docstring)."""
    row = task.row
    tools = row.tools if row.tools else (router.schemas() or None)
    allowed = set(row.tool_names) if row.tools else None
    traj = TeacherTrajectory(trace_id=task.trace_id, row_index=row.index, split="distill",
                             group_id=f"r{row.index}", sample_index=task.sample_index,
                             messages=[dict(m) for m in row.messages], checkpoint_id=f"teacher:{client.model}")
    ctx = ToolContext(trace_id=task.trace_id, item=row.item, data_dir=task.data_dir)
    t0 = time.perf_counter()
    calls_used = 0
    outcome = "max_turns"
    try:
        for turn_index in range(limits.max_turns):
            t_gen = time.perf_counter()
            try:
                msg, usage, finish = client.chat(traj.messages, tools, temperature=temperature,
                                                 max_tokens=max_tokens, seed=task.seed + turn_index)
            except TeacherError as e:
                outcome, traj.drop_reason = "dropped", str(e)
                break
            traj.requests += 1
            traj.prompt_len += usage.get("prompt_tokens", 0)
            traj.usage_completion_tokens += usage.get("completion_tokens", 0)
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            turn = Turn(index=turn_index, start=0, end=0, text=content or "", finish_reason=finish,
                        gen_latency_s=time.perf_counter() - t_gen)
            for tc in msg.get("tool_calls") or []:
                fn = (tc or {}).get("function") or {}
                args = fn.get("arguments")
                turn.tool_calls.append(ToolCall(call_id=str(tc.get("id") or new_call_id()), name=str(fn.get("name")),
                                                arguments=args if isinstance(args, str) else json.dumps(args),
                                                turn_index=turn_index))
            traj.turns.append(turn)
            out_msg: dict[str, Any] = {"role": "assistant", "content": content or ""}
            if turn.tool_calls:
                out_msg["tool_calls"] = [c.as_openai() for c in turn.tool_calls]
            traj.messages.append(out_msg)
            if not turn.tool_calls:
                outcome = "completed"
                break
            if turn_index + 1 >= limits.max_turns:
                for c in turn.tool_calls:
                    c.status, c.error, c.output = "budget", "turn limit reached", "Error: turn limit reached."
                outcome = "max_turns"
                break
            over = False
            t_tools = time.perf_counter()
            for c in turn.tool_calls:
                if calls_used >= limits.max_episode_steps:
                    c.status, c.error = "budget", "tool-call budget exhausted"
                    c.output = f"Error: tool-call budget of {limits.max_episode_steps} calls exhausted."
                    over = True
                    continue
                calls_used += 1
                router.execute(c, ctx, allowed=allowed, messages=list(traj.messages))
            traj.tool_time_s += time.perf_counter() - t_tools
            traj.messages += [{"role": "tool", "tool_call_id": c.call_id, "name": c.name, "content": c.output}
                              for c in turn.tool_calls]
            dropped = [c for c in turn.tool_calls if c.meta.get("drop")]
            if dropped:
                outcome = "dropped"
                traj.drop_reason = f"tool {dropped[0].name!r}: {dropped[0].error or 'server error'}"
                break
            if over:
                outcome = "tool_budget"
                break
    finally:
        errors = router.end_rollout(ctx)
        if errors:
            traj.drop_reason = (traj.drop_reason or "") + " cleanup: " + "; ".join(errors)
    traj.outcome = outcome
    traj.latency_s = time.perf_counter() - t0
    traj.cost = client.cost(traj.prompt_len, traj.usage_completion_tokens)
    return traj


def run_teacher(client: TeacherClient, router: ToolRouter, tasks: list[TeacherTask], limits: RolloutLimits, *,
                temperature: float, max_tokens: int, workers: int = 8,
                on_done: Callable[[TeacherTrajectory], None] | None = None) -> list[TeacherTrajectory]:
    """Every task's teacher rollout, ``workers`` in flight at once (the endpoint batches them); in task order."""
    out: list[TeacherTrajectory | None] = [None] * len(tasks)
    with cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(tasks) or 1)),
                               thread_name_prefix="teacher") as ex:
        futs = {ex.submit(teacher_rollout, client, router, t, limits, temperature=temperature,
                          max_tokens=max_tokens): i for i, t in enumerate(tasks)}
        for f in cf.as_completed(futs):
            out[futs[f]] = traj = f.result()
            if on_done is not None:
                on_done(traj)
    return [t for t in out if t is not None]
