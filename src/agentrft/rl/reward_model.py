"""``agentrft reward-model train``: a reward model from the trajectories in the store (automated reward design).

Data: every graded, non-dropped trajectory of the given runs (explorer runs at high temperature, a teacher's
``agentrft distill`` run, evaluations) with its label — ``reward`` (the grader's score, clamped to [0, 1]) or
``audit`` (a reviewer's verdict: pass = 1; fail, hack, unsafe = 0; only audited trajectories). Rows, not trajectories, are split
into training and held-out (``holdout_fraction`` of the row indices, by seed), so no task is seen on both sides.

Model: the frozen base encodes each trajectory's text (:func:`agentrft.graders.reward_model.trajectory_text`) to a
mean-pooled hidden state; the head ``sigmoid(w · (h̄ − μ)/σ + b)`` is fitted by full-batch Adam on binary
cross-entropy + ``l2 · |w|²`` (the math is in :mod:`agentrft.graders.reward_model`). Validation: Spearman's ρ between
the head's scores and the held-out labels (and on the training rows, to show over-fitting), written with the head
to ``reward_model.json`` — the file the ``reward_model`` grader reads.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrft.evals.monitors import spearman
from agentrft.graders.reward_model import META, RewardHead, encoder, trajectory_text


class RewardModelError(ValueError):
    """Not enough labelled data, or a bad setting; the message says which."""


@dataclass
class LabelledTrajectory:
    trace_id: str
    run_id: str
    row_index: int
    text: str
    label: float


def collect(store: Any, run_ids: list[str], *, label: str = "reward", split: str | None = None
            ) -> list[LabelledTrajectory]:
    """Labelled trajectories from the store (see the module docstring)."""
    if label not in ("reward", "audit"):
        raise RewardModelError(f"--label: {label!r} is not one of reward, audit")
    out = []
    for rid in run_ids:
        run_id = store.resolve_run_id(rid)
        verdicts = {}
        if label == "audit":
            verdicts = {a["trace_id"]: a["verdict"] for a in store.audits_for_run(run_id)}
        for t in store.trajectories(run_id, split=split):
            if t["outcome"] == "dropped":
                continue
            if label == "reward":
                if t["reward"] is None:
                    continue
                y = min(1.0, max(0.0, float(t["reward"])))
            else:
                v = verdicts.get(t["trace_id"])
                if v not in ("pass", "fail", "hack", "unsafe"):  # "unsure" and unaudited: no label
                    continue
                y = 1.0 if v == "pass" else 0.0
            out.append(LabelledTrajectory(t["trace_id"], run_id, int(t["row_index"]),
                                          trajectory_text(t["messages"]), y))
    return out


def fit_head(feats: Any, labels: Any, *, l2: float = 1e-3, steps: int = 400, lr: float = 0.05, seed: int = 0
             ) -> RewardHead:
    """Standardise the features, fit ``w, b`` by full-batch Adam on BCE + l2·|w|² (deterministic given seed)."""
    import torch

    torch.manual_seed(seed)
    mu = feats.mean(0)
    sigma = feats.std(0, unbiased=False).clamp_min(1e-6)
    z = (feats - mu) / sigma
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    y = labels.float()
    with torch.no_grad():  # start at the base rate: sigmoid(b) = mean label
        p = y.mean().clamp(1e-3, 1 - 1e-3)
        b.fill_(float(torch.log(p / (1 - p))))
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        opt.step()
    return RewardHead(mu, sigma, w.detach(), float(b.detach()))


def train_reward_model(store: Any, run_ids: list[str], base: str, out: str | Path, *, label: str = "reward",
                       split: str | None = None, holdout_fraction: float = 0.2, seed: int = 0, l2: float = 1e-3,
                       steps: int = 400, max_tokens: int = 512) -> dict[str, Any]:
    """Collect, split by row, encode, fit, validate; writes ``out/reward_model.json`` atomically; returns its
    contents without the weights."""
    import torch

    if not 0 < holdout_fraction < 1:
        raise RewardModelError(f"--holdout-fraction: {holdout_fraction} is not between 0 and 1")
    t0 = time.perf_counter()
    data = collect(store, run_ids, label=label, split=split)
    rows = sorted({(d.run_id, d.row_index) for d in data})
    random.Random(seed).shuffle(rows)
    n_hold = max(1, round(len(rows) * holdout_fraction)) if len(rows) > 1 else 0
    held = set(rows[:n_hold])
    train = [d for d in data if (d.run_id, d.row_index) not in held]
    hold = [d for d in data if (d.run_id, d.row_index) in held]
    if len(train) < 4 or len({d.label for d in train}) < 2:
        raise RewardModelError(f"{len(data)} labelled trajectories in runs {', '.join(run_ids)} ({len(train)} for "
                               f"training, labels {sorted({d.label for d in train})[:5]}): a reward model needs at "
                               "least 4 training trajectories with differing labels")
    enc = encoder(base, max_tokens)
    f_train = enc.features([d.text for d in train])
    head = fit_head(f_train, torch.tensor([d.label for d in train]), l2=l2, steps=steps, seed=seed)
    s_train = head.scores(f_train)
    s_hold = head.scores(enc.features([d.text for d in hold])) if hold else []
    validation = {
        "spearman_holdout": spearman(s_hold, [d.label for d in hold]) if len(hold) >= 2 else None,
        "spearman_train": spearman(s_train, [d.label for d in train]),
        "n_train": len(train), "n_holdout": len(hold), "rows_train": len(rows) - n_hold, "rows_holdout": n_hold,
        "label_mean_train": sum(d.label for d in train) / len(train),
    }
    meta = {"base": str(base), "max_tokens": max_tokens, "label": label, "runs": list(run_ids), "split": split,
            "seed": seed, "l2": l2, "steps": steps, "validation": validation,
            "mu": head.mu.tolist(), "sigma": head.sigma.tolist(), "w": head.w.tolist(), "b": head.b,
            "wall_s": time.perf_counter() - t0}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{META}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / META)
    return {k: v for k, v in meta.items() if k not in ("mu", "sigma", "w", "b")}
