"""Async off-policy training: truncated importance sampling worked by hand, the staleness schedule of the rollout
producer, the config's refusals, and (slow) a run with max_staleness 1 against a real `agentrft serve` process."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from agentrft.config import ConfigError, parse_config
from agentrft.rl.async_importance import decoupled_batch, tis_weights
from agentrft.rl.async_rollouts import AsyncRollouts, Batch
from agentrft.rl.async_safety import mismatch, policy_index, policy_lag
from agentrft.rl.loss import clipped_policy_loss
from agentrft.types import Trajectory

L = math.log


def _traj(trace: str, logprobs: list[float], mask: list[int], version: str | None = None) -> Trajectory:
    t = Trajectory(trace_id=trace, row_index=0, split="train", group_id="g", sample_index=0, messages=[],
                   checkpoint_id=version)
    t.token_ids, t.logprobs, t.loss_mask = list(range(len(mask))), logprobs, mask
    return t


def test_truncated_importance_sampling_by_hand():
    """One prompt token and three sampled ones; behaviour p = .5, .1, .4, proximal p = .25, .5, .4, cap 2:
    w = min(p_prox / p_behav, 2) = .5, 2 (5 truncated), 1. With current p = .3, .5, .6 the ratios to the proximal
    policy are 1.2, 1, 1.5 and with A = 1, -1, 2 (clip .2/.28) the per-token losses are
        -.5·min(1.2·1, 1.2·1) = -.6,   -2·min(1·-1, 1·-1) = 2,   -1·min(1.5·2, 1.28·2) = -2.56
    so the token-mean loss is (-.6 + 2 - 2.56) / 3 = -0.38667."""
    behav = [0.0, L(.5), L(.1), L(.4)]
    prox = [0.0, L(.25), L(.5), L(.4)]
    mask = [0, 1, 1, 1]
    assert tis_weights(behav, prox, mask, 2.0) == pytest.approx([1.0, .5, 2.0, 1.0])
    t = _traj("a", behav, mask)
    (t2,), (adv2,), stats = decoupled_batch([t], [[0.0, 1.0, -1.0, 2.0]], {"a": prox}, 2.0)
    assert t.logprobs == behav  # the recorded trajectory keeps the sampler's log-probs
    assert t2.logprobs == pytest.approx(prox) and adv2 == pytest.approx([0.0, .5, -2.0, 2.0])
    assert stats == pytest.approx({"tis_weight_mean": 3.5 / 3, "tis_truncated_fraction": 1 / 3})
    new = torch.tensor([[L(.3), L(.5), L(.6)]])
    loss, _ = clipped_policy_loss(new, torch.tensor([t2.logprobs[1:]]), torch.tensor([adv2[1:]]),
                                  torch.tensor([mask[1:]], dtype=torch.float32), eps_low=.2, eps_high=.28,
                                  level="token", norm=3.0)
    assert float(loss) == pytest.approx((-.6 + 2 - 2.56) / 3, abs=1e-6)


def test_lag_and_mismatch_by_hand():
    a = _traj("a", [0.0, L(.5), L(.2)], [0, 1, 1], "run-x:policy-3")
    b = _traj("b", [0.0, L(.5)], [0, 1], "run-x:policy-1")
    assert policy_index("run-x:policy-12") == 12 and policy_index("run-x:step-3") is None
    assert policy_lag([a, b], 3) == (1.0, 2)
    # learner p = .25 and .2 at a's sampled tokens: r = ln .5, 0 → k3 = (e^r − 1 − r) = (.5 − 1 + ln 2), 0
    kl, worst, n = mismatch([a], {"a": [0.0, L(.25), L(.2)]})
    assert n == 2 and worst == pytest.approx(math.log(2)) and kl == pytest.approx((-.5 + math.log(2)) / 2)


def test_the_producer_runs_at_most_max_staleness_updates_ahead():
    """Batch s may start once the learner's version v ≥ s − 1 − k: with k = 1, batches 1 and 2 start at once (from
    version 0), batch 3 waits for the update of step 1; batch s's cursor is handed over with it."""
    started: list[tuple[int, int]] = []
    gate = threading.Event()

    def make(step: int, version: int) -> Batch:
        started.append((step, version))
        return Batch(step, version, rows=[step], cursor=(0, step))

    prod = AsyncRollouts(make, first_step=1, last_step=4, max_staleness=1).start()
    try:
        b1 = prod.take(1)
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert started == [(1, 0), (2, 0)]  # step 3 waits: version 0 < 3 - 1 - 1
        assert b1.cursor == (0, 1) and b1.version == 0
        prod.updated(1)
        assert prod.take(2).version == 0
        assert prod.take(3).version == 1
        prod.updated(2)
        prod.updated(3)
        assert prod.take(4).version >= 2
        gate.set()
    finally:
        prod.close()
    assert [s for s, _ in started] == [1, 2, 3, 4]


