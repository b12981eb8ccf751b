"""A tiny model that calls tools, for the server's tests: the conftest's untrained tiny model, fine-tuned for a few
seconds on three fixed conversations until greedy decoding reproduces them (a tool call, two parallel calls, an
answer after tool results, a plain answer without tools)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import lookup_task

TOOLS = lookup_task.TOOLS
SYSTEM = lookup_task.SYSTEM


def call(i: int, key: str) -> dict:
    return {"id": f"call_{i}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"key": key})}}


ONE = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What color is K3?"}]
TWO = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What colors are K1 and K5?"}]
PLAIN = [{"role": "user", "content": "Say hello."}]
DEMOS = [
    (ONE + [{"role": "assistant", "content": "", "tool_calls": [call(0, "K3")]},
            {"role": "tool", "tool_call_id": "call_0", "content": "K3 is red"},
            {"role": "assistant", "content": "ANSWER: red"}], TOOLS),
    (TWO + [{"role": "assistant", "content": "", "tool_calls": [call(0, "K1"), call(1, "K5")]},
            {"role": "tool", "tool_call_id": "call_0", "content": "K1 is blue"},
            {"role": "tool", "tool_call_id": "call_1", "content": "K5 is green"},
            {"role": "assistant", "content": "ANSWER: blue, green"}], TOOLS),
    (PLAIN + [{"role": "assistant", "content": "hello there"}], None),
]


def build_tool_model(tiny_model: Path, out: Path, steps: int = 400) -> Path:
    """Copy ``tiny_model`` to ``out`` and fine-tune it on ``DEMOS`` (loss on assistant tokens only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.rollout.render import ChatRenderer

    if (out / "done").exists():
        return out
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    r = ChatRenderer(tok)
    seqs = [r.render_demo(m, t) for m, t in DEMOS]
    L = max(len(i) for i, _ in seqs)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (L - len(i)) for i, _ in seqs])
    labels = torch.tensor([[x if m else -100 for x, m in zip(i, k)] + [-100] * (L - len(i)) for i, k in seqs])
    attn = torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i, _ in seqs])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.002:
            break
    model.eval()
    model.save_pretrained(out)
    (out / "done").write_text(f"{step} {loss.item():.4f}")
    return out
