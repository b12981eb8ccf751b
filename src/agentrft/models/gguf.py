"""Import a GGUF checkpoint as a float32 transformers model directory with a tool-calling chat template.

GGUF (llama.cpp's single-file format) carries the weights, often quantized (Q4_K, Q5_0, Q8_0, …), the
architecture hyperparameters and the tokenizer (``tokenizer.ggml.*``). transformers reads it (with the ``gguf``
package) and dequantizes every tensor to float32; we save the result as a normal model directory
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``) so every later load is a
plain ``from_pretrained`` that takes seconds instead of the minutes of dequantization.

Dequantization is exact with respect to the file: a Q4_K block stores ``w = d · q − m`` (per-block scale ``d``
and min ``m``, 4-bit ``q``), so the float32 tensor reproduces the quantized model's weights bit for bit; it does
not recover the original bf16 weights.

Base-model GGUFs usually carry no chat template (Gemma 3 270M does not), and a template that exists is rarely
in the tool-call dialect our parser reads. The import therefore attaches one of
:mod:`agentrft.models.chat_templates`:

* ``gemma``: ``<start_of_turn>role\\n … <end_of_turn>\\n`` (architectures named ``gemma*``), the end-of-turn token
  ``<end_of_turn>`` becomes the tokenizer's eos (the token that ends an assistant turn, i.e. the sampler's stop
  token). When the tokenizer prepends a BOS token (Gemma does: ``add_bos_token``), the template starts with it —
  the renderer encodes with ``add_special_tokens=False``, and Gemma degrades badly without its ``<bos>``.
* ``chatml``: ``<|im_start|>`` / ``<|im_end|>`` (Qwen-style vocabularies).

Each marker must exist in the vocabulary as one token (checked; a template whose markers split into pieces
would make the stop token unreachable). After attaching, the template is exercised through
:class:`agentrft.rollout.render.ChatRenderer` on a small tool conversation: it must be append-only and
``render_demo`` must succeed, so a model that imports is a model the trainer can use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentrft.models.chat_templates import CHATML_EOS, CHATML_TOOLS, GEMMA_EOS, GEMMA_TOOLS

GGUF_MAGIC = b"GGUF"

# name -> (template, turn-start marker, end-of-turn marker)
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "gemma": (GEMMA_TOOLS, "<start_of_turn>", GEMMA_EOS),
    "chatml": (CHATML_TOOLS, "<|im_start|>", CHATML_EOS),
}

# A tiny tool conversation used to check that an attached template works token-exactly.
_PROBE_TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Find a value by key.",
                                                  "parameters": {"type": "object",
                                                                 "properties": {"key": {"type": "string"}}}}}]
_PROBE_DEMO = [
    {"role": "system", "content": "You answer with the value for the key."},
    {"role": "user", "content": "What is the value of alpha?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"key\": \"alpha\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "42"},
    {"role": "assistant", "content": "42"},
]


class GGUFImportError(ValueError):
    """The GGUF file cannot be imported; ``str()`` names the file and what is wrong with it."""


@dataclass
class GGUFHeader:
    """What the file's metadata says (read without loading any tensor)."""

    path: str
    version: int
    architecture: str
    name: str
    tensor_count: int
    file_type: int | None
    context_length: int | None
    vocab_size: int
    tokenizer_model: str
    has_chat_template: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportResult:
    out_dir: Path
    source: str
    sha256: str
    architecture: str
    model_type: str
    parameters: int
    vocab_size: int
    template: str  # "gemma" | "chatml" | "file" (the GGUF's own template kept)
    eos_token: str
    load_s: float
    save_s: float

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d


