"""The levers' math against hand-worked values: GiGPO step credit, segment-DPO pairs and advantages (and that the
clipped token loss over them has the DPO gradient at the sampling point), the curriculum's headroom, retirement
and sampling, dynamic sampling's budget."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from agentrft.config import CurriculumConfig, DynamicSamplingConfig, Hyperparameters
from agentrft.rl.curriculum import CurriculumPool, headroom
from agentrft.rl.dynamic_sampling import refill, signal_groups
from agentrft.rl.loss import build_loss
from agentrft.rl.segment_dpo import combine, dpo_token_advantages, segment_pairs
from agentrft.rl.step_advantages import step_token_advantages
from agentrft.rl.step_credit import add_step_credit, step_advantages, step_returns
from agentrft.rl.turn_keys import action_key, shared_prefix, state_keys
from agentrft.types import ToolCall, Trajectory, Turn


def _traj(tid: str, steps: list[tuple[str, str] | str], reward: float, group: str = "g", tokens_per_turn: int = 2,
          sample: int = 0) -> Trajectory:
    """A trajectory whose turns are tool calls (name, output) or a final text; each turn has ``tokens_per_turn``
    sampled tokens after one prompt token, and one observation token between turns."""
    t = Trajectory(trace_id=tid, row_index=0, group_id=group, reward=reward, sample_index=sample)
    ids, mask, pos = [0], [0], 1
    for k, s in enumerate(steps):
        start = pos
        ids += [1] * tokens_per_turn
        mask += [1] * tokens_per_turn
        pos += tokens_per_turn
        if isinstance(s, tuple):
            calls = [ToolCall(call_id=f"{tid}{k}", name=s[0], arguments='{"q": 1}', turn_index=k, output=s[1])]
            t.turns.append(Turn(k, start, pos, "", tool_calls=calls))
            ids.append(2)
            mask.append(0)  # the observation
            pos += 1
        else:
            t.turns.append(Turn(k, start, pos, s))
    t.token_ids, t.loss_mask, t.logprobs = ids, mask, [0.0] * len(ids)
    return t


# ---- turn keys ---------------------------------------------------------------------------------------------

def test_action_key_ignores_argument_order_and_spacing():
    a = Turn(0, 0, 1, "", tool_calls=[ToolCall("1", "grep", '{"a": 1, "b": 2}')])
    b = Turn(0, 0, 1, "", tool_calls=[ToolCall("2", "grep", '{"b":2,"a":1}')])
    assert action_key(a) == action_key(b)
    assert action_key(Turn(0, 0, 1, "FILES: x")) != action_key(Turn(0, 0, 1, "FILES: y"))


def test_state_keys_last_vs_history_and_shared_prefix():
    a = _traj("a", [("grep", "x"), ("read", "y"), "ans"], 1.0)
    b = _traj("b", [("list", "z"), ("read", "y"), "ans"], 0.0)
    la, lb = state_keys(a, "last"), state_keys(b, "last")
    assert la[0] == lb[0]  # the initial state
    assert la[1] != lb[1]  # after grep vs after list
    assert la[2] == lb[2]  # both just read y: the same anchor state
    ha, hb = state_keys(a, "history"), state_keys(b, "history")
    assert ha[0] == hb[0] and ha[2] != hb[2]  # histories differ from turn 1 on
    assert shared_prefix(a, b) == 0
    c = _traj("c", [("grep", "x"), "other"], 0.0)
    assert shared_prefix(a, c) == 1
    with pytest.raises(ValueError, match="unknown state mode"):
        state_keys(a, "both")


# ---- GiGPO step credit -------------------------------------------------------------------------------------

def test_step_returns_discount():
    t = _traj("a", [("grep", "x"), ("read", "y"), "ans"], 1.0)
    assert step_returns(t, 0.5) == pytest.approx([0.25, 0.5, 1.0])


def test_step_advantages_hand_worked():
    # three trajectories of one task. a: grep→read→answer (reward 1), b: grep→answer (0), c: list→answer (1)
    a = _traj("a", [("grep", "x"), ("read", "y"), "ans"], 1.0)
    b = _traj("b", [("grep", "x"), "wrong"], 0.0)
    c = _traj("c", [("list", "z"), "ans"], 1.0)
    adv, stats = step_advantages([a, b, c], gamma=0.5, state="last", normalize="none")
    # initial state: returns a 0.25, b 0.0, c 0.5 → mean 0.25
    assert adv["a"][0] == pytest.approx(0.0)
    assert adv["b"][0] == pytest.approx(-0.25)
    assert adv["c"][0] == pytest.approx(0.25)
    # after grep→x: a's turn 1 (return 0.5) and b's turn 1 (return 0.0) → mean 0.25
    assert adv["a"][1] == pytest.approx(0.25) and adv["b"][1] == pytest.approx(-0.25)
    # a's turn 2 (after read) and c's turn 1 (after list) are alone in their states: 0
    assert adv["a"][2] == 0.0 and adv["c"][1] == 0.0
    assert stats == {"step_groups": 4.0, "step_groups_with_signal": 2.0, "step_group_size_mean": 7 / 4}
    # std normalisation: the initial cell has std sqrt(((0)^2 + 0.25^2 + 0.25^2)/3) = 0.2041
    adv_s, _ = step_advantages([a, b, c], gamma=0.5, state="last", normalize="std")
    sd = math.sqrt(2 * 0.25**2 / 3)
    assert adv_s["c"][0] == pytest.approx(0.25 / sd, rel=1e-4)
    assert adv_s["a"][1] == pytest.approx(1.0, rel=1e-4)  # two members ±0.25, std 0.25


def test_step_advantages_separate_groups_and_skip_dropped():
    a = _traj("a", ["x"], 1.0, group="g1")
    b = _traj("b", ["x"], 0.0, group="g2")  # same state but another task: not compared
    d = _traj("d", ["y"], 0.0, group="g1")
    d.outcome = "dropped"
    adv, stats = step_advantages([a, b, d], gamma=1.0, normalize="none")
    assert adv == {"a": [0.0], "b": [0.0]} and stats["step_groups_with_signal"] == 0
    with pytest.raises(ValueError, match="normalisation"):
        step_advantages([a], normalize="z")


def test_add_step_credit_on_turn_tokens_only():
    a = _traj("a", [("grep", "x"), "ans"], 1.0)  # ids: p, t0, t0, obs, t1, t1
    out = add_step_credit([0.0, 1.0, 1.0, 0.0, 1.0, 1.0], a, [0.5, -1.0], coef=2.0)
    assert out == [0.0, 2.0, 2.0, 0.0, -1.0, -1.0]


def test_gigpo_through_step_token_advantages():
    hp = Hyperparameters(advantage="gigpo", gigpo={"step_coef": 1.0, "gamma": 1.0, "normalize": "none"})
    a = _traj("a", [("grep", "x"), "right"], 1.0)
    b = _traj("b", [("grep", "x"), "wrong"], 0.0)
    a.advantage, b.advantage = 1.0, -1.0
    trained, advs, m = step_token_advantages([a, b], hp)
    # turn 0: same state, both return... a 1, b 0 → ±0.5 ; turn 1: same state (after grep x) → ±0.5
    assert advs["a"] == pytest.approx([0, 1.5, 1.5, 0, 1.5, 1.5])
    assert advs["b"] == pytest.approx([0, -1.5, -1.5, 0, -1.5, -1.5])
    assert m["gigpo/step_groups_with_signal"] == 2.0 and len(trained) == 2


# ---- segment DPO -------------------------------------------------------------------------------------------

def test_segment_pairs_prefer_longest_shared_prefix():
    a = _traj("a", [("grep", "x"), "right"], 1.0, sample=0)
    b = _traj("b", [("grep", "x"), "wrong"], 0.0, sample=1)
    c = _traj("c", [("list", "z"), "wrong"], 0.0, sample=2)
    d = _traj("d", [("grep", "x"), "close"], 0.95, sample=3)
    pairs = segment_pairs([a, b, c, d], min_reward_gap=0.1, max_pairs_per_group=3)
    got = [(p.chosen.trace_id, p.rejected.trace_id, p.turn) for p in pairs]
    # candidates: a>b (k=1), a>c (k=0), d>b (k=1), d>c (k=0); a vs d gap 0.05 < 0.1
    assert got == [("a", "b", 1), ("d", "b", 1), ("a", "c", 0)]
    assert pairs[0].gap == 1.0
    # a trajectory that ended inside the shared prefix has no segment
    e = _traj("e", [("grep", "x")], 0.0)
    assert segment_pairs([a, e]) == []


def test_dpo_token_advantages_and_combine_hand_worked():
    a = _traj("a", [("grep", "x"), "right"], 1.0)  # mask 0 1 1 0 1 1
    b = _traj("b", [("grep", "x"), "wrong"], 0.0)
    pairs = segment_pairs([a, b])
    assert [(p.turn) for p in pairs] == [1]
    # N = 8 sampled tokens, P = 1, β = 0.5 → w = 0.5 · 0.5 · 8 / 1 = 2 on the diverging turn only
    adv = dpo_token_advantages(pairs, 8.0, beta=0.5)
    assert adv == {"a": [0, 0, 0, 0, 2.0, 2.0], "b": [0, 0, 0, 0, -2.0, -2.0]}
    by_id = {"a": a, "b": b}
    grpo = {"a": [0, 1, 1, 0, 1, 1], "b": [0, -1, -1, 0, -1, -1]}
    mixed = combine(grpo, by_id, pairs, mode="mixed", beta=0.5, mix_coef=0.5)
    assert mixed["a"] == [0, 1, 1, 0, 2, 2] and mixed["b"] == [0, -1, -1, 0, -2, -2]
    alone = combine(grpo, by_id, pairs, mode="segment_dpo", beta=0.5)
    assert alone == adv
    with pytest.raises(ValueError, match="segment-DPO mode"):
        combine(grpo, by_id, pairs, mode="dpo", beta=0.5)


def test_segment_turns_limits_the_segment():
    a = _traj("a", [("grep", "x"), ("read", "y"), "right"], 1.0)
    b = _traj("b", [("list", "z"), ("read", "y"), "wrong"], 0.0)
    pairs = segment_pairs([a, b])
    adv = dpo_token_advantages(pairs, 2.0, beta=2.0, segment_turns=1)  # w = 0.5·2·2/1 = 2, turn 0 only
    assert adv["a"] == [0, 2.0, 2.0, 0, 0, 0, 0, 0, 0]


def test_clipped_surrogate_over_dpo_advantages_has_the_dpo_gradient():
    """At the sampling point the learner's token loss over A^DPO has the gradient of
    −log σ(β[Σ_c(ℓ−ℓ°) − Σ_r(ℓ−ℓ°)]) for one pair (a real autograd check of the docstring's claim)."""
    a = _traj("a", [("grep", "x"), "right"], 1.0)
    b = _traj("b", [("grep", "x"), "wrong"], 0.0)
    beta, n_tok = 0.3, 8.0
    adv = dpo_token_advantages(segment_pairs([a, b]), n_tok, beta=beta)
    old = torch.tensor([[-0.7, -1.2, -0.1, -2.0, -0.9], [-0.3, -0.4, -0.8, -1.5, -2.2]])
    mask = torch.tensor([a.loss_mask[1:], b.loss_mask[1:]], dtype=torch.float32)
    advt = torch.tensor([adv["a"][1:], adv["b"][1:]])
    new = old.clone().requires_grad_(True)
    loss_fn = build_loss(Hyperparameters(loss="segment_dpo"))
    loss, _ = loss_fn(new, old, advt, mask, n_tokens=n_tok, n_seqs=2, ref_lp=None, kl_coef=0.0)
    loss.backward()
    new2 = old.clone().requires_grad_(True)
    seg_c = torch.tensor([0, 0, 0, 1.0, 1.0])  # turn 1 of the chosen trajectory (tokens 4, 5 → index 3, 4)
    h = beta * (((new2[0] - old[0]) * seg_c).sum() - ((new2[1] - old[1]) * seg_c).sum())
    (-torch.nn.functional.logsigmoid(h)).backward()
    assert torch.allclose(new.grad, new2.grad, atol=1e-6)
    assert float(new2.grad[0, 3]) == pytest.approx(-beta / 2)


def test_segment_dpo_through_step_token_advantages_trains_only_pairs():
    hp = Hyperparameters(loss="segment_dpo", segment_dpo={"beta": 1.0})
    a = _traj("a", [("grep", "x"), "right"], 1.0, sample=0)
    b = _traj("b", [("grep", "x"), "wrong"], 0.0, sample=1)
    c = _traj("c", [("grep", "x"), "wrong"], 0.0, group="other", sample=0)
    a.advantage, b.advantage = 1.0, -1.0
    trained, advs, m = step_token_advantages([a, b, c], hp)
    assert {t.trace_id for t in trained} == {"a", "b"} and m["segment_dpo/pairs"] == 1.0
    assert advs["a"][4] == pytest.approx(0.5 * 1.0 * 8 / 1)


# ---- curriculum ------------------------------------------------------------------------------------------

def _rows(n: int, tasks: list[str] | None = None) -> list[SimpleNamespace]:
    return [SimpleNamespace(index=i, item={"task": (tasks[i] if tasks else "t")}) for i in range(n)]


def test_headroom_hand_worked():
    assert headroom([]) == 1.0
    assert headroom([(0.5, 0.0)]) == 1.0  # 4 · .5 · .5
    assert headroom([(1.0, 0.0), (0.75, 0.2)]) == pytest.approx(max(4 * 0.875 * 0.125, 0.2))
    assert headroom([(0.0, 0.0)]) == 0.0


def test_retire_and_recheck():
    cfg = CurriculumConfig(enabled=True, retire_after=2, recheck_every=3, min_weight=0.1)
    pool = CurriculumPool(_rows(4), cfg, seed=0)
    pool.observe(1, 0, [1.0, 1.0], [True, True])
    assert pool.weight(0) == pytest.approx(0.1)  # seen, no headroom yet, not retired after one group
    pool.observe(2, 0, [1.0, 1.0], [True, True])
    pool.observe(1, 1, [0.0, 0.0], [False, False])
    pool.observe(2, 1, [0.0, 0.0], [False, False])
    pool.observe(2, 2, [1.0, 0.0], [True, False])
    assert pool.weight(0) == 0.0 and pool.weight(1) == 0.0 and pool.weight(2) == 1.0 and pool.weight(3) == 1.0
    s = pool.summary(3)
    assert s["curriculum/retired_solved"] == 1 and s["curriculum/retired_unsolved"] == 1
    assert s["curriculum/active_rows"] == 2 and s["curriculum/unseen_rows"] == 1 and s["curriculum/due_rows"] == 0
    assert pool.due(5) == [0, 1]
    batch = pool.take(5, 4)
    assert batch[:1] == [0]  # due rows come first, at most a quarter of the batch
    assert set(batch) == {0, 1, 2, 3}  # the active pool (2 rows) ran short: the other retired row fills in
    pool.observe(5, 0, [1.0, 0.0], [True, False])  # the check shows headroom: back in the pool
    assert pool.weight(0) > 0
    pool.observe(5, 1, [0.0, 0.0], [False, False])  # still unsolved: retired again, the wait restarts
    assert pool.due(7) == [] and pool.due(8) == [1]


def test_take_favours_headroom_and_is_seeded():
    cfg = CurriculumConfig(enabled=True, retire_after=5, min_weight=0.05)
    pool = CurriculumPool(_rows(20), cfg, seed=1)
    for i in range(20):  # rows 0-9 solved once (no headroom yet), rows 10-19 split 50/50
        pool.observe(1, i, [1.0, 1.0] if i < 10 else [1.0, 0.0], [True, True] if i < 10 else [True, False])
    counts = [0] * 20
    for step in range(2, 202):
        for i in pool.take(step, 5):
            counts[i] += 1
    assert sum(counts[10:]) > 8 * sum(counts[:10])  # weights 1 vs 0.05
    assert pool.take(7, 5) == pool.take(7, 5)  # same step, same draw (resume)
    restored = CurriculumPool(_rows(20), cfg, seed=1)
    restored.load_state_dict(pool.state_dict())
    assert restored.take(9, 5) == pool.take(9, 5) and restored.summary() == pool.summary()


def test_weakness_over_samples_failing_task():
    cfg = CurriculumConfig(enabled=True, weakness_key="task", weakness_weight=3.0)
    rows = _rows(4, ["a", "a", "b", "b"])
    pool = CurriculumPool(rows, cfg)
    pool.observe_eval([SimpleNamespace(item={"task": "a"}), SimpleNamespace(item={"task": "b"}),
                       SimpleNamespace(item={"task": "b"})], [1.0, 0.0, 0.5])
    assert pool.weakness == {"a": 1.0, "b": 0.25}
    assert pool.weight(0) == pytest.approx(4.0) and pool.weight(2) == pytest.approx(1.75)


# ---- dynamic sampling ------------------------------------------------------------------------------------

def _group(name: str, rewards: list[float]) -> list[Trajectory]:
    return [Trajectory(trace_id=f"{name}{k}", row_index=0, group_id=name, reward=r) for k, r in enumerate(rewards)]


def test_refill_replaces_zero_variance_groups_within_budget():
    first = _group("a", [1, 0]) + _group("b", [0, 0]) + _group("c", [1, 1]) + _group("d", [0, 0])
    assert signal_groups(first) == (4, 1)
    calls: list[tuple[int, int]] = []
    queue = [_group("e", [1, 0]) + _group("f", [0, 0]) + _group("g", [0, 0]), _group("h", [0, 1])]

    def draw(n: int, rnd: int) -> list[Trajectory]:
        calls.append((n, rnd))
        return queue.pop(0)

    out, m = refill(first, DynamicSamplingConfig(enabled=True, max_extra_groups=4, max_rounds=3), draw)
    # round 0: 3 missing → 3 new groups, 1 with signal; round 1: min(2 missing, 1 budget left) = 1
    assert calls == [(3, 0), (1, 1)]
    assert m == {"dynamic_sampling/extra_groups": 4.0, "dynamic_sampling/extra_trajectories": 8.0,
                 "dynamic_sampling/rounds": 2.0, "dynamic_sampling/signal_groups": 3.0}
    assert len(out) == 16


def test_refill_stops_when_nothing_is_missing_or_no_rows_left():
    full = _group("a", [1, 0])
    out, m = refill(full, DynamicSamplingConfig(enabled=True), lambda n, r: pytest.fail("no refill needed"))
    assert out == full and m["dynamic_sampling/rounds"] == 0
    out, m = refill(_group("z", [0, 0]), DynamicSamplingConfig(enabled=True, max_rounds=5), lambda n, r: [])
    assert m["dynamic_sampling/rounds"] == 1 and m["dynamic_sampling/extra_groups"] == 0


def test_pool_preview_hand_worked():
    from agentrft.rl.curriculum import preview

    trajs = _group("a", [1, 1]) + _group("b", [0, 0]) + _group("c", [1, 0])
    for t in trajs:
        t.row_index = ord(t.group_id)
    p = preview(CurriculumConfig(enabled=True, min_weight=0.2), trajs)
    # a: solved, b: unsolved (headroom 0, weight 0.2 each); c: p = .5 → headroom 1, weight 1 → share 1/1.4
    assert p == {"items": 3, "all_passed": 1, "all_failed": 1, "with_headroom": 1, "headroom_mean": pytest.approx(1 / 3),
                 "weight_share_with_headroom": pytest.approx(1 / 1.4), "retire_after": 2}


# ---- the trainer's sampling hook ---------------------------------------------------------------------------

def _run_cfg(**sections):
    from agentrft.config import RunConfig

    return RunConfig(model="m", training_file="t.jsonl", grader={"type": "string_check"}, **sections)


def test_sampling_levers_refill_draws_unused_rows_and_feeds_the_pool():
    from agentrft.rl.sampling_levers import SamplingLevers
    from agentrft.rl.trainer import Cursor

    rows = _rows(6)
    lv = SamplingLevers(_run_cfg(curriculum={"enabled": True, "retire_after": 1},
                                 dynamic_sampling={"enabled": True, "max_extra_groups": 2}), rows)
    first = lv.take(1, Cursor(), 2, seed=0)
    drawn: list[list[int]] = []

    def draw(n: int, rnd: int) -> list[Trajectory]:
        ids = lv.more_rows(1, Cursor(), n, seed=0)
        drawn.append(ids)
        out = []
        for i in ids:  # each replacement row's group has signal
            g = _group(f"x{i}", [1, 0])
            for t in g:
                t.row_index = i
            out += g
        return out

    trajs = []
    for i in first:  # both first groups are all-fail: zero variance
        g = _group(f"r{i}", [0, 0])
        for t in g:
            t.row_index = i
        trajs += g
    out, m = lv.after_rollouts(1, trajs, draw)
    assert len(drawn) == 1 and len(drawn[0]) == 2 and not set(drawn[0]) & set(first)
    assert m["dynamic_sampling/extra_groups"] == 2 and m["dynamic_sampling/signal_groups"] == 2
    assert m["curriculum/retired_unsolved"] == 2 and m["curriculum/unseen_rows"] == 2  # 4 rows seen, 2 retired
    # without the curriculum the refill continues the epoch order, skipping rows this step already has
    plain = SamplingLevers(_run_cfg(dynamic_sampling={"enabled": True}), rows)
    cur = Cursor()
    a = plain.take(1, cur, 4, seed=0)
    b = plain.more_rows(1, cur, 4, seed=0)  # the epoch wraps: the new epoch's order minus a
    assert not set(a) & set(b) and len(b) == 2 and set(a) | set(b) == set(range(6))
