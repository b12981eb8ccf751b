"""The store's trajectory records and the one conversion back to :class:`~agentrft.types.Trajectory`.

The store writes a trajectory as rows (the trajectory, its turns' tool calls, its grades) and hands them out as plain
dicts (``RunStore.trajectories``); ``trajectory_from_record`` rebuilds the dataclass everything else reads, so
there is one trajectory shape above the store.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agentrft.types import Grade, ToolCall, Trajectory, Turn


def trajectory_from_record(d: dict[str, Any]) -> Trajectory:
    """A :class:`~agentrft.types.Trajectory` rebuilt from a stored trajectory dict — messages, turns with their
    tool calls, outcome, timings and token counts (``loss_mask`` as ``completion_tokens`` ones; the token ids
    themselves are not stored) — so a grader can be run again on a recorded rollout
    (:func:`agentrft.graders.base.sample_from_trajectory`) or compared with a fresh rollout."""
    calls_by_turn: dict[int, list[Any]] = defaultdict(list)
    for c in d.get("tool_calls") or []:
        calls_by_turn[int(c.get("turn_index") or 0)].append(ToolCall(
            call_id=c.get("call_id") or "", name=c.get("name") or "", arguments=c.get("arguments") or "",
            turn_index=int(c.get("turn_index") or 0), output=c.get("output") or "", status=c.get("status") or "ok",
            error=c.get("error"), latency_s=float(c.get("latency_s") or 0.0), retries=int(c.get("retries") or 0),
            meta=dict(c.get("meta") or {})))
    turns = [Turn(index=int(u.get("index", i)), start=int(u.get("start") or 0), end=int(u.get("end") or 0),
                  text=u.get("text") or "", finish_reason=u.get("finish_reason") or "stop",
                  tool_calls=calls_by_turn.get(int(u.get("index", i)), []), parse_error=u.get("parse_error"),
                  gen_latency_s=float(u.get("gen_latency_s") or 0.0))
             for i, u in enumerate(d.get("turns") or [])]
    n = int(d.get("completion_tokens") or 0)
    grades = [Grade(grader_name=g["grader_name"], grader_type=g.get("grader_type", ""), version=g.get("version", ""),
                    score=float(g.get("score") or 0.0), errors=dict(g.get("errors") or {}),
                    sub_rewards=dict(g.get("sub_rewards") or {}), passed=g.get("passed"),
                    turn_scores=g.get("turn_scores"), metadata=dict(g.get("metadata") or {}))
              for g in d.get("grades") or []]
    return Trajectory(trace_id=d["trace_id"], row_index=int(d.get("row_index") or 0), split=d.get("split") or "valid",
                      group_id=d.get("group_id") or "", sample_index=int(d.get("sample_index") or 0),
                      messages=list(d.get("messages") or []), loss_mask=[1] * n, prompt_len=int(d.get("prompt_tokens") or 0),
                      turns=turns, outcome=d.get("outcome") or "completed", drop_reason=d.get("drop_reason"),
                      latency_s=float(d.get("latency_s") or 0.0), tool_time_s=float(d.get("tool_time_s") or 0.0),
                      reward=d.get("reward"), grades=grades, checkpoint_id=d.get("checkpoint_id"),
                      advantage=d.get("advantage"))
