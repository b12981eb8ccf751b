"""Every decoder family the fast paths cover gives the HF model's own numbers.

Tiny random models of each architecture (built here, seconds): the rollout engine's logits after pre-fills,
decodes and multi-turn continuations equal a full HF forward over the same sequence, including sequences longer
than a Gemma 3 sliding window; the learner's loss-position head equals its full forward; and the log-probs the
engine records for sampled tokens are the learner's teacher-forced ones (token-exactness on each architecture).
"""

from __future__ import annotations

import pytest
import torch

from agentrft.policy.learner import Learner, _split_head
from agentrft.policy.engine import SlotEngine
from agentrft.policy.sampling import SamplingParams
from agentrft.policy.transformers_sampler import TransformersSampler

VOCAB = 300


def _model(arch: str):
    import transformers as tf

    common = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256, "pad_token_id": 0,
                  "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": True}
    if arch == "llama":
        cfg = tf.LlamaConfig(**common)
        cls = tf.LlamaForCausalLM
    elif arch == "qwen2":
        cfg = tf.Qwen2Config(**common)
        cls = tf.Qwen2ForCausalLM
    elif arch == "qwen3":
        cfg = tf.Qwen3Config(**common, head_dim=16)
        cls = tf.Qwen3ForCausalLM
    elif arch == "gemma3_text":
        # a 6-token sliding window on two of three layers, so the test sequences (30–60 tokens) cross it;
        # a final logit soft-cap small enough to change the log-probs (Gemma 2 style; 270M has none)
        cfg = tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                                  layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                                  final_logit_softcapping=1.5)
        cls = tf.Gemma3ForCausalLM
    else:  # pragma: no cover
        raise ValueError(arch)
    torch.manual_seed(0)
    model = cls(cfg).float().eval()
    with torch.no_grad():  # random norms, so a wrong norm placement cannot pass by being the identity
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    assert SlotEngine.supports(model), arch
    return model


ARCHS = ["llama", "qwen2", "qwen3", "gemma3_text"]


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_logits_equal_the_hf_forward_across_turns(arch):
    model = _model(arch)
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(max_new_tokens=4), slots=3)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (17, 5, 11)]
    seqs = [list(p) for p in prompts]
    for s, p in enumerate(prompts):
        eng.feed(s, p, torch.Generator().manual_seed(10 + s), 4)
    for turn in range(3):
        done = []
        while eng.busy():
            done += eng.step()
        assert sorted(s for s, _ in done) == [0, 1, 2]
        for s, gen in done:
            assert len(gen.ids) == 4
            with torch.no_grad():
                full = torch.log_softmax(model(input_ids=torch.tensor([seqs[s] + gen.ids])).logits[0].float(), -1)
            # the recorded log-prob of each sampled token is the full model's at that position (T=1)
            n = len(seqs[s])
            ref = [float(full[n - 1 + i, t]) for i, t in enumerate(gen.ids)]
            assert gen.logprobs == pytest.approx(ref, abs=1e-4), (arch, turn, s)
            seqs[s] += gen.ids
        # a tool result of a different length for each slot, fed after the pending last token
        for s in range(3):
            more = torch.randint(3, VOCAB, (3 + 4 * s,), generator=g).tolist()
            seqs[s] += more
            eng.feed(s, more, torch.Generator().manual_seed(100 * turn + s), 4)
    assert max(len(x) for x in seqs) > 40  # well past the 6-token window


