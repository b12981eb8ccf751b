"""A tiny model that calls tools, for the server's tests: the conftest's untrained tiny model, fine-tuned for a few
seconds on three fixed conversations until greedy decoding reproduces them (a tool call, two parallel calls, an
answer after tool results, a plain answer without tools)."""

from __future__ import annotations

import json
import shutil
import threading
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


def concurrently(n: int, request) -> dict[int, object]:
    """``request(i)`` for i in 0..n-1, each on its own thread at once; each result, or the exception it raised."""
    out: dict[int, object] = {}

    def one(i: int) -> None:
        try:
            out[i] = request(i)
        except Exception as e:  # noqa: BLE001 - the caller asserts on it
            out[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def fine_tune_copy(src: Path, out: Path, demos: list[tuple[list[dict], list[dict] | None]], steps: int) -> Path:
    """Copy the model at ``src`` to ``out`` and fine-tune it on ``demos`` — (messages, tools) pairs, loss on the
    assistant tokens only — until the loss is below 0.002 or ``steps`` ran; ``out/done`` marks it built (a later call
    returns it as it is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.rollout.render import ChatRenderer

    if (out / "done").exists():
        return out
    shutil.copytree(src, out, dirs_exist_ok=True)
    (out / "done").unlink(missing_ok=True)  # (src may itself be a model this built)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    r = ChatRenderer(tok)
    seqs = [r.render_demo(m, t) for m, t in demos]
    L = max(len(i) for i, _ in seqs)
    pad = tok.pad_token_id
    ids = torch.tensor([i + [pad] * (L - len(i)) for i, _ in seqs])
    labels = torch.tensor([[x if m else -100 for x, m in zip(i, k)] + [-100] * (L - len(i)) for i, k in seqs])
    attn = torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i, _ in seqs])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few small matmuls per step: one thread ran ~8x faster on a busy 2-core machine
    try:
        for step in range(steps):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            if loss.item() < 0.002:
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    (out / "done").write_text(f"{step} {loss.item():.4f}")
    return out


def build_tool_model(tiny_model: Path, out: Path, steps: int = 400) -> Path:
    """Copy ``tiny_model`` to ``out`` and fine-tune it on ``DEMOS`` (loss on assistant tokens only)."""
    return fine_tune_copy(tiny_model, out, DEMOS, steps)


def tool_model_dir(tiny_model: Path, tmp_path_factory) -> Path:
    """The tool model, built once per test session (shared by the serve test modules)."""
    return build_tool_model(tiny_model, tmp_path_factory.getbasetemp() / "serve-tool-model")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A random (non-zero) LoRA adapter over ``base_dir``, saved as the learner saves one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=32, target_modules=LORA_TARGETS, init_lora_weights=False))
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def greedy_ids(model_dir: Path, prompt: list[int], n: int) -> list[int]:
    """What the rollout engine samples greedily for ``prompt`` from the weights in ``model_dir`` (a model or an
    adapter directory), loaded independently of any server."""
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.policy.sampling import SamplingParams
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.render import ChatRenderer

    model, tok = load_model_and_tokenizer(str(model_dir))
    model.eval()
    r = ChatRenderer(tok)
    eng = TransformersSampler(model, stop_ids=r.stop_ids, pad_id=tok.pad_token_id).slot_engine(
        SamplingParams(temperature=1.0, top_p=1e-9, max_new_tokens=n), slots=1)
    eng.feed(0, prompt, torch.Generator().manual_seed(0), n)
    while eng.busy():
        for _, g in eng.step():
            return g.ids
    raise AssertionError("no generation")
