"""Token exactness: the learner trains on exactly the ids the sampler produced, and only those carry loss."""

from __future__ import annotations

import json

import pytest
import torch

from agentrft.data import load_dataset
from agentrft.policy.learner import Learner, load_model_and_tokenizer
from agentrft.policy.sampling import Generation, SamplingParams
from agentrft.policy.transformers_sampler import TransformersSampler
from agentrft.rl.advantages import token_advantages
from agentrft.rl.loss import ClippedPolicyLoss
from agentrft.rollout.agent import AgentLoop, RolloutLimits, RolloutTask
from agentrft.rollout.render import ChatRenderer
from agentrft.tools.router import build_router


class RecordingSampler:
    """Wraps a sampler and records every prompt it was given and every generation it returned."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[list[int], Generation]] = []

    def generate(self, prompts, params, generators, limits=None):
        gens = self.inner.generate(prompts, params, generators, limits=limits)
        for p, g in zip(prompts, gens):
            self.calls.append((list(p), g))
        return gens


class ScriptedSampler:
    """Emits scripted assistant texts (one list per trajectory, keyed by the prompt's first turn) as token ids,
    with distinct fake logprobs, so the test controls parallel calls, errors and answers exactly."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tok = tokenizer
        self.scripts = scripts
        self.turn: dict[str, int] = {}
        self.counter = 0

    def generate(self, prompts, params, generators, limits=None):
        out = []
        eos = self.tok.convert_tokens_to_ids(self.tok.eos_token)
        for p in prompts:
            text = self.tok.decode(p)
            key = next(k for k in self.scripts if k in text)
            i = self.turn.get(key, 0)
            self.turn[key] = i + 1
            ids = self.tok(self.scripts[key][i], add_special_tokens=False)["input_ids"] + [eos]
            lps = []
            for _ in ids:
                self.counter += 1
                lps.append(-0.001 * self.counter)
            out.append(Generation(ids, lps, "stop"))
        return out


def _check_spans(trajs, calls):
    """Every assistant turn's span equals a sampled generation; its prompt was exactly the prefix before it;
    mask is 1 exactly on sampled spans; logprobs are the sampler's there and 0 elsewhere."""
    by_prompt = {tuple(p): g for p, g in calls}
    n_turns = 0
    for t in trajs:
        assert len(t.token_ids) == len(t.loss_mask) == len(t.logprobs)
        expected_mask = [0] * len(t.token_ids)
        for turn in t.turns:
            g = by_prompt[tuple(t.token_ids[: turn.start])]  # the sampler saw exactly this prefix
            assert t.token_ids[turn.start : turn.end] == g.ids
            assert t.logprobs[turn.start : turn.end] == g.logprobs
            expected_mask[turn.start : turn.end] = [1] * (turn.end - turn.start)
            n_turns += 1
        assert t.loss_mask == expected_mask
        assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.loss_mask) if not m)
    assert n_turns == len(calls)