@pytest.mark.parametrize("arch", ARCHS)
def test_learner_head_and_sampler_agree_on_each_architecture(arch):
    model = _model(arch)
    learner = Learner(model, lora=None, learning_rate=1e-3, temperature=1.0, pad_id=0)
    assert _split_head(learner.model) is not None, arch
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 30), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 24:] = 0
    where = torch.zeros(2, 29, dtype=torch.bool)
    where[:, 8:20] = True
    full, _ = learner._token_logprobs(learner.model, ids, attn)
    sel, _ = learner._token_logprobs(learner.model, ids, attn, where=where)
    assert torch.allclose(sel[where], full[where], atol=1e-5)

    # sampled multi-turn trajectories through the agent's engine: the learner's scores are the recorded ones
    sampler = TransformersSampler(learner.model, stop_ids={2}, pad_id=0)
    eng = sampler.slot_engine(SamplingParams(temperature=1.0, max_new_tokens=6), slots=2)
    assert eng is not None
    seqs, lps = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]], [[0.0] * 7, [0.0] * 3]
    for s in range(2):
        eng.feed(s, seqs[s], torch.Generator().manual_seed(s), 6)
    for turn in range(2):
        while eng.busy():
            for s, gen in eng.step():
                seqs[s] += gen.ids
                lps[s] += gen.logprobs
        for s in range(2):
            eng.feed(s, [20 + turn, 21, 22], torch.Generator().manual_seed(9 + s), 6)
            seqs[s] += [20 + turn, 21, 22]
            lps[s] += [0.0] * 3
    scored = learner.score(seqs)
    n = 0
    for s in range(2):
        for i, lp in enumerate(lps[s]):
            if lp != 0.0:
                assert abs(scored[s][i] - lp) < 1e-4
                n += 1
    assert n > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_a_groups_shared_prompt_is_prefilled_once(arch):
    """G rollouts of one prompt: the prompt's K/V is computed for one slot and copied to the others; each slot
    then samples with its own generator and its log-probs are still the HF model's."""
    model = _model(arch)
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(max_new_tokens=5), slots=4)
    forwarded: list[list[int]] = []
    real = eng._forward

    def spy(rows):
        forwarded.append(list(rows))
        return real(rows)

    eng._forward = spy
    prompt = torch.randint(3, VOCAB, (21,), generator=torch.Generator().manual_seed(3)).tolist()
    other = prompt[:-1] + [7]  # same length, different last token: not shared
    for s in range(3):
        eng.feed(s, prompt, torch.Generator().manual_seed(s), 5)
    eng.feed(3, other, torch.Generator().manual_seed(3), 5)
    done = []
    while eng.busy():
        done += eng.step()
    assert forwarded[0] == [0, 3]  # slots 1 and 2 copied slot 0's prompt
    assert eng.cached[1] == eng.cached[0]
    outs = dict(done)
    assert len({tuple(outs[s].ids) for s in range(3)}) > 1  # own generators: the group's samples differ
    for s in range(4):
        seq = (other if s == 3 else prompt) + outs[s].ids
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([seq])).logits[0].float(), -1)
        n = len(prompt)
        ref = [float(full[n - 1 + i, t]) for i, t in enumerate(outs[s].ids)]
        assert outs[s].logprobs == pytest.approx(ref, abs=1e-4)


@pytest.mark.parametrize("arch", ["qwen3", "gemma3_text"])
def test_idle_and_finished_slots_do_not_change_the_active_ones(arch):
    """Slots that idle (never fed, or waiting on tools) or finish early: the engine attends over every slot in
    place when at least half decode, gathers the active ones otherwise — both give the HF model's log-probs."""
    model = _model(arch)
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(max_new_tokens=9), slots=6)

    g = torch.Generator().manual_seed(5)
    prompts = {s: torch.randint(3, VOCAB, (n,), generator=g).tolist() for s, n in ((0, 9), (2, 14), (3, 4), (5, 11))}
    limits = {0: 9, 2: 3, 3: 6, 5: 1}  # slots 1 and 4 never used; the others end at different steps
    for s, p in prompts.items():
        eng.feed(s, p, torch.Generator().manual_seed(s), limits[s])
    done = {}
    paths: list[str] = []
    while eng.busy():
        active = sum(eng.decoding)
        paths.append("wide" if 2 * active >= eng.S and active < eng.S else "gather")
        done.update(dict(eng.step()))
    assert "wide" in paths and paths[-1] == "gather"  # 4, 3 of 6 active (in place); at the end 1 of 6 (gathered)
    for s, p in prompts.items():
        gen = done[s]
        assert len(gen.ids) == limits[s]
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([p + gen.ids])).logits[0].float(), -1)
        ref = [float(full[len(p) - 1 + i, t]) for i, t in enumerate(gen.ids)]
        assert gen.logprobs == pytest.approx(ref, abs=1e-4), (arch, s)


def _decode_all(eng, prompts: dict[int, list[int]], limit: int) -> dict[int, tuple[list[int], list[float]]]:
    for s, p in prompts.items():
        eng.feed(s, p, torch.Generator().manual_seed(10 + s), limit)
    done = {}
    while eng.busy():
        done.update({s: (g.ids, g.logprobs) for s, g in eng.step()})
    return done


