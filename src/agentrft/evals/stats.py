"""Paired bootstrap confidence intervals for checkpoint comparisons.

Two policies evaluated on the same items (same seeds per item and sample) give paired per-item values
``a_i`` and ``b_i`` (each the mean over that item's samples). The difference of means ``Δ = mean(b − a)``
gets a percentile bootstrap interval: resample items with replacement B times, recompute Δ each time, and
take the (α/2, 1 − α/2) quantiles. Pairing removes between-item variance, which is most of the variance on
agent tasks, so the interval is much tighter than comparing two unpaired means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np


@dataclass
class PairedDiff:
    mean_a: float
    mean_b: float
    diff: float
    lo: float
    hi: float
    n: int
    confidence: float

    @property
    def significant(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.mean_a, "b": self.mean_b, "diff": self.diff, "ci_low": self.lo, "ci_high": self.hi,
                "n_items": self.n, "confidence": self.confidence}


def paired_bootstrap(a: Iterable[float], b: Iterable[float], *, n_boot: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> PairedDiff:
    xa, xb = np.asarray(list(a), dtype=float), np.asarray(list(b), dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs the same items on both sides ({len(xa)} vs {len(xb)})")
    n = len(xa)
    if n == 0:
        return PairedDiff(0.0, 0.0, 0.0, 0.0, 0.0, 0, confidence)
    d = xb - xa
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = d[idx].mean(axis=1)
    alpha = 1 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return PairedDiff(float(xa.mean()), float(xb.mean()), float(d.mean()), float(lo), float(hi), n, confidence)