def test_scripted_multi_turn_parallel_calls_errors(tokenizer, lookup_files):
    rows = list(load_dataset(lookup_files["valid"]))[:3]
    for r in rows:  # fixed tables so the scripts are known
        r.item["table"] = {"K1": "red", "K2": "blue"}
    rows[0].messages[-1]["content"] = "Q-A: What colors are K1 and K2?"
    rows[1].messages[-1]["content"] = "Q-B: What color is K1?"
    rows[2].messages[-1]["content"] = "Q-C: What color is K2?"
    scripts = {
        "Q-A": [  # parallel calls, then an answer
            '<tool_call>{"name": "lookup", "arguments": {"key": "K1"}}</tool_call>'
            '<tool_call>{"name": "lookup", "arguments": {"key": "K2"}}</tool_call>',
            "ANSWER: red, blue",
        ],
        "Q-B": [  # unknown tool + bad arguments in parallel, a malformed call, then a good call and answer
            '<tool_call>{"name": "search", "arguments": {"q": "K1"}}</tool_call>'
            '<tool_call>{"name": "lookup", "arguments": {"id": "K1"}}</tool_call>',
            '<tool_call>{"name": "lookup", "arguments": {"key": "K1"}</tool_call>',
            '<tool_call>{"name": "lookup", "arguments": {"key": "K1"}}</tool_call>',
            "ANSWER: red",
        ],
        "Q-C": ['<tool_call>{"name": "lookup", "arguments": {"key": "K2"}}</tool_call>'] * 5,  # hits the budget
    }
    sampler = RecordingSampler(ScriptedSampler(tokenizer, scripts))
    renderer = ChatRenderer(tokenizer)
    router = build_router(["lookup_task:lookup"], timeout_s=5, max_workers=4)
    loop = AgentLoop(sampler, renderer, router, limits=RolloutLimits(max_turns=8, max_episode_steps=3))
    tasks = [RolloutTask(row=r, seed=i, group_id="g", sample_index=i) for i, r in enumerate(rows)]
    trajs = loop.run(tasks, SamplingParams())
    a, b, c = trajs

    assert a.outcome == "completed" and a.final_text == "ANSWER: red, blue"
    assert [x.output for x in a.tool_calls] == ["K1 is red", "K2 is blue"]
    assert len(a.turns) == 2 and len(a.turns[0].tool_calls) == 2
    between = tokenizer.decode(a.token_ids[a.turns[0].end : a.turns[1].start])
    assert "K1 is red" in between and "K2 is blue" in between  # tool results rendered as context

    assert [x.status for x in b.tool_calls] == ["unknown_tool", "bad_arguments", "ok"]
    assert "Available tools: lookup" in b.tool_calls[0].output
    assert "unknown argument(s): id" in b.tool_calls[1].output
    assert b.turns[1].parse_error and "not valid JSON" in b.turns[1].parse_error
    assert b.tool_errors == 3 and b.outcome == "completed" and b.final_text == "ANSWER: red"

    assert c.outcome == "tool_budget" and c.num_tool_calls == 4
    assert [x.status for x in c.tool_calls] == ["ok", "ok", "ok", "budget"]

    _check_spans(trajs, sampler.calls)


@pytest.fixture(scope="module")
def sft_lookup_model(tiny_model, lookup_files, tmp_path_factory):
    from agentrft.rl.sft import run_sft

    out = tmp_path_factory.mktemp("sft") / "model"
    run_sft(str(tiny_model), lookup_files["demos"], out, epochs=6, batch_size=16, learning_rate=3e-3)
    return out


def test_real_sampler_rollouts_are_what_the_learner_trains_on(sft_lookup_model, lookup_files):
    model, tok = load_model_and_tokenizer(str(sft_lookup_model))
    renderer = ChatRenderer(tok)
    learner = Learner(model, lora=None, learning_rate=1e-4, micro_batch_size=4, pad_id=tok.pad_token_id)
    sampler = RecordingSampler(TransformersSampler(learner.model, stop_ids=renderer.stop_ids, pad_id=tok.pad_token_id))
    router = build_router(["lookup_task:lookup"], timeout_s=5, max_workers=4)
    loop = AgentLoop(sampler, renderer, router, limits=RolloutLimits(max_turns=4, max_episode_steps=4), max_batch=8)
    rows = [r for r in load_dataset(lookup_files["valid"]) if len(r.item["keys"]) == 2][:4]
    rows += list(load_dataset(lookup_files["train"]))[:4]
    tasks = [RolloutTask(row=r, seed=100 + i, group_id=f"g{i // 2}", sample_index=i % 2) for i, r in enumerate(rows)]
    trajs = loop.run(tasks, SamplingParams(temperature=1.0, max_new_tokens=48))
    assert sum(len(t.turns) for t in trajs) > len(trajs), "expected multi-turn rollouts from the warmed-up model"
    _check_spans(trajs, sampler.calls)

    # The learner's teacher-forced log-probs at sampled positions reproduce the sampler's: same ids, same places.
    scored = learner.score([t.token_ids for t in trajs])
    for t, lp in zip(trajs, scored):
        for i, m in enumerate(t.loss_mask):
            if m:
                assert abs(lp[i] - t.logprobs[i]) < 1e-4

    # And the tensors rl_step feeds the model are exactly the trajectories' ids; the loss mask is the sampled mask.
    # (the learner runs the decoder and applies the output layer at loss positions only, so the ids enter there)
    seen: list[torch.Tensor] = []
    hook = learner.model.get_decoder().register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    for k, t in enumerate(trajs):
        t.advantage = 1.0 if k % 2 else -1.0
    stats = learner.rl_step(trajs, [token_advantages(t) for t in trajs], ClippedPolicyLoss(0.2, 0.2))
    hook.remove()
    flat = [r for batch in seen for r in batch.tolist()]
    assert len(flat) == len(trajs)
    remaining = [t.token_ids for t in trajs]
    for row in flat:
        match = next(ids for ids in remaining if row[: len(ids)] == ids and all(x == tok.pad_token_id for x in row[len(ids):]))
        remaining.remove(match)
    assert not remaining
    assert abs(stats["ratio_mean"] - 1.0) < 1e-3  # on-policy: ratio 1 up to numerics
    assert stats["train_tokens"] == sum(sum(t.loss_mask) for t in trajs)


