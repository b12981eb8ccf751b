"""The nouns every stage shares: ToolCall, Turn, Trajectory, Grade.

A :class:`Trajectory` is the unit of record. It carries two views of one rollout:

* the *token view* the learner trains on — ``token_ids``, ``loss_mask`` (1 only on tokens the sampler
  produced) and ``logprobs`` (the sampler's log-probability of each sampled token, 0.0 elsewhere); and
* the *message view* graders and people read — OpenAI-style chat ``messages`` (assistant messages carry
  ``tool_calls``, tool results are ``role: tool`` messages).

The token view is built by appending ids (never by re-tokenizing text), so the two views can differ in
whitespace; the token view is the truth for training, the message view for grading and display.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

# Outcomes of a rollout. ``dropped`` rollouts are excluded from loss and reward means (Agent RFT contract).
OUTCOMES = ("completed", "max_turns", "tool_budget", "context_limit", "dropped")

# Statuses of one tool call. Everything except ``ok`` is counted as a tool error.
TOOL_STATUSES = (
    "ok",
    "unknown_tool",  # the model named a tool the run does not have
    "bad_arguments",  # arguments not JSON or not matching the signature
    "error",  # the tool raised, or an HTTP 4xx answer
    "timeout",  # the call ran past its timeout
    "refused",  # out of scope for this row, or denied by the approval policy
    "budget",  # the tool-call budget (max_episode_steps) was exhausted
    "server_error",  # HTTP 5xx / connection error after retries (drops the rollout)
)


def new_trace_id() -> str:
    return f"trace_{uuid.uuid4().hex}"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    """One tool call the model made and what came back."""

    call_id: str
    name: str
    arguments: str  # the raw JSON text of the arguments, as the model wrote it
    turn_index: int = 0
    output: str = ""
    status: str = "ok"
    error: str | None = None
    latency_s: float = 0.0
    retries: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # approval decision, output hash/size, truncation…

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def parsed_arguments(self) -> dict[str, Any] | None:
        import json

        try:
            value = json.loads(self.arguments) if self.arguments else {}
        except (TypeError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def as_openai(self) -> dict[str, Any]:
        """Shaped like ``choices[0].message.tool_calls[i]``."""
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class Turn:
    """One assistant turn: the span of sampled tokens and the calls parsed from it."""

    index: int
    start: int  # offset of the first sampled token in Trajectory.token_ids
    end: int  # exclusive
    text: str  # the sampled tokens decoded (display only; never re-tokenized)
    finish_reason: str = "stop"  # stop | length
    tool_calls: list[ToolCall] = field(default_factory=list)
    parse_error: str | None = None  # the model's tool-call text could not be parsed
    gen_latency_s: float = 0.0


@dataclass
class Grade:
    """A grader's verdict on one trajectory."""

    grader_name: str
    grader_type: str
    version: str  # hash of the grader's canonical JSON
    score: float
    errors: dict[str, bool] = field(default_factory=dict)  # OpenAI-style error flags, only the true ones
    sub_rewards: dict[str, float] = field(default_factory=dict)
    passed: bool | None = None
    turn_scores: list[float] | None = None  # per assistant turn (process graders)
    metadata: dict[str, Any] = field(default_factory=dict)
    execution_time_s: float = 0.0

    @property
    def has_error(self) -> bool:
        return any(self.errors.values())


@dataclass
class Trajectory:
    """One rollout of the agent on one dataset row."""

    trace_id: str
    row_index: int
    split: str = "train"  # train | valid | eval
    group_id: str = ""
    sample_index: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_len: int = 0
    turns: list[Turn] = field(default_factory=list)
    outcome: str = "completed"
    drop_reason: str | None = None
    latency_s: float = 0.0
    tool_time_s: float = 0.0
    reward: float | None = None
    grades: list[Grade] = field(default_factory=list)
    checkpoint_id: str | None = None
    advantage: float | None = None

    # ---- derived views -------------------------------------------------------------------------
    @property
    def tool_calls(self) -> list[ToolCall]:
        return [c for t in self.turns for c in t.tool_calls]

    @property
    def num_tool_calls(self) -> int:
        return sum(len(t.tool_calls) for t in self.turns)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def completion_tokens(self) -> int:
        return int(sum(self.loss_mask))

    @property
    def tool_errors(self) -> int:
        return sum(1 for c in self.tool_calls if not c.ok) + sum(1 for t in self.turns if t.parse_error)

    @property
    def dropped(self) -> bool:
        return self.outcome == "dropped"

    @property
    def final_text(self) -> str:
        """The content of the last assistant message (what OpenAI graders call ``output_text``)."""
        for m in reversed(self.messages):
            if m.get("role") == "assistant":
                return m.get("content") or ""
        return ""

    @property
    def repeated_bigram_fraction(self) -> float:
        """Consecutive identical tool names ÷ consecutive pairs (OpenAI's comparison notebook)."""
        return repeated_bigram_fraction([c.name for c in self.tool_calls])


def repeated_bigram_fraction(names: list[str]) -> float:
    if len(names) < 2:
        return 0.0
    same = sum(1 for a, b in zip(names, names[1:]) if a == b)
    return same / (len(names) - 1)
