"""The learner runs the output layer only at loss positions: same log-probs, same gradients as the full model."""

from __future__ import annotations

import pytest
import torch

from agentrft.config import LoraConfig
from agentrft.policy.learner import Learner, _split_head, load_model_and_tokenizer


def _batch(tokenizer, n: int = 3):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(tokenizer), (n, 40), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 30:] = 0  # a padded row
    where = torch.zeros(n, 39, dtype=torch.bool)
    where[:, 5:12] = True
    where[2, 20:35] = True
    return ids, attn, where


@pytest.mark.parametrize("lora", [None, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])])
def test_selected_positions_match_the_full_forward(tiny_model, tokenizer, lora):
    model, _ = load_model_and_tokenizer(str(tiny_model))
    learner = Learner(model, lora=lora, learning_rate=1e-3, temperature=0.7, pad_id=tokenizer.pad_token_id)
    assert _split_head(learner.model) is not None  # the tiny Llama takes the selective path
    ids, attn, where = _batch(tokenizer)

    def grads(**kw):
        learner.model.zero_grad(set_to_none=True)
        lp, ent = learner._token_logprobs(learner.model, ids, attn, entropy=True, **kw)
        (lp * where).sum().backward()
        return lp.detach(), ent, [p.grad.clone() for p in learner.params]

    full_lp, full_ent, full_g = grads()
    sel_lp, sel_ent, sel_g = grads(where=where)
    assert torch.allclose(sel_lp[where], full_lp[where], atol=1e-5)
    assert torch.all(sel_lp[~where] == 0) and torch.all(sel_ent[~where] == 0)
    assert torch.allclose(sel_ent[where], full_ent[where], atol=1e-4)
    for a, b in zip(sel_g, full_g):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
