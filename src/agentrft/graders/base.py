"""The Grader interface every grader type implements, the registry of types, and the ``sample`` view.

A grader turns (sample, item) into a :class:`~agentrft.types.Grade`. ``sample`` is OpenAI's view of a model
answer (``output_text``, ``output_json``, ``output_tools``, ``choices``) plus, for graders that look at the
whole rollout, ``trajectory`` (see :func:`sample_from_trajectory`). ``item`` is the dataset row.

Grader specs are OpenAI grader JSON objects; ``type`` selects the class. A grader's version is the hash of
its canonical JSON, recorded with every grade in the store.

Error handling contract: ``grade`` never raises for bad samples/items/grader failures; it returns a Grade
with score 0 and the matching OpenAI error flag set (``other_error`` when nothing more specific fits).
:func:`safe_grade` enforces that for any grader, including third-party ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from agentrft.types import Grade, Trajectory

# The error flags OpenAI's graders/run reports (contract), plus our own for trajectory graders.
ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "invalid_variable_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "other_error",
)


class GraderSpecError(ValueError):
    """A grader JSON object is invalid; the message names the field."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def grader_version(spec: dict[str, Any]) -> str:
    """Version of a grader = first 16 hex digits of sha256 over its canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:16]


class Grader(ABC):
    """Base class. Subclasses set ``type`` and implement :meth:`_grade` (and usually :meth:`validate_spec`)."""

    type: ClassVar[str] = ""

    def __init__(self, spec: dict[str, Any]):
        if not isinstance(spec, dict):
            raise GraderSpecError(f"grader must be a JSON object, got {type(spec).__name__}")
        self.spec = spec
        self.name: str = str(spec.get("name") or self.type)
        self.version = grader_version(spec)
        self.pass_threshold: float | None = spec.get("pass_threshold")
        self.validate_spec()

    def validate_spec(self) -> None:  # pragma: no cover - default accepts
        """Raise GraderSpecError naming the bad field. Called from __init__ (graders/validate)."""

    @abstractmethod
    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        """Return a Grade. May raise; :meth:`grade` turns exceptions into ``other_error``."""

    def grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None = None) -> Grade:
        return safe_grade(self, sample, item, trace_id=trace_id)

    def make_grade(self, score: float, **kw: Any) -> Grade:
        passed = kw.pop("passed", None)
        if passed is None and self.pass_threshold is not None:
            passed = score >= float(self.pass_threshold)
        return Grade(
            grader_name=self.name,
            grader_type=self.type,
            version=self.version,
            score=float(score),
            passed=passed,
            **kw,
        )

    def close(self) -> None:
        """Release resources (worker pools, HTTP clients)."""


def safe_grade(grader: Grader, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None = None) -> Grade:
    t0 = time.perf_counter()
    try:
        g = grader._grade(sample, item, trace_id=trace_id)
    except Exception as e:  # a grader that throws is a recorded outcome, never a crash
        g = Grade(
            grader_name=grader.name,
            grader_type=grader.type,
            version=grader.version,
            score=0.0,
            errors={"other_error": True},
            metadata={"error": f"{type(e).__name__}: {e}"},
        )
    g.errors = {k: v for k, v in g.errors.items() if v}
    if g.score is None or (g.has_error and not g.metadata.get("keep_score_on_error")):
        g.score = 0.0  # an error scores 0 unless the grader deliberately keeps partial credit
    g.execution_time_s = g.execution_time_s or (time.perf_counter() - t0)
    return g


# ---- registry ----------------------------------------------------------------------------------
GRADER_TYPES: dict[str, type[Grader]] = {}


def register_grader(cls: type[Grader]) -> type[Grader]:
    GRADER_TYPES[cls.type] = cls
    return cls


def build_grader(spec: dict[str, Any]) -> Grader:
    """Build a grader from its JSON spec. Raises GraderSpecError naming the problem."""
    import agentrft.graders  # noqa: F401  (registers the built-in types)

    if not isinstance(spec, dict):
        raise GraderSpecError(f"grader must be a JSON object, got {type(spec).__name__}")
    t = spec.get("type")
    if isinstance(t, str) and ":" in t and t not in GRADER_TYPES:  # a grader class of your own, by reference
        from agentrft.refs import load_callable

        try:
            cls = load_callable(t)
        except ValueError as e:
            raise GraderSpecError(f"grader.type: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Grader)):
            raise GraderSpecError(f"grader.type: {t!r} is not a Grader subclass")
        return cls(spec)
    if t not in GRADER_TYPES:
        known = ", ".join(sorted(GRADER_TYPES))
        raise GraderSpecError(f"grader.type: unknown grader type {t!r} (known: {known}, or module:Class)")
    return GRADER_TYPES[t](spec)


# ---- the sample view ---------------------------------------------------------------------------
def sample_from_trajectory(traj: Trajectory, response_format: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's ``sample`` namespace for a trajectory, plus a ``trajectory`` key for trajectory graders.

    * ``output_text``: the final assistant message's text.
    * ``output_json``: the parsed text, only when a response format is set and the text parses.
    * ``output_tools``: every tool call of the rollout, in order, shaped like ``message.tool_calls``.
    * ``choices``: one choice whose message is the final assistant message.
    * ``trajectory``: ``messages``, ``tool_calls`` (name, arguments, output, status, latency_s, turn),
      ``turns`` (text, tool call count, parse_error), ``outcome``, ``num_turns``, ``latency_s``,
      ``tool_time_s``, ``completion_tokens``, ``trace_id``.
    """
    text = traj.final_text
    sample: dict[str, Any] = {
        "output_text": text,
        "output_tools": [c.as_openai() for c in traj.tool_calls],
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop" if traj.outcome == "completed" else traj.outcome,
                "message": {"role": "assistant", "content": text},
            }
        ],
    }
    if response_format is not None:
        try:
            sample["output_json"] = json.loads(text)
        except (TypeError, ValueError):
            pass
    sample["trajectory"] = {
        "trace_id": traj.trace_id,
        "messages": traj.messages,
        "tool_calls": [
            {
                "name": c.name,
                "arguments": c.arguments,
                "output": c.output,
                "status": c.status,
                "latency_s": c.latency_s,
                "turn": c.turn_index,
            }
            for c in traj.tool_calls
        ],
        "turns": [
            {"index": t.index, "text": t.text, "num_tool_calls": len(t.tool_calls), "parse_error": t.parse_error}
            for t in traj.turns
        ],
        "outcome": traj.outcome,
        "num_turns": traj.num_turns,
        "latency_s": traj.latency_s,
        "tool_time_s": traj.tool_time_s,
        "completion_tokens": traj.completion_tokens,
    }
    return sample


def sample_from_text(text: str) -> dict[str, Any]:
    """The sample view of a bare model answer (``graders/run``'s ``model_sample``)."""
    return {
        "output_text": text,
        "output_tools": [],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
    }
