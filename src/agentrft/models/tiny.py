"""Build a tiny tool-calling model offline: a byte-level BPE tokenizer trained on an environment's text and a
small Qwen2-style causal LM with the ChatML tool template.

This is what tests and the quickstart train: no hub, no downloads, seconds to build. The output directory is
a normal transformers model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template), loadable by ``AutoModelForCausalLM.from_pretrained`` like
any HF checkpoint — the same loading code real users point at a hub id or path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from agentrft.models.chat_templates import CHATML_EOS, CHATML_SPECIAL, CHATML_TOOLS


@dataclass
class TinyModelSpec:
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE on ``texts`` (no unknown tokens: any byte sequence encodes), wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Words, runs of punctuation and runs of whitespace are separate pre-tokens, so a word is the same token
    # wherever it appears ("K7" in a question, in JSON arguments, in a tool result). A tiny model then copies
    # by identity — an induction head — instead of learning a map between " K7" and "K7" per word.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+|[A-Za-z0-9_]+|[^A-Za-z0-9_\s]+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<pad>", *CHATML_SPECIAL]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=CHATML_EOS,
        pad_token="<pad>",
        unk_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<tool_call>", "</tool_call>"],
    )
    fast.chat_template = CHATML_TOOLS
    return fast


def build_tiny_model(texts: Iterable[str], out_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Train the tokenizer on ``texts``, initialise a Qwen2 model, save both to ``out_dir``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(spec.seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tok.convert_tokens_to_ids(CHATML_EOS),
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(cfg).to(torch.float32)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
