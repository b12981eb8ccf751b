"""The sequential test (mSPRT, normal mixture) against numbers worked by hand, its false-alarm control under
repeated looks (simulated, seeded), and the rollout policy's field-named errors."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from agentrft.gate.rollout_policy import RolloutPolicyError, load_rollout_policy, parse_rollout_policy
from agentrft.gate.sequential import ArmStats, compare, cs_radius, msprt_lambda

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rollout.yaml"


def test_lambda_and_radius_by_hand():
    # V = 0.01, τ² = 0.01, Δ̂ = 0.2:  Λ = sqrt(0.01/0.02) · exp(0.01·0.04 / (2·0.01·0.02)) = 0.70711 · e^1
    assert msprt_lambda(0.2, 0.01, 0.01) == pytest.approx(math.sqrt(0.5) * math.e, rel=1e-12)  # 1.92211
    # Δ̂ = 0 gives the smallest Λ, sqrt(V/(V+τ²)) < 1: no evidence against "no difference"
    assert msprt_lambda(0.0, 0.01, 0.01) == pytest.approx(math.sqrt(0.5))
    # r = sqrt(2·0.01·0.02/0.01 · log(sqrt(2)/0.05)) = sqrt(0.04 · log 28.2843) = sqrt(0.04 · 3.342306) = 0.365640
    assert cs_radius(0.01, 0.01, 0.05) == pytest.approx(0.365640, abs=1e-6)
    # the interval's edge is exactly where Λ(δ₀) crosses 1/α
    r = cs_radius(0.01, 0.01, 0.05)
    assert msprt_lambda(0.2, 0.01, 0.01, delta0=0.2 + r) == pytest.approx(20.0, rel=1e-9)


def test_compare_by_hand():
    # candidate 4 × 0 and 6 × 1 (mean 0.6, s² = 0.26667), production 8 × 0 and 32 × 1 (mean 0.8, s² = 0.16410)
    cand = ArmStats.of([0.0] * 4 + [1.0] * 6)
    prod = ArmStats.of([0.0] * 8 + [1.0] * 32)
    assert cand.variance() == pytest.approx(0.266667, abs=1e-6) and prod.variance() == pytest.approx(0.164103, abs=1e-6)
    c = compare("q", cand, prod, margin=0.0, alpha=0.05, tau=0.1)
    V = 0.266667 / 10 + 0.164103 / 40  # 0.030769
    r = math.sqrt(2 * V * (V + 0.01) / 0.01 * math.log(math.sqrt((V + 0.01) / V) / 0.05))  # 0.531…
    assert c.diff == pytest.approx(-0.2) and c.hi - c.lo == pytest.approx(2 * r, rel=1e-5)
    assert c.verdict == "inconclusive"  # −0.2 ± 0.53: ten samples cannot tell
    # 200 vs 800 samples with the same means: now the interval excludes 0 on the bad side
    big = compare("q", ArmStats.of([0.0] * 80 + [1.0] * 120), ArmStats.of([0.0] * 160 + [1.0] * 640))
    assert big.verdict == "worse" and big.hi < 0
    # lower is better (tool calls): a candidate with more calls is worse
    more = compare("tool_calls", ArmStats.of([3.0] * 100), ArmStats.of([1.0] * 100), direction=-1, margin=0.5)
    assert more.verdict == "worse"
    assert compare("x", ArmStats(), prod).verdict == "no_data"


def test_false_alarms_stay_below_alpha_under_repeated_looks():
    """Equal arms (Bernoulli 0.8), looked at after every 10 new samples up to 1,000: the share of simulated rollouts
    ever called 'worse' stays below α = 0.05 (a t-test repeated at each look would exceed it several times)."""
    rng = random.Random(0)
    alarms, naive = 0, 0
    runs = 300
    for _ in range(runs):
        a, b = ArmStats(), ArmStats()
        flagged = naive_flag = False
        for look in range(100):
            for _ in range(10):
                a.add(float(rng.random() < 0.8))
                b.add(float(rng.random() < 0.8))
            c = compare("q", a, b, alpha=0.05, tau=0.1, var_floor=0.0001)
            flagged |= c.verdict == "worse"
            se = math.sqrt(a.variance(1e-4) / a.n + b.variance(1e-4) / b.n)
            naive_flag |= (a.mean - b.mean) / se < -1.645  # one-sided z-test at 5 %, at every look
        alarms += flagged
        naive += naive_flag
    assert alarms / runs < 0.05
    assert naive / runs > 0.15  # what peeking does to a fixed-sample test


def test_example_policy_loads_and_errors_name_the_field(tmp_path):
    p = load_rollout_policy(EXAMPLE)
    assert p.schedule == [0.05, 0.25, 0.5, 1.0] and p.safety.graders == ["safety"]
    base = {"graders": [{"type": "safety", "name": "safety", "forbidden_tools": ["x"]}],
            "safety": {"graders": ["safety"]}}
    assert parse_rollout_policy(base).min_samples == 20
    cases = [
        ({"schedule": [0.5, 0.25]}, "schedule: weight 1 (0.25) is not above weight 0"),
        ({"schedule": [0.05, 1.5]}, "schedule"),
        ({"safety": {"graders": ["safe"]}}, "safety.graders.0: no online grader named 'safe'"),
        ({"safety": {"graders": []}}, "safety.graders"),
        ({"safety": {"graders": ["safety"], "max_violation_rate": 0.9}}, "safety.max_violation_rate"),
        ({"kpis": [{"name": "nope"}]}, "kpis.0.name: 'nope' is neither"),
        ({"graders": [{"type": "nonsense"}]}, "graders: grader 0: grader.type: unknown grader type"),
        ({"min_sampels": 3}, "did you mean 'min_samples'"),
        ({"waive": ["safety"]}, "waive: a rollout policy has no waivers"),
    ]
    for patch, want in cases:
        with pytest.raises(RolloutPolicyError) as e:
            parse_rollout_policy({**base, **patch}, source="rollout.yaml")
        assert want in str(e.value) and "rollout.yaml" in str(e.value), (patch, str(e.value))
    with pytest.raises(RolloutPolicyError, match="safety: required"):
        parse_rollout_policy({"graders": base["graders"]}, source="r.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [0.1\n")
    with pytest.raises(RolloutPolicyError, match="bad.yaml"):
        load_rollout_policy(bad)
