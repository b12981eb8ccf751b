"""``reward_model``: a learned scorer of whole trajectories, usable wherever a grader is.

A reward model here is a small scoring head on a frozen base causal LM (any HF model directory; the tiny models
work): the trajectory is rendered as plain text (task, then each assistant message, tool call and tool result — the
same text whatever the base's chat template), encoded by the base, its final-layer hidden states mean-pooled over
the tokens (h̄ ∈ R^d), standardised with the training set's mean μ and deviation σ, and scored::

    z = (h̄ − μ) / σ,        score = sigmoid(w · z + b) ∈ (0, 1)

``w, b`` are trained (``agentrft reward-model train``, :mod:`agentrft.rl.reward_model`) by binary cross-entropy
against labels in [0, 1] (grader scores, audit verdicts) with L2 weight ``l2``::

    L = −mean_i [ y_i log s_i + (1 − y_i) log(1 − s_i) ] + l2 · |w|²

Spec: ``{"type": "reward_model", "name": "rm", "path": "runs/rm", "pass_threshold": 0.5}``. The directory holds
``reward_model.json`` (base model, max tokens, μ, σ, w, b and the held-out validation: Spearman ρ on labels the head
never saw). Guard it with holdout graders (``holdout_graders`` in the run config): they are recorded beside the
learned reward so reward hacking of the model shows as a falling holdout score.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader

META = "reward_model.json"


def trajectory_text(messages: list[dict[str, Any]], max_chars: int = 2000) -> str:
    """The text a reward model reads: the prompt messages, then every reply, call and result, one per line."""
    lines = []
    for m in messages:
        role = m.get("role")
        c = m.get("content") or ""
        if not isinstance(c, str):
            c = json.dumps(c)
        c = c[:max_chars]
        if role == "assistant":
            if c:
                lines.append(f"assistant: {c}")
            for tc in m.get("tool_calls") or []:
                fn = tc.get("function") or {}
                lines.append(f"call {fn.get('name')}({str(fn.get('arguments', ''))[:max_chars]})")
        elif role == "tool":
            lines.append(f"result: {c}")
        else:
            lines.append(f"{role}: {c}")
    return "\n".join(lines)


class Encoder:
    """A frozen base LM that turns texts into mean-pooled final hidden states (fp32, no gradient)."""

    def __init__(self, base: str, max_tokens: int = 512):
        from agentrft.policy.learner import load_model_and_tokenizer

        self.base = base
        self.max_tokens = max_tokens
        self.model, self.tok = load_model_and_tokenizer(base)
        self.model.eval()
        self.lock = threading.Lock()

    def features(self, texts: list[str], batch: int = 16) -> Any:
        import torch

        out = []
        with self.lock, torch.no_grad():
            for k in range(0, len(texts), batch):
                enc = [self.tok(t, add_special_tokens=False)["input_ids"][-self.max_tokens:] or [0]
                       for t in texts[k : k + batch]]
                L = max(len(e) for e in enc)
                ids = torch.tensor([e + [0] * (L - len(e)) for e in enc])
                attn = torch.tensor([[1] * len(e) + [0] * (L - len(e)) for e in enc])
                h = self.model(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[-1]
                m = attn[..., None].float()
                out.append((h.float() * m).sum(1) / m.sum(1))
        return torch.cat(out)


_ENCODERS: dict[tuple[str, int], Encoder] = {}
_ENC_LOCK = threading.Lock()


def encoder(base: str, max_tokens: int) -> Encoder:
    """One encoder per (base, max_tokens) per process: every grader instance on the same model shares it."""
    with _ENC_LOCK:
        e = _ENCODERS.get((base, max_tokens))
        if e is None:
            e = _ENCODERS[(base, max_tokens)] = Encoder(base, max_tokens)
        return e


class RewardHead:
    """``score = sigmoid(w · (h̄ − μ)/σ + b)`` (see the module docstring)."""

    def __init__(self, mu: Any, sigma: Any, w: Any, b: float):
        import torch

        self.mu, self.sigma = torch.as_tensor(mu, dtype=torch.float32), torch.as_tensor(sigma, dtype=torch.float32)
        self.w, self.b = torch.as_tensor(w, dtype=torch.float32), float(b)

    def logits(self, feats: Any) -> Any:
        return ((feats - self.mu) / self.sigma) @ self.w + self.b

    def scores(self, feats: Any) -> list[float]:
        import torch

        return torch.sigmoid(self.logits(feats)).tolist()


def load_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text())
    except FileNotFoundError:
        raise GraderSpecError(f"grader.path: {p} does not exist (train one with `agentrft reward-model train`)") \
            from None
    except ValueError as e:
        raise GraderSpecError(f"grader.path: {p} is not valid JSON: {e}") from None
    missing = [k for k in ("base", "max_tokens", "mu", "sigma", "w", "b") if k not in meta]
    if missing:
        raise GraderSpecError(f"grader.path: {p} lacks {', '.join(missing)}")
    return meta


@register_grader
class RewardModelGrader(Grader):
    type = "reward_model"

    def validate_spec(self) -> None:
        path = self.spec.get("path")
        if not isinstance(path, str) or not path:
            raise GraderSpecError("grader.path: the reward model's directory is required (a string)")
        extra = sorted(set(self.spec) - {"type", "name", "path", "pass_threshold"})
        if extra:
            raise GraderSpecError(f"grader.{extra[0]}: unknown key for reward_model (known: name, path, "
                                  "pass_threshold)")
        self.meta = load_meta(path)
        self.head = RewardHead(self.meta["mu"], self.meta["sigma"], self.meta["w"], self.meta["b"])
        self._enc: Encoder | None = None

    @property
    def encoder(self) -> Encoder:
        if self._enc is None:  # loaded at the first grade, so validating a config does not load a model
            self._enc = encoder(self.meta["base"], int(self.meta["max_tokens"]))
        return self._enc

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        traj = sample.get("trajectory") or {}
        msgs = traj.get("messages") or [*item.get("messages", []),
                                        {"role": "assistant", "content": sample.get("output_text", "")}]
        score = self.head.scores(self.encoder.features([trajectory_text(msgs)]))[0]
        return self.make_grade(score, metadata={"reward_model": self.spec["path"]})
