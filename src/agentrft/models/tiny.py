"""Build a tiny tool-calling model offline: a byte-level BPE tokenizer trained on an environment's text and a
small Llama-style causal LM with the ChatML tool template.

This is what tests and the quickstart train: no hub, no downloads, seconds to build. The output directory is
a normal transformers model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template), loadable by ``AutoModelForCausalLM.from_pretrained`` like
any HF checkpoint — the same loading code real users point at a hub id or path.

Why Llama and not Qwen2: transformers 5 ignores a ``qwen2`` checkpoint's own tokenizer pipeline and rebuilds it
as ``Qwen2Tokenizer`` (Qwen's pre-tokenizer regex over our merges), so the tokenizer a Qwen2 directory loads
with is not the one that was trained. ``llama`` checkpoints load ``tokenizer.json`` as written;
:func:`build_tiny_model` checks the reload and refuses to save a model whose tokenizer does not round-trip.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from agentrft.models.chat_templates import CHATML_EOS, CHATML_SPECIAL, CHATML_TOOLS


WORD_REGEX = r"\s+|[A-Za-z0-9_]+(?:[./][A-Za-z0-9_]+)*|[^A-Za-z0-9_\s]+"


@dataclass
class TinyModelSpec:
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    # Weight init std; None = 1/sqrt(hidden_size). Measured on repo_locator (880k params, SFT lr 1e-3): with
    # std 0.088 the model copies names from its context (grep arguments, answered paths) after ~200 steps
    # (0.80 of held-out demos exact after 500); with transformers' default 0.02 it had not after 1,500 steps.
    initializer_range: float | None = None
    seed: int = 0


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE on ``texts`` (no unknown tokens: any byte sequence encodes), wrapped for transformers."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Words, runs of punctuation and runs of whitespace are separate pre-tokens, so a word is the same token
    # wherever it appears ("K7" in a question, in JSON arguments, in a tool result). A word may contain inner
    # dots and slashes ("lib/store.py", "ana.diaz"), so a path is one pre-token and, once frequent, one token.
    # A tiny model then copies a name by attending to it once, instead of chaining a multi-token induction.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(WORD_REGEX), behavior="isolated"),
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


@functools.lru_cache(maxsize=4)
def _template_only_tokenizer(chat_template: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    boot = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), eos_token=CHATML_EOS)
    boot.chat_template = chat_template
    return boot


def render_chat_texts(conversations: Iterable[dict], chat_template: str = CHATML_TOOLS) -> list[str]:
    """Each ``{"messages": [...], "tools": [...]}`` as the exact text ``chat_template`` renders for it.

    Corpora include these so the tokenizer sees the template's own words (role names, ``"arguments"``, the
    tools preamble) as often as a model will: without them every assistant turn spends ~15 tokens spelling
    ``{"name": …, "arguments": …}`` out of fragments. Rendering goes through transformers'
    ``apply_chat_template`` on a vocabulary-free tokenizer, so the text is what training will tokenize.
    """
    boot = _template_only_tokenizer(chat_template)
    return [boot.apply_chat_template(c["messages"], tools=c.get("tools") or None, tokenize=False)
            for c in conversations]


def dataset_corpus(files: Iterable[str | Path], extra_tools: Iterable[dict] = ()) -> Iterator[str]:
    """Every text a model will see for OpenAI-format dataset files (training rows, validation rows, demonstration
    conversations): each conversation as the chat template renders it, each message and tool call on its own,
    each tool schema (the rows' own and ``extra_tools``), and the row's reference fields — the tokenizer corpus for
    a task that is not a bundled environment. Files are validated as datasets are (errors name ``file:line``)."""
    import json

    from agentrft.data import load_dataset

    for t in extra_tools:
        yield json.dumps(t)
    for f in files:
        rows = load_dataset(f, allow_demos=True)
        for row in rows:
            yield render_chat_texts([{"messages": row.messages, "tools": row.tools}])[0]
            for t in row.tools or []:
                yield json.dumps(t)
            for m in row.messages:
                if m.get("content"):
                    yield m["content"] if isinstance(m["content"], str) else json.dumps(m["content"])
                for c in m.get("tool_calls") or []:
                    yield c["function"]["name"] + " " + str(c["function"].get("arguments", ""))
            for k, v in row.item.items():
                if k not in ("messages", "tools"):
                    yield v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def build_tiny_model(texts: Iterable[str], out_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Train the tokenizer on ``texts``, initialise a Llama-style model, save both to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    tok = train_tokenizer(texts, spec.vocab_size)
    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(
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
        initializer_range=spec.initializer_range or spec.hidden_size ** -0.5,
        attention_bias=False,
        mlp_bias=False,
        rope_theta=10000.0,
    )
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    check_tokenizer_reloads(out, tok, texts)
    return out


def check_tokenizer_reloads(model_dir: str | Path, tok, texts: list[str]) -> None:
    """Raise if ``AutoTokenizer.from_pretrained(model_dir)`` tokenizes any of (up to 200 of) ``texts``
    differently from ``tok``, the tokenizer that was trained and saved there."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(model_dir)
    for text in texts[:: max(1, len(texts) // 200)]:
        if reloaded(text, add_special_tokens=False)["input_ids"] != tok(text, add_special_tokens=False)["input_ids"]:
            raise RuntimeError(f"{model_dir}: the saved tokenizer does not reload as trained "
                               f"({type(reloaded).__name__} tokenizes {text[:60]!r} differently); transformers "
                               "changed how it loads tokenizer.json for this model type")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
