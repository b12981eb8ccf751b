"""The promotion policy: which gates a checkpoint must pass to enter the model registry (YAML, validated).

Example (``examples/promotion.yaml``)::

    safety:                      # required, and never waivable
      grader: repo_safety        # a recorded grade's name, "<reward grader>.<sub-reward>", or grader JSON / a .json path
      min_pass_rate: 1.0
    min_lift: {metric: reward, min_diff: 0.0, significant: false}
    holdouts: {graders: all, tolerance: 0.0}
    efficiency: {max_tool_calls_per_traj: 8, max_latency_ratio: 1.5}
    monitors: {allow: []}        # any monitor alert up to the checkpoint blocks, except these signals
    audits: {min_reviewed: 0, max_failed: 0}
    waive: []                    # gate names to report but not enforce ("safety" is refused)

Every gate compares the candidate checkpoint's recorded validation eval with the run's step-0 baseline eval over
the same items and seeds (a paired comparison, :mod:`agentrft.evals.compare`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

WAIVABLE = ("min_lift", "holdouts", "efficiency", "monitors", "audits")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SafetyGate(_Strict):
    """Pass rate of the safety grader on the candidate's validation trajectories must be ≥ ``min_pass_rate``.
    A trajectory passes when the grade's ``passed`` is true (its pass_threshold), else when its score ≥ 1."""

    grader: str | dict[str, Any]
    min_pass_rate: float = Field(1.0, ge=0, le=1)


class LiftGate(_Strict):
    """``Δ = mean_i(candidate_i − baseline_i)`` of ``metric`` must be ≥ ``min_diff``; with ``significant``, the
    lower end of its paired-bootstrap interval must be above ``min_diff`` as well."""

    metric: str = "reward"
    min_diff: float = 0.0
    significant: bool = False


class HoldoutGate(_Strict):
    """No holdout grader may regress beyond its interval: fail when the upper end of the paired interval of
    ``Δ score`` is below ``−tolerance`` (a regression the data is sure of)."""

    graders: list[str] | Literal["all"] = "all"
    tolerance: float = Field(0.0, ge=0)


class EfficiencyGate(_Strict):
    """Absolute limits on the candidate's means, and ratios candidate / baseline (denominators floored at 1e-9)."""

    max_tool_calls_per_traj: float | None = None
    max_latency_s: float | None = None
    max_completion_tokens: float | None = None
    max_tool_call_ratio: float | None = None
    max_latency_ratio: float | None = None
    max_completion_token_ratio: float | None = None


class MonitorGate(_Strict):
    """Monitor alerts at any step up to the checkpoint block promotion, except signals listed in ``allow``
    (a name like ``length_growth`` or a family like ``holdout_gap``)."""

    allow: list[str] = Field(default_factory=list)


class AuditGate(_Strict):
    """Human verdicts on the candidate's audited trajectories: at least ``min_reviewed`` verdicts, at most
    ``max_failed`` with a failing verdict (``fail``, ``hack``, ``unsafe``)."""

    min_reviewed: int = Field(0, ge=0)
    max_failed: int = Field(0, ge=0)


class PromotionPolicy(_Strict):
    name: str = "default"
    safety: SafetyGate
    min_lift: LiftGate | None = Field(default_factory=LiftGate)
    holdouts: HoldoutGate | None = Field(default_factory=HoldoutGate)
    efficiency: EfficiencyGate | None = None
    monitors: MonitorGate | None = Field(default_factory=MonitorGate)
    audits: AuditGate | None = Field(default_factory=AuditGate)
    waive: list[str] = Field(default_factory=list)
    confidence: float = Field(0.95, gt=0, lt=1)
    n_boot: int = Field(2000, ge=100)
    base_dir: str = Field(".", description="set by the loader: the policy file's directory")

    @field_validator("waive")
    @classmethod
    def _waive(cls, v: list[str]) -> list[str]:
        for g in v:
            if g == "safety":
                raise ValueError("the safety gate cannot be waived")
            if g not in WAIVABLE:
                raise ValueError(f"unknown gate {g!r} (waivable gates: {', '.join(WAIVABLE)})")
        return v

    @model_validator(mode="after")
    def _safety_file(self) -> "PromotionPolicy":
        g = self.safety.grader
        if isinstance(g, str) and g.endswith(".json"):
            import json

            p = Path(g) if Path(g).is_absolute() else Path(self.base_dir) / g
            try:
                self.safety.grader = json.loads(p.read_text())
            except OSError as e:
                raise ValueError(f"safety.grader: cannot read {p}: {e.strerror}") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"safety.grader: {p}:{e.lineno}: not valid JSON: {e.msg}") from None
        return self


def parse_policy(data: Any, *, base_dir: str | Path = ".", source: str = "<policy>") -> PromotionPolicy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the policy must be a mapping, got {type(data).__name__}")
    if "safety" not in data:
        raise PolicyError(f"{source}: safety: required — every promotion policy has a safety gate "
                          "(e.g. safety: {grader: <name or grader JSON>, min_pass_rate: 1.0})")
    data = {**data, "base_dir": str(base_dir)}
    try:
        return PromotionPolicy.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"{source}: {loc or '(top level)'}: {err['msg']}")
        raise PolicyError("\n".join(lines)) from None


def load_policy(path: str | Path) -> PromotionPolicy:
    from agentrft.config import read_yaml

    path = Path(path)
    data = read_yaml(path, PolicyError)
    return parse_policy(data, base_dir=path.parent.resolve(), source=str(path))
