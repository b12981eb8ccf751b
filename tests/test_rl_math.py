"""Advantages and the clipped loss against hand-worked values."""

import math

import pytest
import torch

from agentrft.rl.advantages import assign_advantages, group_advantages, token_advantages
from agentrft.rl.loss import clipped_policy_loss
from agentrft.types import Grade, Trajectory, Turn


def test_group_advantages_hand_worked():
    r = [1.0, 0.0, 0.0, 1.0]  # mean 0.5, population std 0.5
    assert group_advantages(r, "grpo") == pytest.approx([1.0, -1.0, -1.0, 1.0], abs=1e-5)
    assert group_advantages(r, "dr_grpo") == pytest.approx([0.5, -0.5, -0.5, 0.5])
    # leave-one-out: 1 - (0+0+1)/3 = 2/3 ; 0 - (1+0+1)/3 = -2/3
    assert group_advantages(r, "rloo") == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert group_advantages([0.3, 0.3, 0.3], "grpo") is None  # zero variance: no signal
    assert group_advantages([1.0], "rloo") is None
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(r, "ppo")


def _traj(group, reward, dropped=False):
    t = Trajectory(trace_id=f"t{group}{reward}{dropped}{id(object())}", row_index=0, group_id=group, reward=reward)
    t.outcome = "dropped" if dropped else "completed"
    return t


def test_assign_skips_zero_variance_and_dropped():
    trajs = [_traj("a", 1.0), _traj("a", 0.0), _traj("a", 0.0, dropped=True), _traj("b", 0.5), _traj("b", 0.5)]
    counts = assign_advantages(trajs, "dr_grpo")
    assert counts == {"groups": 2, "zero_variance_groups": 1, "trained_trajectories": 2}
    assert [t.advantage for t in trajs] == [0.5, -0.5, None, None, None]


def test_token_advantages_outcome_plus_turn_credit():
    t = Trajectory(trace_id="x", row_index=0, advantage=0.5)
    t.token_ids = list(range(8))
    t.loss_mask = [0, 0, 1, 1, 0, 1, 1, 1]
    t.turns = [Turn(0, 2, 4, ""), Turn(1, 5, 8, "")]
    t.grades = [Grade("p", "process", "v", 0.5, turn_scores=[1.0, 0.0])]
    assert token_advantages(t) == [0, 0, 0.5, 0.5, 0, 0.5, 0.5, 0.5]
    out = token_advantages(t, turn_coef=0.1, turn_baseline=0.5)
    assert out == pytest.approx([0, 0, 0.55, 0.55, 0, 0.45, 0.45, 0.45])


def test_token_loss_value_and_gradient():
    old = torch.tensor([[-1.0, -1.0, -2.0]])
    new = torch.tensor([[-1.0, -0.5, -2.5]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    loss, st = clipped_policy_loss(new, old, adv, mask, eps_low=0.2, eps_high=0.2, level="token", norm=3.0)
    r = [1.0, math.exp(0.5), math.exp(-0.5)]
    # token 2: ratio 1.6487 > 1.2 with A>0 → clipped at 1.2; token 3: ratio .6065 < .8 with A<0 → clipped at .8
    expected = -(1.0 * 1 + 1.2 * 1 + (-0.8)) / 3
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert st["clipped"] == 2
    loss.backward()
    # clipped tokens get no gradient; the unclipped one gets -A * ratio / norm
    assert new.grad.tolist()[0] == pytest.approx([-r[0] / 3, 0.0, 0.0])


def test_sequence_loss_is_gspo():
    old = torch.tensor([[-1.0, -1.0, 0.0]])
    new = torch.tensor([[-0.9, -1.1, 0.0]], requires_grad=True)
    adv = torch.tensor([[2.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, st = clipped_policy_loss(new, old, adv, mask, eps_low=0.2, eps_high=0.2, level="sequence", norm=1.0)
    # geometric mean ratio exp((0.1 - 0.1)/2) = 1 → loss = -2
    assert float(loss) == pytest.approx(-2.0)
    assert st["units"] == 1


def test_k3_kl_is_zero_at_reference_and_positive_elsewhere():
    lp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    z = torch.zeros_like(lp)
    mask = torch.ones_like(lp)
    _, st = clipped_policy_loss(lp, lp.detach(), z, mask, eps_low=0.2, eps_high=0.2, level="token", norm=2.0,
                                ref_lp=lp.detach(), kl_coef=0.1)
    assert st["kl_sum"] == pytest.approx(0.0)
    _, st = clipped_policy_loss(lp, lp.detach(), z, mask, eps_low=0.2, eps_high=0.2, level="token", norm=2.0,
                                ref_lp=lp.detach() - 0.5, kl_coef=0.1)
    d = -0.5
    assert st["kl_sum"] == pytest.approx(2 * (math.exp(d) - d - 1))