def test_a_failed_batch_fails_the_step_that_takes_it():
    def make(step: int, version: int) -> Batch:
        if step == 2:
            raise RuntimeError("sampler: http://x/v1/completions: HTTP 503: busy")
        return Batch(step, version)

    prod = AsyncRollouts(make, first_step=1, last_step=3, max_staleness=2).start()
    prod.take(1)
    with pytest.raises(RuntimeError, match="HTTP 503"):
        prod.take(2)
    prod.close()


def test_config_refuses_async_without_a_remote_sampler_and_tis_with_the_sequence_loss():
    base = {"model": "m", "training_file": "t.jsonl", "grader": {"type": "string_check"}}
    with pytest.raises(ConfigError, match="max_staleness > 0 needs sampler.type: remote"):
        parse_config({**base, "rollout": {"max_staleness": 1}})
    remote = {"type": "remote", "base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError, match="tis_cap .* needs hyperparameters.loss: token"):
        parse_config({**base, "sampler": remote, "rollout": {"max_staleness": 1, "tis_cap": 2},
                      "hyperparameters": {"loss": "sequence"}})
    with pytest.raises(ConfigError, match=r"rollout.max_stalenes: .*did you mean 'max_staleness'"):
        parse_config({**base, "sampler": remote, "rollout": {"max_stalenes": 1}})
    cfg = parse_config({**base, "sampler": remote, "rollout": {"max_staleness": 2, "tis_cap": 2}})
    assert cfg.rollout.max_staleness == 2 and cfg.rollout.tis_cap == 2


@pytest.mark.slow
def test_async_run_against_agentrft_serve(tiny_model, lookup_files, tmp_path):
    """max_staleness 1 with truncated importance sampling, the sampler a real `agentrft serve` process that the
    trainer starts: every step trains, step 2's batch was sampled one update behind (it starts while step 1 trains),
    no lag beyond 1, no alert, every trajectory recorded once."""
    from proc_helpers import free_port, src_env
    from test_remote_sampler import _config, _serve_argv

    import os

    from agentrft.rl.trainer import train
    from agentrft.store import RunStore

    port = free_port()
    cfg = _config(tiny_model, lookup_files, tmp_path, {
        "type": "remote", "base_url": f"http://127.0.0.1:{port}/v1", "model": "tiny",
        "command": _serve_argv(tiny_model, port), "startup_timeout_s": 180})
    cfg.hyperparameters.max_steps = 3
    cfg.rollout.max_staleness = 1
    cfg.rollout.tis_cap = 2.0
    os.environ["PYTHONPATH"] = src_env()["PYTHONPATH"]
    run_id = train(cfg, progress=False)
    store = RunStore(cfg.store_url)
    metrics = {m["step"]: m for m in store.step_metrics(run_id, split="train")}
    assert sorted(metrics) == [1, 2, 3]
    assert metrics[1]["policy_lag_max"] == 0 and metrics[2]["policy_lag_max"] == 1
    assert all(m["policy_lag_max"] <= 1 and not m.get("alerts") for m in metrics.values())
    assert all(m["trained_trajectories"] > 0 and m["tis_weight_mean"] > 0 for m in metrics.values())
    assert "offpolicy_kl" in metrics[2]
    trajs = store.trajectories(run_id, split="train")
    assert len(trajs) == 3 * 8 and len({t["trace_id"] for t in trajs}) == 24
    by_step = {s: {t["checkpoint_id"] for t in trajs if t["step"] == s} for s in (1, 2, 3)}
    assert by_step[1] == {f"{run_id}:policy-0"} and by_step[2] == {f"{run_id}:policy-0"}
