"""Agent metrics over a set of trajectories (always reported, per step and per checkpoint).

Names follow OpenAI's RFT dashboards where one exists (``reward_mean``, per-grader means, grader error counts)
and add the agent metrics of the design guide. Dropped rollouts are excluded from every mean except
``dropped_fraction`` (Agent RFT contract: not scored, not trained on).
"""

from __future__ import annotations

from collections import Counter
from statistics import fmean
from typing import Any

from agentrft.types import Trajectory


def _mean(xs: list[float]) -> float:
    return float(fmean(xs)) if xs else 0.0


def passed(traj: Trajectory) -> bool:
    """A trajectory passes when its reward grade says so (pass_threshold), else when its reward is ≥ 0.999."""
    g = traj.grades[0] if traj.grades else None
    if g is not None and g.passed is not None:
        return bool(g.passed)
    return (traj.reward or 0.0) >= 0.999


def agent_metrics(trajs: list[Trajectory]) -> dict[str, Any]:
    kept = [t for t in trajs if not t.dropped]
    m: dict[str, Any] = {
        "trajectories": len(trajs),
        "dropped_fraction": (len(trajs) - len(kept)) / len(trajs) if trajs else 0.0,
        "reward_mean": _mean([t.reward or 0.0 for t in kept]),
        "pass_rate": _mean([1.0 if passed(t) else 0.0 for t in kept]),
        "tool_calls_per_traj": _mean([t.num_tool_calls for t in kept]),
        "tool_errors_per_traj": _mean([t.tool_errors for t in kept]),
        "turns_per_traj": _mean([t.num_turns for t in kept]),
        "completion_tokens_mean": _mean([t.completion_tokens for t in kept]),
        "latency_s_mean": _mean([t.latency_s for t in kept]),
        "tool_time_s_mean": _mean([t.tool_time_s for t in kept]),
        "repeated_bigram_fraction": _mean([t.repeated_bigram_fraction for t in kept]),
        "tokens_per_tool_call": _mean(
            [t.completion_tokens / t.num_tool_calls for t in kept if t.num_tool_calls]
        ),
    }
    outcomes = Counter(t.outcome for t in trajs)
    for k, v in sorted(outcomes.items()):
        m[f"outcome/{k}"] = v
    tool_status = Counter(c.status for t in kept for c in t.tool_calls)
    for k, v in sorted(tool_status.items()):
        if k != "ok":
            m[f"tool_status/{k}"] = v
    m["tool_parse_errors"] = sum(1 for t in kept for turn in t.turns if turn.parse_error)
    # per grader: mean score, plus sub-rewards of a multi; grader error counts and means
    by_grader: dict[str, list[float]] = {}
    errors: Counter[str] = Counter()
    graded = 0
    for t in kept:
        for g in t.grades:
            by_grader.setdefault(g.grader_name, []).append(g.score)
            for sub, v in g.sub_rewards.items():
                by_grader.setdefault(f"{g.grader_name}.{sub}", []).append(float(v))
            for flag, on in g.errors.items():
                if on:
                    errors[flag] += 1
        graded += 1 if t.grades else 0
    for name, xs in sorted(by_grader.items()):
        m[f"grader/{name}"] = _mean(xs)
    for flag, n in sorted(errors.items()):
        m[f"grader_errors/{flag}"] = n
        m[f"grader_errors_mean/{flag}"] = n / graded if graded else 0.0
    m["grader_error_count"] = sum(errors.values())
    return m
