"""The rollout policy: how a deployment's candidate goes from shadow to canary to full, or back (YAML, validated).

Example: ``examples/rollout.yaml``; the fields are documented in docs/deploy.md. Errors name the file and the
field (``examples/rollout.yaml: safety.graders.0: no online grader named 'safe'``), and an unknown key gets the
nearest known one.

Safety is a hard gate: the policy must name at least one online grader whose verdict counts as a safety
violation, and there is no way to waive it (no ``waive`` key exists; ``max_violation_rate`` is capped at 0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_KPIS = {"feedback": 1, "tool_calls": -1}  # KPI name → direction (+1: higher is better)


class RolloutPolicyError(ValueError):
    """The rollout policy is invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShadowPhase(_Strict):
    """In ``shadow`` mode: the share of requests the candidate also answers (deterministic per conversation), and
    the samples per arm before the candidate may move to the first canary weight."""

    fraction: float = Field(1.0, gt=0, le=1)
    min_samples: int = Field(20, ge=1)


class Grading(_Strict):
    """Which served requests the online graders score: a share (deterministic per request id, so a restart grades
    the same ones). Requests not graded still count for errors, latency and tool calls."""

    sample: float = Field(1.0, gt=0, le=1)


class SafetyGate(_Strict):
    """The hard gate: the candidate's violation rate over everything it answered since it was deployed
    (``violations / n``, no test, no minimum) above ``max_violation_rate`` rolls back at once."""

    graders: list[str] = Field(..., min_length=1, description="online graders whose failure is a safety violation")
    max_violation_rate: float = Field(0.0, ge=0, le=0.5)


class KPI(_Strict):
    """A KPI compared per step with the sequential test: an online grader's mean score, ``feedback`` (user scores) or
    ``tool_calls`` (per request, lower is better). ``margin``: how much worse the candidate may be."""

    name: str
    direction: Literal["higher", "lower"] | None = None
    margin: float = Field(0.0, ge=0)

    def sign(self) -> int:
        if self.direction is not None:
            return 1 if self.direction == "higher" else -1
        return BUILTIN_KPIS.get(self.name, 1)


class Guards(_Strict):
    """Operational limits on the candidate, checked once it has ``min_samples`` requests in the step: its error rate
    above ``max_error_rate``, or its latency p95 above ``max_latency_p95_ratio`` × production's, rolls back."""

    min_samples: int = Field(10, ge=1)
    max_error_rate: float | None = Field(0.05, ge=0, le=1)
    max_latency_p95_ratio: float | None = Field(3.0, gt=0)


class Drift(_Strict):
    """Live inputs against the training data (``reference``: an OpenAI RFT JSONL, relative to the policy file) over
    the last ``window`` requests: the share of word tokens never seen in training, the mean prompt length as a z-score
    of training's, tools offered that training never had, and the share of tool results that are errors. Any limit
    crossed raises a ``drift_alert`` event; with ``hold`` the canary stops advancing until ``agentrft deploy
    advance`` (rollbacks still happen)."""

    reference: str
    window: int = Field(50, ge=5)
    min_samples: int = Field(20, ge=1)
    max_unseen_token_rate: float = Field(0.25, gt=0, le=1)
    max_length_z: float = Field(4.0, gt=0)
    alert_on_unseen_tools: bool = True
    max_tool_error_rate: float = Field(0.2, gt=0, le=1)
    hold: bool = True


