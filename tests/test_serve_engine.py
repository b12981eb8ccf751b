"""What is served is what the rollout engine samples: per-slot sampling params in one engine, and served tokens
for a prompt + seed equal to the engine's (and the agent loop's) for the same prompt + seed."""

from __future__ import annotations

import threading

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import serve_helpers as h
from agentrft.policy.engine import SlotEngine
from agentrft.policy.sampling import SamplingParams
from agentrft.policy.transformers_sampler import TransformersSampler
from agentrft.rollout.render import ChatRenderer
from agentrft.serve.app import create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer


def _drive(eng, feeds):
    """feeds: {slot: (ids, seed, limit, params)} → {slot: Generation}."""
    for s, (ids, seed, limit, params) in feeds.items():
        eng.feed(s, ids, torch.Generator().manual_seed(seed), limit, params=params)
    out = {}
    while eng.busy():
        for s, g in eng.step():
            out[s] = g
    return out


def test_per_slot_params_equal_separate_engines(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    r = ChatRenderer(tok)
    prompt = r.prompt_ids(h.ONE, h.TOOLS)
    ps = [SamplingParams(1.0, 1.0, 12), SamplingParams(0.7, 0.9, 12), SamplingParams(1.3, 0.5, 12)]
    mixed = SlotEngine(model, stop_ids=r.stop_ids, pad_id=0, params=SamplingParams(max_new_tokens=64), slots=3)
    together = _drive(mixed, {i: (prompt[: len(prompt) - i], 10 + i, 12, p) for i, p in enumerate(ps)})
    for i, p in enumerate(ps):
        alone = SlotEngine(model, stop_ids=r.stop_ids, pad_id=0, params=p, slots=1)
        g = _drive(alone, {0: (prompt[: len(prompt) - i], 10 + i, 12, None)})[0]
        assert together[i].ids == g.ids, i
        assert together[i].logprobs == pytest.approx(g.logprobs, abs=1e-5)
    # the rollout path (no per-slot params) is unchanged: the engine's own params apply
    eng = SlotEngine(model, stop_ids=r.stop_ids, pad_id=0, params=ps[1], slots=2)
    a = _drive(eng, {0: (prompt, 5, 12, None), 1: (prompt, 5, 12, ps[1])})
    assert a[0].ids == a[1].ids


def test_served_tokens_equal_the_rollout_engine_for_prompt_and_seed(tiny_model, tmp_path):
    """An untrained model (a flat distribution, so the tokens depend on the seed), served; the same prompt and seed
    sampled by the rollout engine alone give the same tokens and log-probs, also while other requests with other
    temperatures share the server's engine."""
    cfg = ServeConfig(model=str(tiny_model), model_name="tiny", slots=4, record_traces=False)
    app = create_app(cfg)
    mgr = app.state.serve.manager
    prompt = mgr.base.renderer.prompt_ids(h.ONE, h.TOOLS)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=24)
    sampler = TransformersSampler(mgr.base.model, stop_ids=mgr.base.stop_ids, pad_id=mgr.base.pad_id)
    want = {}
    for seed in (3, 4):
        eng = sampler.slot_engine(params, slots=1)
        want[seed] = _drive(eng, {0: (prompt, seed, 24, None)})[0]
        eng.close()
    assert want[3].ids != want[4].ids
    got: dict[str, object] = {}
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)

            def noise(i: int) -> None:  # other traffic in the same engine, other params
                got[f"noise{i}"] = c.completions.create(model="tiny", prompt=prompt[: 40 + i], max_tokens=30,
                                                        temperature=1.5, seed=100 + i)

            threads = [threading.Thread(target=noise, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
            for seed in (3, 4):
                got[seed] = c.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0.8,
                                                 top_p=0.95, seed=seed, logprobs=0,
                                                 extra_body={"return_token_ids": True})
            chat = c.chat.completions.create(model="tiny", messages=h.ONE, tools=h.TOOLS, max_tokens=24,
                                             temperature=0.8, top_p=0.95, seed=3, logprobs=True)
            for t in threads:
                t.join()
    finally:
        app.state.serve.close()
    for seed in (3, 4):
        ch = got[seed].choices[0]
        assert ch.model_dump()["token_ids"] == want[seed].ids
        assert ch.logprobs.token_logprobs == pytest.approx(want[seed].logprobs, abs=1e-4)
    # the chat endpoint renders the same prompt and samples the same tokens
    lp = [t.logprob for t in chat.choices[0].logprobs.content]
    n = len(lp)
    assert lp == pytest.approx(want[3].logprobs[:n], abs=1e-4)
    assert chat.usage.prompt_tokens == len(prompt) and chat.usage.completion_tokens == len(want[3].ids)


def test_architectures_without_the_engine_are_served_through_generate(tiny_model, tmp_path):
    """Mistral has no continuous-batching decode forward: the server falls back to the sampler's batched generate
    (the rollouts' path for it), with the same tokens as that path for a prompt and seed."""
    import transformers as tf

    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = tf.MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           eos_token_id=tok.convert_tokens_to_ids(tok.eos_token), pad_token_id=tok.pad_token_id,
                           tie_word_embeddings=True)
    torch.manual_seed(0)
    model = tf.MistralForCausalLM(cfg).float().eval()
    out = tmp_path / "mistral"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    assert not SlotEngine.supports(model)
    app = create_app(ServeConfig(model=str(out), model_name="mis", slots=4, record_traces=False))
    mgr = app.state.serve.manager
    prompt = mgr.base.renderer.prompt_ids(h.PLAIN, None)
    sampler = TransformersSampler(mgr.base.model, stop_ids=mgr.base.stop_ids, pad_id=mgr.base.pad_id)
    want = sampler.generate([prompt], SamplingParams(temperature=0.9, max_new_tokens=12),
                            [torch.Generator().manual_seed(5)], limits=[12])[0]
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            r = c.completions.create(model="mis", prompt=prompt, max_tokens=12, temperature=0.9, seed=5, logprobs=0,
                                     extra_body={"return_token_ids": True})
            chats = [c.chat.completions.create(model="mis", messages=h.PLAIN, max_tokens=6, seed=i, n=2)
                     for i in range(2)]
    finally:
        app.state.serve.close()
    assert r.choices[0].model_dump()["token_ids"] == want.ids
    assert r.choices[0].logprobs.token_logprobs == pytest.approx(want.logprobs, abs=1e-4)
    assert all(len(ch.choices) == 2 and ch.usage.completion_tokens > 0 for ch in chats)


def test_an_engine_failure_is_a_503_and_the_server_keeps_serving(tiny_model):
    app = create_app(ServeConfig(model=str(tiny_model), model_name="tiny", slots=2, record_traces=False))
    worker = app.state.serve.manager.base
    real = worker.sampler.slot_engine

    def broken(*a, **k):
        raise RuntimeError("no memory for the KV cache")

    worker.sampler.slot_engine = broken
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=60)
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(model="tiny", messages=h.PLAIN, max_tokens=3, n=3)
            assert e.value.status_code == 503 and "no memory for the KV cache" in e.value.message
            worker.sampler.slot_engine = real
            r = c.chat.completions.create(model="tiny", messages=h.PLAIN, max_tokens=3)
            assert r.usage.completion_tokens > 0
    finally:
        app.state.serve.close()
