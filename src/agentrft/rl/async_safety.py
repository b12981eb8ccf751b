"""Async-safety monitor: is the batch we are about to train on sampled by the policy we think sampled it?

Two signals per train step, recorded as metrics and alerted on (alerts join the step's ``alerts`` like the other
monitors', so ``monitors.pause_on_alert`` applies to them too):

* ``policy_lag`` — for each trajectory, ``lag = N_learner − N_sampled`` where ``N_learner`` is the version of the
  learner's weights the batch is trained from (``policy-(step−1)``) and ``N_sampled`` the version the trajectory was
  stamped with (its ``checkpoint_id`` ends ``policy-N``). Recorded: ``policy_lag_mean``, ``policy_lag_max``; alert
  when the max exceeds the allowed staleness (0 for synchronous training).

* ``sampler_mismatch_kl`` — the KL between the sampler's and the learner's distributions, estimated at the sampled
  tokens. With ``x ∼ π_s`` (the sampler), ``r = log π_θ(x) − log π_s(x)`` (the learner's recomputed log-prob minus the
  sampler's recorded one):

      KL(π_s ‖ π_θ) = E_{x∼π_s}[−r] = E_{x∼π_s}[e^r − 1 − r]        (since E_{π_s}[e^r] = Σ π_θ = 1)

  so the mean of ``k3 = e^r − 1 − r`` over sampled tokens is an unbiased, per-token non-negative estimate (the same
  estimator as the KL penalty in :mod:`agentrft.rl.loss`). In-sync weights give numerics only (~1e-7 in fp32); an
  engine still sampling an old adapter gives the KL of one update, orders of magnitude more. Also recorded:
  ``sampler_logprob_diff_max = max |r|``. Alert when the mean exceeds ``sampler.mismatch_kl_alert``.

The lag alone cannot see the silent failure — the engine answering under the new version's name with the old
weights — because the label is right; the KL sees it, since it compares what was sampled with what is trained.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

import torch

from agentrft.evals.monitors import Alert

_VERSION = re.compile(r"policy-(\d+)$")


def policy_index(version: str | None) -> int | None:
    """``run-x:policy-7`` → 7; None for labels of another shape."""
    m = _VERSION.search(version or "")
    return int(m.group(1)) if m else None


def policy_lag(trajs: Iterable[Any], learner_version: int) -> tuple[float, int]:
    """``(mean, max)`` of ``learner_version − N_sampled`` over trajectories with a ``policy-N`` label."""
    lags = [learner_version - i for i in (policy_index(t.checkpoint_id) for t in trajs) if i is not None]
    return (sum(lags) / len(lags), max(lags)) if lags else (0.0, 0)


@torch.no_grad()
def learner_logprobs(learner: Any, trajs: list[Any]) -> dict[str, list[float]]:
    """Trace id → the learner's current log-prob of each token given its prefix (0.0 where the loss mask is 0),
    aligned with ``token_ids``; one no-grad forward over the trajectories that have sampled tokens."""
    from agentrft.policy.learner import _pad_batch

    model = learner.model
    was_training = model.training
    model.eval()
    out: dict[str, list[float]] = {}
    try:
        trajs = [t for t in trajs if any(t.loss_mask)]
        for k in range(0, len(trajs), learner.micro_batch_size):
            mb = trajs[k : k + learner.micro_batch_size]
            ids = _pad_batch([t.token_ids for t in mb], learner.pad_id, torch.long)
            attn = _pad_batch([[1] * len(t.token_ids) for t in mb], 0, torch.long)
            mask = _pad_batch([t.loss_mask[1:] for t in mb], 0.0, torch.float32)
            new, _ = learner._token_logprobs(model, ids, attn, where=mask > 0)
            for j, t in enumerate(mb):
                out[t.trace_id] = [0.0] + (new[j, : len(t.token_ids) - 1] * mask[j, : len(t.token_ids) - 1]).tolist()
    finally:
        if was_training:
            model.train()
    return out


def mismatch(trajs: list[Any], learner_lps: dict[str, list[float]]) -> tuple[float, float, int]:
    """``(mean k3 KL, max |r|, tokens)`` over the sampled tokens of ``trajs`` (see the module docstring)."""
    num, worst, n = 0.0, 0.0, 0
    for t in trajs:
        new = learner_lps.get(t.trace_id)
        if new is None:
            continue
        for b, p, m in zip(t.logprobs, new, t.loss_mask):
            if m:
                r = p - b
                num += math.expm1(r) - r
                worst = max(worst, abs(r))
                n += 1
    return (num / n if n else 0.0), worst, n


def sampler_mismatch(learner: Any, trajs: list[Any]) -> tuple[float, float, int]:
    """:func:`mismatch` with the learner's current weights (call it before the update)."""
    return mismatch(trajs, learner_logprobs(learner, trajs))


