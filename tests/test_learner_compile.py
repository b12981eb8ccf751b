"""``compile_learner``: the RL and SFT updates through ``torch.compile`` give the eager updates' numbers.

A real inductor compile of a tiny Llama (a C++ compiler builds the kernels), two batch shapes so the switch to
dynamic shapes happens too, against an eager learner with the same weights.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from agentrft.policy.learner import Learner
from agentrft.rl.advantages import token_advantages
from agentrft.rl.loss import ClippedPolicyLoss
from agentrft.types import Trajectory

pytestmark = pytest.mark.skipif(not shutil.which("g++"), reason="torch.compile on CPU needs a C++ compiler")

VOCAB = 200


def _model():
    import transformers as tf

    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                         tie_word_embeddings=True)
    torch.manual_seed(0)
    return tf.LlamaForCausalLM(cfg).float()


def _trajs(n: int, length: int, seed: int) -> list[Trajectory]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = length - 3 * i  # padded micro-batches
        t = Trajectory(trace_id=f"t{i}", row_index=i, group_id="g", sample_index=i)
        t.token_ids = torch.randint(3, VOCAB, (L,), generator=g).tolist()
        t.loss_mask = [0] * 5 + [1] * (L - 5)
        t.logprobs = [0.0] * 5 + [-5.0] * (L - 5)
        t.advantage = 1.0 if i % 2 else -1.0
        out.append(t)
    return out


@pytest.mark.slow  # two real compiles (static, then dynamic): ~70 s on a 2-core CPU
def test_compiled_updates_match_eager_ones_across_batch_shapes():
    torch._dynamo.reset()
    eager = Learner(_model(), lora=None, learning_rate=1e-3, micro_batch_size=4)
    comp = Learner(_model(), lora=None, learning_rate=1e-3, micro_batch_size=4, compile=True)
    for batch in (_trajs(4, 24, 0), _trajs(4, 31, 1), _trajs(3, 17, 2)):  # the 2nd shape makes it dynamic
        advs = [token_advantages(t) for t in batch]
        a = eager.rl_step(batch, advs, ClippedPolicyLoss(0.2, 0.28))
        b = comp.rl_step(batch, advs, ClippedPolicyLoss(0.2, 0.28))
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    demo = [(t.token_ids, t.loss_mask) for t in _trajs(2, 20, 3)]
    assert comp.sft_step(demo)["loss"] == pytest.approx(eager.sft_step(demo)["loss"], rel=1e-4)
    for (name, p), q in zip(eager.model.named_parameters(), comp.model.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    assert len(comp._compiled) == 1  # the decoder, compiled once and reused
    # the model itself stays eager: the rollout engine and scoring call its modules directly
    assert not isinstance(comp.model.model, torch._dynamo.eval_frame.OptimizedModule)
    assert comp.score([batch[0].token_ids])[0][1:] == pytest.approx(eager.score([batch[0].token_ids])[0][1:],
                                                                   abs=1e-4)


def test_compile_without_a_cpp_compiler_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++, c++ or clang++
    with pytest.raises(ValueError, match="compile_learner needs a C\\+\\+ compiler"):
        Learner(_model(), lora=None, learning_rate=1e-3, compile=True)
