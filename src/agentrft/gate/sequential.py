"""The sequential test a rollout uses to compare a candidate with production while traffic keeps arriving: the
mixture sequential probability ratio test (mSPRT) with a normal mixture, read as an always-valid confidence
sequence for the difference of means.

Why this one. A canary is looked at after every batch of requests; a fixed-sample test (a t-test at each look)
would raise false alarms far above its nominal rate under such repeated looks. The mSPRT's statistic is a
nonnegative martingale under the null, so by Ville's inequality ``P(∃n: Λ_n ≥ 1/α) ≤ α``: the false-alarm rate
holds however often and whenever we look, and we may stop at any time (Johari, Pekelis & Walsh, "Always valid
inference", 2017; Robbins 1970). It needs only running sums per arm, is one closed form, and its interval shrinks
like ``sqrt(log n / n)`` — the price of peeking is a log factor, not a Bonferroni over looks.

The math. Candidate scores ``x_1..x_{n_c}``, production scores ``y_1..y_{n_p}``; estimate and its variance::

    Δ̂ = mean(x) − mean(y)             V = s_x² / n_c + s_y² / n_p     (s² = max(sample variance, var_floor))

With the mixing distribution ``δ ~ N(δ₀, τ²)`` over the true difference, the likelihood ratio of "Δ ~ mixture"
against "Δ = δ₀" for the Gaussian approximation ``Δ̂ ~ N(Δ, V)`` is::

    Λ(δ₀) = sqrt( V / (V + τ²) ) · exp( τ² (Δ̂ − δ₀)² / (2 V (V + τ²)) )

Rejecting ``Δ = δ₀`` when ``Λ(δ₀) ≥ 1/α`` and collecting the ``δ₀`` not rejected gives the confidence sequence::

    CS_n = Δ̂ ± r,    r = sqrt( 2 V (V + τ²) / τ² · log( sqrt((V + τ²) / V) / α ) )

which contains the true Δ at every n simultaneously with probability ≥ 1 − α. The rollout reads it per KPI
(``direction`` +1 when higher is better, −1 when lower is better; ``margin`` the harm tolerated)::

    worse      when  direction · (upper or lower end) says Δ is beyond −margin:   direction=+1: hi < −margin
    not worse  when  direction=+1: lo > −margin     (direction=−1: hi < margin, lo > margin for worse)

Caveat, stated plainly: V is a plug-in estimate (the Gaussian approximation with estimated variances, as in the
paper's two-sample use); ``var_floor`` keeps it from collapsing when every early score is equal (e.g. 1.0).
``τ`` is the scale of differences we expect to matter (default 0.1 on 0..1 scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ArmStats:
    """Running sums of one arm's scores: enough for the mean, the variance and the test."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += float(x)
        self.total_sq += float(x) * float(x)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def variance(self, floor: float = 0.0) -> float:
        """Unbiased sample variance (``floor`` when n < 2), at least ``floor``."""
        if self.n < 2:
            return floor
        v = (self.total_sq - self.total * self.total / self.n) / (self.n - 1)
        return max(v, floor)

    @classmethod
    def of(cls, xs: list[float]) -> "ArmStats":
        a = cls()
        for x in xs:
            a.add(x)
        return a


def msprt_lambda(diff: float, var: float, tau2: float, delta0: float = 0.0) -> float:
    """``Λ(δ₀) = sqrt(V/(V+τ²)) · exp(τ² (Δ̂−δ₀)² / (2V(V+τ²)))`` (see the module docstring)."""
    if var <= 0 or tau2 <= 0:
        raise ValueError("msprt_lambda: var and tau2 must be positive")
    z = tau2 * (diff - delta0) ** 2 / (2 * var * (var + tau2))
    return math.sqrt(var / (var + tau2)) * math.exp(min(z, 700.0))


def cs_radius(var: float, tau2: float, alpha: float) -> float:
    """Half-width ``r = sqrt(2V(V+τ²)/τ² · log(sqrt((V+τ²)/V)/α))`` of the always-valid interval."""
    if var <= 0 or tau2 <= 0 or not 0 < alpha < 1:
        raise ValueError("cs_radius: var, tau2 > 0 and 0 < alpha < 1")
    return math.sqrt(2 * var * (var + tau2) / tau2 * math.log(math.sqrt((var + tau2) / var) / alpha))


@dataclass
class Comparison:
    """One KPI's verdict at this look."""

    kpi: str
    n_candidate: int
    n_production: int
    candidate_mean: float
    production_mean: float
    diff: float  # candidate − production
    lo: float  # always-valid interval for the difference
    hi: float
    p_value: float  # always-valid p-value of "no difference": min(1, 1/Λ(0))
    verdict: str  # "worse" | "not_worse" | "inconclusive" | "no_data"

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in self.__dict__.items()}


def compare(kpi: str, cand: ArmStats, prod: ArmStats, *, direction: int = 1, margin: float = 0.0,
            alpha: float = 0.05, tau: float = 0.1, var_floor: float = 0.01) -> Comparison:
    """The candidate vs production on one KPI (see the module docstring for the rule)."""
    if cand.n == 0 or prod.n == 0:
        return Comparison(kpi, cand.n, prod.n, cand.mean, prod.mean, float("nan"), float("-inf"), float("inf"), 1.0,
                          "no_data")
    diff = cand.mean - prod.mean
    var = cand.variance(var_floor) / cand.n + prod.variance(var_floor) / prod.n
    tau2 = tau * tau
    r = cs_radius(var, tau2, alpha)
    lo, hi = diff - r, diff + r
    p = min(1.0, 1.0 / msprt_lambda(diff, var, tau2))
    if direction >= 0:
        verdict = "worse" if hi < -margin else ("not_worse" if lo > -margin else "inconclusive")
    else:
        verdict = "worse" if lo > margin else ("not_worse" if hi < margin else "inconclusive")
    return Comparison(kpi, cand.n, prod.n, cand.mean, prod.mean, diff, lo, hi, p, verdict)