def test_a_closed_engines_cache_is_reused_and_its_stale_contents_change_nothing():
    """The sampler keeps a closed engine's K/V buffers for its next engine (rollouts come every step; allocating
    them was ~2% of a small model's GRPO step). The next engine sees the old run's keys and values in every
    position it has not written yet — in idle slots and past each slot's length — and must sample exactly what an
    engine on fresh zeroed buffers samples."""
    model = _model("qwen3")
    g = torch.Generator().manual_seed(1)
    first = {s: torch.randint(3, VOCAB, (40 + 7 * s,), generator=g).tolist() for s in range(4)}
    later = {s: torch.randint(3, VOCAB, (5 + 3 * s,), generator=g).tolist() for s in (0, 2)}  # slot 1 idles

    sampler = TransformersSampler(model, stop_ids=set(), pad_id=0)
    eng = sampler.slot_engine(SamplingParams(max_new_tokens=6), slots=4)
    _decode_all(eng, first, 6)
    kept = eng.k[0].data_ptr()
    assert float(eng.k[0].abs().sum()) > 0  # the old run's keys are really there
    eng.close()
    assert eng.k == [] and sampler.spare_kv is not None

    reused = sampler.slot_engine(SamplingParams(max_new_tokens=6), slots=3)  # fewer slots: a view of the first 3
    assert reused.k[0].data_ptr() == kept and sampler.spare_kv is None
    other = sampler.slot_engine(SamplingParams(max_new_tokens=6), slots=3)  # a second live engine: its own cache
    assert other.k == []
    fresh = TransformersSampler(model, stop_ids=set(), pad_id=0).slot_engine(SamplingParams(max_new_tokens=6), slots=3)
    assert fresh.k == []
    got, want = _decode_all(reused, later, 6), _decode_all(fresh, later, 6)
    assert got == want and set(got) == {0, 2}
    reused.close()

    small = TransformersSampler(model, stop_ids=set(), pad_id=0)
    small.KEEP_KV_BYTES = 1024  # over the limit: freed, not kept
    eng = small.slot_engine(SamplingParams(max_new_tokens=2), slots=2)
    _decode_all(eng, {0: first[0]}, 2)
    eng.close()
    assert small.spare_kv is None


def _engine_logprobs_match_the_model(model, arch: str) -> None:
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(max_new_tokens=5), slots=2)
    g = torch.Generator().manual_seed(4)
    prompts = {s: torch.randint(3, VOCAB, (12 + 5 * s,), generator=g).tolist() for s in range(2)}
    done = _decode_all(eng, prompts, 5)
    for s, p in prompts.items():
        ids, lps = done[s]
        with torch.no_grad():
            full = torch.log_softmax(model(input_ids=torch.tensor([p + ids])).logits[0].float(), -1)
        assert lps == pytest.approx([float(full[len(p) - 1 + i, t]) for i, t in enumerate(ids)], abs=1e-4), arch


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_lora_adapters_are_folded_into_the_decode_weights(arch):
    """The engine multiplies packed copies of each layer's projections with the LoRA update B·A·scaling folded in
    (no adapter modules on the decode path): its log-probs are the peft model's own."""
    from agentrft.config import LoraConfig

    learner = Learner(_model(arch), lora=LoraConfig(r=4, alpha=8), learning_rate=1e-3)
    with torch.no_grad():  # peft starts B at 0 (a no-op adapter): make the adapters change the outputs
        for name, p in learner.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model = learner.model.eval()
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(max_new_tokens=2), slots=1)
    assert all(pk is not None for pk in eng.packed)
    # copies of trainable weights, packed without an autograd graph
    assert not any(t.requires_grad for pk in eng.packed for t in (pk.qkv, pk.o, pk.gu, pk.down))
    _engine_logprobs_match_the_model(model, arch)
    with model.disable_adapter():  # the reference policy: base weights only
        assert SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(), slots=1).packed[0] is not None
        _engine_logprobs_match_the_model(model, arch)


def test_a_layer_with_unknown_projection_modules_runs_its_own_modules():
    class Scaled(torch.nn.Linear):  # not a plain Linear: the engine cannot know what its forward does
        def forward(self, x):
            return 2.0 * super().forward(x)

    model = _model("llama")
    old = model.model.layers[1].self_attn.q_proj
    new = Scaled(old.in_features, old.out_features, bias=False)
    new.weight.data.copy_(old.weight.data)
    model.model.layers[1].self_attn.q_proj = new
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(), slots=1)
    assert eng.packed[1] is None and eng.packed[0] is not None
    _engine_logprobs_match_the_model(model, "llama")


@pytest.mark.parametrize("arch", ARCHS)
def test_models_past_the_packing_budget_run_their_own_modules(monkeypatch, arch):
    """Both decode paths on every architecture: the other tests' small models are packed; here the layers'
    own modules run (as Gemma 3 270M's do)."""
    model = _model(arch)
    monkeypatch.setattr(SlotEngine, "PACK_MAX_BYTES", 1000)  # smaller than one layer's projections
    eng = SlotEngine(model, stop_ids=set(), pad_id=0, params=SamplingParams(), slots=1)
    assert eng.packed == [None] * 3
    _engine_logprobs_match_the_model(model, arch)