class RolloutPolicy(_Strict):
    name: str = "default"
    schedule: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5, 1.0],
                                  description="canary weights, increasing; reaching 1.0 makes the candidate production")
    min_samples: int = Field(20, ge=1, description="graded candidate samples per canary step before it may advance")
    max_samples: int = Field(500, ge=1, description="candidate samples per step after which an undecided KPI "
                             "triggers on_inconclusive")
    on_inconclusive: Literal["hold", "advance", "rollback"] = "hold"
    alpha: float = Field(0.05, gt=0, lt=0.5, description="false-alarm rate of the sequential test, over all looks")
    tau: float = Field(0.1, gt=0, description="mixture scale of the mSPRT: the size of difference that matters")
    var_floor: float = Field(0.01, gt=0, description="smallest per-sample variance the test assumes")
    shadow: ShadowPhase = Field(default_factory=ShadowPhase)
    graders: list[dict[str, Any]] = Field(..., min_length=1, description="online graders (OpenAI grader JSON) that "
                                          "need no reference answer")
    grading: Grading = Field(default_factory=Grading)
    safety: SafetyGate
    kpis: list[KPI] = Field(default_factory=list)
    guards: Guards = Field(default_factory=Guards)
    drift: Drift | None = None
    base_dir: str = Field(".", description="set by the loader: the policy file's directory")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one weight (e.g. [0.05, 0.25, 0.5, 1.0])")
        for i, w in enumerate(v):
            if not 0 < w <= 1:
                raise ValueError(f"weight {i} is {w}: each weight must be in (0, 1]")
            if i and w <= v[i - 1]:
                raise ValueError(f"weight {i} ({w}) is not above weight {i - 1} ({v[i - 1]}): weights must increase")
        return v

    @field_validator("graders")
    @classmethod
    def _graders(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from agentrft.graders.base import GraderSpecError, build_grader

        names = set()
        for i, spec in enumerate(v):
            try:
                g = build_grader(spec)
            except (GraderSpecError, ValueError) as e:
                raise ValueError(f"grader {i}: {e}") from None
            finally:
                pass
            if g.name in names:
                raise ValueError(f"grader {i}: the name {g.name!r} is used twice")
            names.add(g.name)
            g.close()
        return v

    @model_validator(mode="after")
    def _names(self) -> "RolloutPolicy":
        names = self.grader_names()
        for i, n in enumerate(self.safety.graders):
            if n not in names:
                raise ValueError(f"safety.graders.{i}: no online grader named {n!r} (graders: {sorted(names)})")
        for i, k in enumerate(self.kpis):
            if k.name not in names and k.name not in BUILTIN_KPIS:
                raise ValueError(f"kpis.{i}.name: {k.name!r} is neither an online grader ({sorted(names)}) nor one of "
                                 f"{sorted(BUILTIN_KPIS)}")
        if self.max_samples < self.min_samples:
            raise ValueError(f"max_samples ({self.max_samples}) is below min_samples ({self.min_samples})")
        return self

    def grader_names(self) -> list[str]:
        return [str(g.get("name") or g.get("type")) for g in self.graders]

    def reference_path(self) -> Path | None:
        if self.drift is None:
            return None
        p = Path(self.drift.reference)
        return p if p.is_absolute() else Path(self.base_dir) / p


def parse_rollout_policy(data: Any, *, base_dir: str | Path = ".", source: str = "<rollout policy>") -> RolloutPolicy:
    """Validate a rollout policy (a mapping, e.g. read from YAML); RolloutPolicyError naming ``source`` and the
    field."""
    from agentrft.config import _format_errors

    if not isinstance(data, dict):
        raise RolloutPolicyError(f"{source}: the rollout policy must be a mapping, got {type(data).__name__}")
    if "safety" not in data:
        raise RolloutPolicyError(f"{source}: safety: required — every rollout has a safety gate (e.g. safety: "
                                 "{graders: [safety], max_violation_rate: 0.0}); it cannot be waived")
    if "waive" in data:
        raise RolloutPolicyError(f"{source}: waive: a rollout policy has no waivers — the safety gate always applies "
                                 "(relax guards or KPI margins instead)")
    data = {**data, "base_dir": str(data.get("base_dir") or base_dir)}
    try:
        return RolloutPolicy.model_validate(data)
    except ValidationError as e:
        raise RolloutPolicyError(_format_errors(e, source, RolloutPolicy).replace("(top level): ", "")) from None


def load_rollout_policy(path: str | Path) -> RolloutPolicy:
    from agentrft.config import read_yaml

    path = Path(path)
    data = read_yaml(path, RolloutPolicyError)
    return parse_rollout_policy(data, base_dir=path.parent.resolve(), source=str(path))