def test_sft_renders_demos_exactly_as_rollouts_build_them(tokenizer, lookup_files):
    """render_demo == prompt ids + assistant turn ids + continuation deltas, mask on assistant turns only."""
    renderer = ChatRenderer(tokenizer)
    demos = list(load_dataset(lookup_files["demos"], allow_demos=True))
    demo = next(d for d in demos if any(len(m.get("tool_calls") or []) == 2 for m in d.messages))
    ids, mask = renderer.render_demo(demo.messages, demo.tools)
    text = tokenizer.decode(ids)
    rendered = renderer.render(demo.messages, demo.tools, gen=False)
    # same text as the template, up to the whitespace the template puts after the last end-of-turn token (a
    # rollout's ids also stop at the sampled end-of-turn token)
    assert rendered.startswith(text) and text.endswith(tokenizer.eos_token) and not rendered[len(text):].strip()
    sampled = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assistants = [m for m in demo.messages if m["role"] == "assistant"]
    assert sampled.count(tokenizer.eos_token) == len(assistants)
    assert "<tool_call>" in sampled and assistants[-1]["content"] in sampled
    context = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    for m in demo.messages:
        if m["role"] in ("user", "tool", "system"):
            assert m["content"] in context and m["content"] not in sampled
    json.dumps(mask)  # plain ints


def test_tool_output_past_the_context_budget_ends_the_rollout(tokenizer, lookup_files):
    """A 1 MB tool answer must not become a 300k-token training sequence: the rollout ends at the budget with the
    ids the model saw, and the output stays in the messages for graders."""
    from agentrft.tools.registry import make_tool
    from agentrft.tools.python_backend import PythonToolBackend
    from agentrft.tools.router import ToolRouter

    def lookup(key: str) -> str:
        return "x " * 500_000

    row = list(load_dataset(lookup_files["valid"]))[0]
    row.messages[-1]["content"] = "Q-BIG: What color is K1?"
    sampler = RecordingSampler(ScriptedSampler(tokenizer, {"Q-BIG": ['<tool_call>{"name": "lookup", "arguments": {"key": "K1"}}</tool_call>', "ANSWER: red"]}))
    router = ToolRouter([PythonToolBackend([make_tool(lookup)])], timeout_s=30)
    loop = AgentLoop(sampler, ChatRenderer(tokenizer), router, limits=RolloutLimits(max_context_tokens=512))
    (t,) = loop.run([RolloutTask(row=row, seed=0)], SamplingParams())
    assert t.outcome == "context_limit"
    assert len(t.token_ids) < 512 and len(t.turns) == 1
    assert t.messages[-1]["role"] == "tool" and len(t.messages[-1]["content"]) == 1_000_000
    _check_spans([t], sampler.calls)