# ---- reading the header -----------------------------------------------------------------------------

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """A bounds-checked little-endian reader over the file's bytes (a memory map)."""

    def __init__(self, buf: Any, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFImportError(f"{self.path}: truncated GGUF (needs {n} bytes at offset {self.pos}, "
                                  f"file has {len(self.buf)})")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        """One metadata value. Arrays of scalars are skipped by size (the 262k-entry score/type arrays of a
        tokenizer) unless ``keep_arrays``; arrays of strings are walked (each has its own length) and only
        their count is kept unless ``keep_arrays``."""
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _SCALAR and not keep_arrays:
                self.take(struct.calcsize(_SCALAR[etype]) * count)
                return _ArrayInfo(count)
            if etype == _STRING and not keep_arrays:
                for _ in range(count):
                    self.take(self.unpack("<Q"))
                return _ArrayInfo(count)
            return [self.value(etype, True) for _ in range(count)]
        raise GGUFImportError(f"{self.path}: unknown GGUF value type {vtype} at offset {self.pos}")


@dataclass
class _ArrayInfo:
    count: int


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Validate the file (exists, GGUF magic, parseable metadata) and return its header — in well under a second,
    without loading tensors or the tokenizer arrays (``gguf.GGUFReader`` takes about a minute on Gemma's
    262k-token vocabulary because it materialises every array element).

    Layout (GGUF v2/v3, little-endian): ``"GGUF"``, version u32, tensor count u64, metadata count u64, then
    ``key (u64 length + UTF-8), type u32, value`` per entry; strings are u64 length + bytes, arrays are
    element type u32 + count u64 + elements. Raises :class:`GGUFImportError` with the path and the reason."""
    import mmap

    p = Path(path).expanduser()
    if not p.exists():
        raise GGUFImportError(f"{p}: no such file")
    if not p.is_file():
        raise GGUFImportError(f"{p}: not a file")
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[:4] != GGUF_MAGIC:
            raise GGUFImportError(f"{p}: not a GGUF file (starts with {head[:4]!r}, expected {GGUF_MAGIC!r})")
        version = struct.unpack("<I", head[4:8])[0]
        if version not in (2, 3):
            raise GGUFImportError(f"{p}: GGUF version {version} is not supported (2 and 3 are)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, p)
            cur.take(8)
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                meta[key] = cur.value(cur.unpack("<I"), keep_arrays=False)

    arch = meta.get("general.architecture")
    if not arch:
        raise GGUFImportError(f"{p}: the metadata has no general.architecture")
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, _ArrayInfo):
        raise GGUFImportError(f"{p}: the file carries no tokenizer (tokenizer.ggml.tokens is missing)")
    small = {k: v for k, v in meta.items()
             if not isinstance(v, (_ArrayInfo, list)) and k != "tokenizer.chat_template"}
    return GGUFHeader(
        path=str(p), version=int(version), architecture=str(arch), name=str(meta.get("general.name", "") or ""),
        tensor_count=int(n_tensors), file_type=meta.get("general.file_type"),
        context_length=meta.get(f"{arch}.context_length"), vocab_size=int(tokens.count),
        tokenizer_model=str(meta.get("tokenizer.ggml.model", "") or ""),
        has_chat_template="tokenizer.chat_template" in meta, metadata=small,
    )


def supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(GGUF_SUPPORTED_ARCHITECTURES)


# ---- templates --------------------------------------------------------------------------------------

def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of ``text`` if the tokenizer encodes it as exactly one token, else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def choose_template(tokenizer: Any, architecture: str, template: str = "auto") -> str:
    """``auto``: ``gemma`` for gemma* architectures, else ``chatml`` when the vocabulary has its markers."""
    if template != "auto":
        if template not in TEMPLATES:
            raise GGUFImportError(f"--template: unknown template {template!r}; known: auto, {', '.join(TEMPLATES)}")
        return template
    if architecture.lower().startswith("gemma"):
        return "gemma"
    if all(single_token_id(tokenizer, t) is not None for t in ("<|im_start|>", "<|im_end|>")):
        return "chatml"
    raise GGUFImportError(
        f"no tool-calling template fits architecture {architecture!r}: its vocabulary has neither Gemma's "
        "<start_of_turn>/<end_of_turn> nor ChatML's <|im_start|>/<|im_end|> as single tokens; pass --template")


def attach_tool_template(tokenizer: Any, model: Any, name: str) -> None:
    """Set the tokenizer's chat template, eos (= end-of-turn token) and the model's generation eos ids.

    Raises :class:`GGUFImportError` when a marker of the template is not a single token of the vocabulary."""
    body, start, end = TEMPLATES[name]
    for marker in (start, end):
        if single_token_id(tokenizer, marker) is None:
            ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
            raise GGUFImportError(
                f"template {name!r}: {marker!r} is not one token of this vocabulary (it encodes as {len(ids)} "
                f"tokens {ids[:8]}); pick another --template")
    bos = tokenizer.bos_token if getattr(tokenizer, "add_bos_token", False) else None
    if bos and single_token_id(tokenizer, bos) is not None:
        body = bos + body
    tokenizer.chat_template = body
    tokenizer.eos_token = end
    end_id = single_token_id(tokenizer, end)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = end
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        ids = [end_id]
        old = gen.eos_token_id
        for x in (old if isinstance(old, list) else [old]):
            if x is not None and x not in ids:
                ids.append(int(x))
        gen.eos_token_id = ids
        gen.pad_token_id = tokenizer.pad_token_id
        gen.bos_token_id = tokenizer.bos_token_id


def check_template(tokenizer: Any) -> dict[str, Any]:
    """Render the probe tool conversation with :class:`ChatRenderer` (append-only check, ``render_demo``) and
    return a summary; raises :class:`GGUFImportError` with the renderer's reason on failure."""
    from agentrft.rollout.parse import parse_turn
    from agentrft.rollout.render import ChatRenderer, TemplateError

    try:
        r = ChatRenderer(tokenizer)
        ids, mask = r.render_demo(_PROBE_DEMO, _PROBE_TOOLS)
        cont = r.continuation_ids(_PROBE_DEMO[:3], _PROBE_DEMO[3:4], _PROBE_TOOLS, sampled_ended_with_eos=True)
    except (TemplateError, ValueError) as e:
        raise GGUFImportError(f"the attached chat template cannot be used token-exactly: {e}") from None
    sampled = [t for t, m in zip(ids, mask) if m]
    text = r.decode(sampled)
    turn = parse_turn(text.split(r.eos_text)[0])
    if not turn.calls or turn.calls[0].name != "lookup":
        raise GGUFImportError(f"the template's rendered tool call does not parse back: {text[:200]!r}")
    if sampled.count(r.eos_id) != 2:
        raise GGUFImportError("the rendered assistant turns do not each end with one end-of-turn token")
    return {"tokens": len(ids), "assistant_tokens": len(sampled), "continuation_tokens": len(cont)}


# ---- the import -------------------------------------------------------------------------------------

def _plain_float32(model: Any) -> Any:
    """Detach transformers' GGUF quantizer from a fully dequantized model.

    transformers ≥ 5 loads GGUF through a quantizer that can keep weights packed (``GgufLinear``); with
    ``dequantize=True`` every weight is a dense float32 tensor, but the quantizer stays attached and marks the
    model non-serializable and non-trainable. Once we have checked that no packed module is left, the model is
    an ordinary dense model and we say so."""
    import torch

    packed = [n for n, m in model.named_modules() if type(m).__name__.startswith("Gguf")]
    if packed:
        raise GGUFImportError(f"transformers kept {len(packed)} modules packed (e.g. {packed[0]}); cannot save a dense "
                              "float32 copy")
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.to(torch.float32)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def import_gguf(
    path: str | Path,
    out_dir: str | Path,
    *,
    template: str = "auto",
    keep_file_template: bool = False,
    overwrite: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> ImportResult:
    """GGUF file → float32 transformers directory at ``out_dir`` with a tool-calling template attached.

    The directory is written to a sibling temp dir and renamed into place, so a killed import leaves no
    half-written model. ``agentrft_import.json`` in it records the source file, its sha256, the template and
    the timings. ``keep_file_template`` keeps the GGUF's own template when it has one (it must still pass the
    renderer check)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    say = on_stage or (lambda s: None)
    header = read_gguf_header(path)
    src = Path(header.path).resolve()
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GGUFImportError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    supported = supported_architectures()
    if header.architecture not in supported:
        raise GGUFImportError(f"{src}: architecture {header.architecture!r} is not supported by transformers' GGUF "
                              f"loader; supported: {', '.join(supported)}")
    say(f"loading {src.name} ({header.architecture}, {header.tensor_count} tensors, vocab {header.vocab_size}) "
        "and dequantizing to float32")
    t0 = time.perf_counter()
    try:
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=src.name, dequantize=True))
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as e:
        raise GGUFImportError(f"{src}: transformers could not load it: {type(e).__name__}: {e}") from None
    model = _plain_float32(model)
    load_s = time.perf_counter() - t0

    if keep_file_template and getattr(tok, "chat_template", None):
        used = "file"
    else:
        used = choose_template(tok, header.architecture, template)
        attach_tool_template(tok, model, used)
    probe = check_template(tok)
    say(f"attached the {used!r} template (eos {tok.eos_token!r}); renderer check passed ({probe['tokens']} tokens)")

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    result = ImportResult(
        out_dir=out, source=str(src), sha256=sha256_file(src), architecture=header.architecture,
        model_type=str(model.config.model_type), parameters=int(n_params), vocab_size=int(len(tok)),
        template=used, eos_token=str(tok.eos_token), load_s=round(load_s, 2), save_s=0.0,
    )
    result.save_s = round(time.perf_counter() - t0, 2)
    meta = {**result.as_dict(), "gguf": {k: v for k, v in asdict(header).items() if k != "metadata"},
            "template_check": probe}
    (tmp / "agentrft_import.json").write_text(json.dumps(meta, indent=2, default=str))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    say(f"saved {out} ({n_params / 1e6:.1f}M parameters, float32) in {result.save_s:.1f}s")
    return result


__all__ = [
    "GGUFHeader", "GGUFImportError", "ImportResult", "TEMPLATES", "attach_tool_template", "check_template",
    "choose_template", "import_gguf", "read_gguf_header", "single_token_id", "supported_architectures",
]
