"""The per-token advantages a train step hands the learner, from the configured levers.

In order: the episode advantage on every sampled token plus per-turn process credit (``turn_credit_coef``,
:func:`agentrft.rl.advantages.token_advantages`); with ``advantage: gigpo`` the step-level credit of
:mod:`agentrft.rl.step_credit`; with ``loss: segment_dpo | mixed`` the segment preferences of
:mod:`agentrft.rl.segment_dpo`. Returns which trajectories are trained and their advantages, plus metrics.
"""

from __future__ import annotations

from typing import Any

from agentrft.rl.advantages import token_advantages, turn_baselines
from agentrft.rl.segment_dpo import combine, segment_pairs
from agentrft.rl.step_credit import add_step_credit, step_advantages
from agentrft.types import Trajectory


def step_token_advantages(trajs: list[Trajectory], hp: Any
                          ) -> tuple[list[Trajectory], dict[str, list[float]], dict[str, float]]:
    """(trajectories to train, per-token advantages by trace id, metrics) for one step whose episode advantages
    (``traj.advantage``) are assigned."""
    trained = [t for t in trajs if t.advantage is not None]
    base = turn_baselines(trained) if hp.turn_credit_coef else {}
    advs = {t.trace_id: token_advantages(t, hp.turn_credit_coef, base.get(t.group_id, 0.0)) for t in trained}
    metrics: dict[str, float] = {}
    if hp.advantage == "gigpo":
        g = hp.gigpo
        turn_advs, stats = step_advantages(trained, gamma=g.gamma, state=g.state, normalize=g.normalize)
        advs = {t.trace_id: add_step_credit(advs[t.trace_id], t, turn_advs.get(t.trace_id, []), g.step_coef)
                for t in trained}
        metrics.update({f"gigpo/{k}": v for k, v in stats.items()})
    if hp.loss in ("segment_dpo", "mixed"):
        d = hp.segment_dpo
        pairs = segment_pairs(trajs, min_reward_gap=d.min_reward_gap, max_pairs_per_group=d.max_pairs_per_group)
        by_id = {t.trace_id: t for t in trajs}
        advs = combine(advs, by_id, pairs, mode=hp.loss, beta=d.beta, mix_coef=d.mix_coef,
                       segment_turns=d.segment_turns)
        trained = [t for t in trajs if t.trace_id in advs]
        metrics["segment_dpo/pairs"] = float(len(pairs))
        metrics["segment_dpo/divergence_turn_mean"] = (sum(p.turn for p in pairs) / len(pairs)) if pairs else 0.0
    return trained, advs, metrics
