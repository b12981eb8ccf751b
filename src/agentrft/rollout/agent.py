"""The agent loop: many multi-turn tool-calling rollouts at once.

Each rollout alternates *generate* (the sampler writes the next assistant turn) and *act* (its tool calls run).
The loop keeps two sets: trajectories ready to generate, and trajectories waiting on tools. Ready ones are
decoded together in one batch while the tool calls of the waiting ones run on worker threads, so a trajectory
waiting on a slow tool never holds the others back; as soon as all calls of a turn are back, its trajectory
rejoins the next batch.

A rollout ends when the model answers without calling a tool (``completed``), when it tries to call past the
tool-call budget (``tool_budget``), at the turn limit (``max_turns``), when the context is full
(``context_limit``), or when a tool backend says the rollout must be dropped (``dropped``, e.g. a 5xx after
retries under the Agent RFT contract).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from agentrft.policy.sampler import (
    ContinuousSampler,
    DecodeEngine,
    Generation,
    Sampler,
    SamplingParams,
    sampler_version,
)
from agentrft.rollout.parse import parse_turn
from agentrft.rollout.render import ChatRenderer
from agentrft.tools.registry import ToolContext
from agentrft.tools.router import ToolRouter
from agentrft.types import ToolCall, Trajectory, Turn, new_call_id, new_trace_id


@dataclass
class RolloutTask:
    row: Any  # agentrft.data.Row: .index, .messages, .tools, .item, .tool_names
    seed: int
    split: str = "train"
    group_id: str = ""
    sample_index: int = 0
    trace_id: str = field(default_factory=new_trace_id)
    data_dir: str | None = None


@dataclass
class RolloutLimits:
    max_turns: int = 8
    max_episode_steps: int = 8  # tool-call budget
    max_context_tokens: int = 2048


@dataclass
class _State:
    task: RolloutTask
    traj: Trajectory
    conversation: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    allowed: set[str] | None
    ctx: ToolContext
    gen: torch.Generator
    t_start: float
    calls_used: int = 0
    pending: list[cf.Future] = field(default_factory=list)
    pending_turn: Turn | None = None
    over_budget: bool = False
    ended_with_eos: bool = True


class AgentLoop:
    def __init__(
        self,
        sampler: Sampler,
        renderer: ChatRenderer,
        router: ToolRouter,
        *,
        limits: RolloutLimits,
        max_batch: int = 64,
        continuous: bool = True,
    ):
        """Trajectories are stamped with ``sampler.version`` (the weights that sampled them) when it has one."""
        self.sampler = sampler
        self.renderer = renderer
        self.router = router
        self.limits = limits
        self.max_batch = max_batch
        self.continuous = continuous

    # ---- public ----------------------------------------------------------------------------------
    def run(
        self,
        tasks: list[RolloutTask],
        params: SamplingParams,
        on_done: Callable[[Trajectory], None] | None = None,
    ) -> list[Trajectory]:
        """Roll out every task; returns trajectories in the order of ``tasks``."""
        prompts: dict[int, list[int]] = {}  # a group's G tasks share one row: render its prompt once
        states = [self._start(t, prompts) for t in tasks]
        if self.continuous and isinstance(self.sampler, ContinuousSampler):
            engine = self.sampler.slot_engine(params, slots=min(self.max_batch, max(1, len(states))))
            if engine is not None:
                try:
                    return self._run_continuous(states, engine, on_done)
                finally:
                    engine.close()
        ready: deque[_State] = deque()
        waiting: list[_State] = []
        finished = 0
        for s in states:
            if s.traj.outcome == "context_limit":
                self._finish(s, "context_limit", on_done)
                finished += 1
            else:
                ready.append(s)
        while ready or waiting:
            if ready:
                batch = [ready.popleft() for _ in range(min(self.max_batch, len(ready)))]
                limits = [self.limits.max_context_tokens - len(s.traj.token_ids) for s in batch]
                gens = self.sampler.generate(
                    [s.traj.token_ids for s in batch], params, [s.gen for s in batch], limits=limits
                )
                for s, g in zip(batch, gens):
                    end = self._after_generate(s, g)
                    if end:
                        self._finish(s, end, on_done)
                    else:
                        waiting.append(s)
            elif waiting:
                cf.wait([f for s in waiting for f in s.pending], return_when=cf.FIRST_COMPLETED)
            still = []
            for s in waiting:
                if all(f.done() for f in s.pending):
                    end = self._after_tools(s)
                    if end:
                        self._finish(s, end, on_done)
                    else:
                        ready.append(s)
                else:
                    still.append(s)
            waiting = still
        return [s.traj for s in states]

    def _run_continuous(self, states: list[_State], engine: DecodeEngine, on_done: Callable[[Trajectory], None] | None
                        ) -> list[Trajectory]:
        """Continuous batching: every trajectory holds a KV-cache slot for its whole life (its prefix is never
        re-encoded); the engine decodes one token for every generating slot per step, a slot whose turn ended
        waits on its tools while the others keep decoding, and rejoins the very next step once its tool results
        are rendered and fed; a finished trajectory frees its slot for the next task. Trajectories' ids, masks
        and log-probs are built by the same ``_after_generate``/``_after_tools`` as the batched path."""
        queue: deque[_State] = deque()
        for s in states:
            if s.traj.outcome == "context_limit":
                self._finish(s, "context_limit", on_done)
            else:
                queue.append(s)
        free = list(range(engine.S))[::-1]
        slot_of: dict[int, _State] = {}
        waiting: list[tuple[int, _State]] = []
        fed: dict[int, int] = {}  # slot → length of the trajectory's ids already handed to the engine

        def feed(slot: int, s: _State) -> None:
            ids = s.traj.token_ids
            # the last sampled token of the previous turn is still pending inside the engine
            start = fed.get(slot, 0)
            engine.feed(slot, ids[start:], s.gen, self.limits.max_context_tokens - len(ids))
            fed[slot] = len(ids)

        def admit() -> None:
            while free and queue:
                slot, s = free.pop(), queue.popleft()
                engine.release(slot)
                fed[slot] = 0
                slot_of[slot] = s
                feed(slot, s)

        def end(slot: int, s: _State, outcome: str) -> None:
            self._finish(s, outcome, on_done)
            engine.release(slot)
            del slot_of[slot]
            free.append(slot)

        admit()
        while slot_of:
            if engine.busy():
                for slot, g in engine.step():
                    s = slot_of[slot]
                    fed[slot] += len(g.ids)  # (the engine holds the turn's last token as pending input)
                    outcome = self._after_generate(s, g)
                    if outcome:
                        end(slot, s, outcome)
                    else:
                        waiting.append((slot, s))
            elif waiting:
                cf.wait([f for _, s in waiting for f in s.pending], return_when=cf.FIRST_COMPLETED)
            still = []
            for slot, s in waiting:
                if all(f.done() for f in s.pending):
                    outcome = self._after_tools(s)
                    if outcome:
                        end(slot, s, outcome)
                    else:
                        feed(slot, s)
                else:
                    still.append((slot, s))
            waiting = still
            admit()
        return [s.traj for s in states]

    # ---- steps -----------------------------------------------------------------------------------
    def _start(self, task: RolloutTask, prompts: dict[int, list[int]] | None = None) -> _State:
        row = task.row
        tools = row.tools if row.tools else (self.router.schemas() or None)
        allowed = set(row.tool_names) if row.tools else None
        traj = Trajectory(
            trace_id=task.trace_id,
            row_index=row.index,
            split=task.split,
            group_id=task.group_id,
            sample_index=task.sample_index,
            messages=[dict(m) for m in row.messages],
            checkpoint_id=sampler_version(self.sampler),
        )
        if prompts is not None and id(row) in prompts:
            ids = prompts[id(row)]
        else:
            ids = self.renderer.prompt_ids(row.messages, tools)
            if prompts is not None:
                prompts[id(row)] = ids
        traj.token_ids, traj.loss_mask, traj.logprobs = list(ids), [0] * len(ids), [0.0] * len(ids)
        traj.prompt_len = len(ids)
        if len(ids) >= self.limits.max_context_tokens:
            traj.outcome = "context_limit"
        gen = torch.Generator().manual_seed(int(task.seed) % (2**63))
        ctx = ToolContext(trace_id=task.trace_id, item=row.item, data_dir=task.data_dir)
        return _State(task, traj, [dict(m) for m in row.messages], tools, allowed, ctx, gen, time.perf_counter())

    def _after_generate(self, s: _State, g: Generation) -> str | None:
        traj = s.traj
        start = len(traj.token_ids)
        traj.token_ids += g.ids
        traj.loss_mask += [1] * len(g.ids)
        traj.logprobs += g.logprobs
        s.ended_with_eos = g.finish_reason == "stop"
        text_ids = g.ids[:-1] if s.ended_with_eos else g.ids
        text = self.renderer.decode(text_ids)
        parsed = self.renderer.parse(text) if hasattr(self.renderer, "parse") else parse_turn(text)
        turn = Turn(
            index=len(traj.turns),
            start=start,
            end=len(traj.token_ids),
            text=text,
            finish_reason=g.finish_reason,
            parse_error="; ".join(parsed.errors) or None,
            gen_latency_s=g.latency_s,
        )
        traj.turns.append(turn)
        msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
        for pc in parsed.calls:
            turn.tool_calls.append(ToolCall(call_id=new_call_id(), name=pc.name, arguments=pc.arguments, turn_index=turn.index))
        if turn.tool_calls:
            msg["tool_calls"] = [c.as_openai() for c in turn.tool_calls]
        s.conversation.append(msg)
        traj.messages.append(msg)
        if parsed.is_final:
            return "completed"
        if len(traj.turns) >= self.limits.max_turns:
            for c in turn.tool_calls:
                c.status, c.error, c.output = "budget", "turn limit reached", "Error: turn limit reached."
            return "max_turns"
        s.pending = []
        for c in turn.tool_calls:
            if s.calls_used >= self.limits.max_episode_steps:
                c.status, c.error = "budget", "tool-call budget exhausted"
                c.output = f"Error: tool-call budget of {self.limits.max_episode_steps} calls exhausted."
                s.over_budget = True
                continue
            s.calls_used += 1
            s.pending.append(self.router.submit(c, s.ctx, allowed=s.allowed, messages=list(s.conversation)))
        s.pending_turn = turn
        return None

    def _after_tools(self, s: _State) -> str | None:
        traj, turn = s.traj, s.pending_turn
        assert turn is not None
        # wall time of the turn's calls: they run in parallel, so the slowest one (not the time until the loop
        # noticed, which includes waiting for the current decode batch)
        traj.tool_time_s += max((c.latency_s for c in turn.tool_calls if c.status != "budget"), default=0.0)
        s.pending = []
        new_msgs: list[dict[str, Any]] = []
        for c in turn.tool_calls:
            new_msgs.append({"role": "tool", "tool_call_id": c.call_id, "name": c.name, "content": c.output})
        if turn.parse_error:
            new_msgs.append(
                {
                    "role": "tool",
                    "name": "error",
                    "content": f"Error: {turn.parse_error}. Write calls as {self._call_example()}.",
                }
            )
        traj.messages += new_msgs
        dropped = [c for c in turn.tool_calls if c.meta.get("drop")]
        if dropped:
            traj.drop_reason = f"tool {dropped[0].name!r}: {dropped[0].error or 'server error'}"
            return "dropped"
        if s.over_budget:
            return "tool_budget"
        cont = self.renderer.continuation_ids(s.conversation, new_msgs, s.tools, sampled_ended_with_eos=s.ended_with_eos)
        s.conversation += new_msgs
        if len(traj.token_ids) + len(cont) >= self.limits.max_context_tokens:
            # the tool results do not fit: end here, keeping the ids the model actually saw (the messages keep the
            # outputs for graders); never hand the learner a sequence past the context budget
            return "context_limit"
        traj.token_ids += cont
        traj.loss_mask += [0] * len(cont)
        traj.logprobs += [0.0] * len(cont)
        if len(traj.token_ids) >= self.limits.max_context_tokens:
            return "context_limit"
        return None

    def _call_example(self) -> str:
        d = getattr(self.renderer, "dialect", None)
        return d.example if d is not None else '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>'

    def _finish(self, s: _State, outcome: str, on_done: Callable[[Trajectory], None] | None) -> None:
        s.traj.outcome = outcome
        errors = self.router.end_rollout(s.ctx)
        if errors:
            s.traj.drop_reason = (s.traj.drop_reason or "") + " cleanup: " + "; ".join(errors)
        s.traj.latency_s = time.perf_counter() - s.t_start
        if on_done:
            on_done(s.traj)