class AsyncSafetyMonitor:
    def __init__(self, *, mismatch_kl_alert: float, max_lag: int = 0, check_mismatch: bool = True):
        self.kl_alert = float(mismatch_kl_alert)
        self.max_lag = int(max_lag)
        self.check_mismatch = check_mismatch
        self._measured: dict[int, dict[str, float]] = {}
        self._logprobs: dict[int, dict[str, list[float]]] = {}

    def measure(self, step: int, trajs: list[Any], learner: Any, *, keep_logprobs: bool = False) -> dict[str, float]:
        """Before the update of ``step``: the lag and the mismatch of its batch. The mismatch alert looks at the
        trajectories sampled by the learner's current version only (lag 0): an older version's tokens differ from
        the learner by design (async training), and are reported apart as ``offpolicy_kl``. ``keep_logprobs``:
        keep the learner's log-probs for :meth:`proximal` (truncated importance sampling)."""
        mean_lag, max_lag = policy_lag(trajs, step - 1)
        m: dict[str, float] = {"policy_lag_mean": mean_lag, "policy_lag_max": float(max_lag)}
        if self.check_mismatch or keep_logprobs:
            lps = learner_logprobs(learner, trajs)
            current = [t for t in trajs if policy_index(t.checkpoint_id) in (step - 1, None)]
            kl, worst, n = mismatch(current, lps)
            m.update({"sampler_mismatch_kl": kl, "sampler_logprob_diff_max": worst, "sampler_mismatch_tokens": n})
            if len(current) < len(trajs):
                m["offpolicy_kl"] = mismatch(trajs, lps)[0]
            if keep_logprobs:
                self._logprobs[step] = lps
        self._measured[step] = m
        return m

    def proximal(self, step: int) -> dict[str, list[float]]:
        """The learner's log-probs kept by :meth:`measure` for ``step`` (handed over once)."""
        return self._logprobs.pop(step)

    def discard(self, step: int) -> None:
        """Drop what :meth:`measure` kept for ``step`` (a step that trained nothing never asked for it)."""
        self._logprobs.pop(step, None)

    def report(self, step: int, metrics: dict[str, Any], monitor: Any = None) -> list[Alert]:
        """After the step's other monitors: its measurements into ``metrics``, and alerts (added to ``metrics``'
        ``alerts`` and to ``monitor.history``, as :class:`agentrft.evals.monitors.Monitor` records its own)."""
        m = self._measured.pop(step, None)
        if m is None:
            return []
        metrics.update(m)
        alerts: list[Alert] = []
        if m["policy_lag_max"] > self.max_lag:
            alerts.append(Alert("policy_lag", step, "train", m["policy_lag_max"], float(self.max_lag),
                                f"a trajectory was sampled {int(m['policy_lag_max'])} updates behind the learner "
                                f"(allowed: {self.max_lag})"))
        kl = m.get("sampler_mismatch_kl")
        if kl is not None and m.get("sampler_mismatch_tokens") and (kl > self.kl_alert or not math.isfinite(kl)):
            alerts.append(Alert("sampler_mismatch_kl", step, "train", kl, self.kl_alert,
                                f"sampler and learner disagree on the sampled tokens: mean KL {kl:.3g} > "
                                f"{self.kl_alert:g} (max |Δ log p| {m['sampler_logprob_diff_max']:.3g}) — the "
                                "engine is not sampling the weights being trained (a missed weight sync?)"))
        for a in alerts:
            metrics[f"alert/{a.signal}"] = 1.0
        metrics["alerts"] = list(metrics.get("alerts") or []) + [a.as_dict() for a in alerts]
        metrics["alert_count"] = len(metrics["alerts"])
        if monitor is not None:
            monitor.history += alerts
        return alerts


__all__ = ["AsyncSafetyMonitor", "policy_index", "policy_lag", "sampler_mismatch"]
