"""On-policy distillation: the student samples, the teacher grades every token it sampled.

As in Thinking Machines' "On-Policy Distillation" (and the λ=1, β=1 corner of TRL's GKD: on-policy samples, reverse
KL), the target is the teacher's log-probability of each token the student actually sampled, in the student's own
context. Notation per sampled token t of a student trajectory (loss mask m_t = 1): the student's sampling log-prob
ℓ°_t (recorded by the sampler), the teacher's ℓᵀ_t = log p_T(x_t | x_<t), the student's current ℓ_t.

The per-token reverse KL, estimated with the one sampled token::

    k_t = ℓ°_t − ℓᵀ_t                     E_{x_t ~ p_S}[k_t] = KL(p_S(·|x_<t) ‖ p_T(·|x_<t))

Minimising Σ_t E[k_t] by the score-function gradient (E[∇ℓ] = 0 removes the −∇ℓ term of ∇(ℓ − ℓᵀ))::

    ∇ Σ_t KL_t = E[ Σ_t ∇ℓ_t · (ℓ_t − ℓᵀ_t) ]

is exactly a policy gradient with the per-token advantage A_t = −k_t = ℓᵀ_t − ℓ°_t, with no discounting (each
token is credited with its own KL only — the "discount 0" choice of the Thinking Machines recipe). So it plugs into
the trainer's clipped importance-ratio loss (:mod:`agentrft.rl.loss`) unchanged, token level::

    A_t = kl_coef · (ℓᵀ_t − ℓ°_t) + reward_coef · A^GRPO_i        (on sampled tokens; 0 elsewhere)

where A^GRPO_i is the graders' group advantage of trajectory i (0 for a zero-variance group), so
``reward_coef = 0`` is pure distillation and > 0 mixes the task reward back in. Tokens the student finds likelier
than the teacher does get pushed down, tokens the teacher prefers get pushed up; a student that matches the teacher
gets zero advantage everywhere. Every non-dropped trajectory trains (a group whose rewards are all equal still has
a per-token signal).

The teacher's log-probs come from any server whose ``/v1/completions`` takes token-id prompts with ``echo: true``
and ``max_tokens: 0`` and returns the prompt's ``logprobs`` (vLLM does; so does ``agentrft serve``). The teacher must
share the student's tokenizer — each answer's token strings are checked against the student's and a mismatch stops
the run with the first differing token. The teacher's log-probs are untempered (T = 1), so the student should sample
at ``temperature: 1`` for ℓ° to be its true log-prob (the learner scores at the same temperature either way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrft.rl.distill.teacher import TeacherClient, TeacherError
from agentrft.types import Trajectory


def distill_token_advantages(sampled_lp: list[float], teacher_lp: list[float], mask: list[int], *,
                             kl_coef: float = 1.0, outcome_advantage: float = 0.0, reward_coef: float = 0.0
                             ) -> list[float]:
    """``A_t = m_t · (kl_coef · (ℓᵀ_t − ℓ°_t) + reward_coef · A_outcome)`` over a trajectory's token ids (see the
    module docstring); ``teacher_lp[t]`` is read only where ``mask[t] = 1``."""
    if not (len(sampled_lp) == len(teacher_lp) == len(mask)):
        raise ValueError(f"lengths differ: {len(sampled_lp)} sampled, {len(teacher_lp)} teacher, {len(mask)} mask")
    return [m * (kl_coef * (lt - ls) + reward_coef * outcome_advantage) if m else 0.0
            for ls, lt, m in zip(sampled_lp, teacher_lp, mask)]


def reverse_kl(sampled_lp: list[float], teacher_lp: list[float], mask: list[int]) -> tuple[float, int]:
    """``(Σ_t m_t (ℓ°_t − ℓᵀ_t), Σ_t m_t)``: the sampled estimate of the reverse KL, summed, and its token count."""
    s = sum((ls - lt) for ls, lt, m in zip(sampled_lp, teacher_lp, mask) if m)
    return s, int(sum(mask))


class TeacherScorer:
    """Teacher log-probs of given token ids through ``/completions`` with ``echo`` (``max_tokens: 0``)."""

    BATCH = 32  # prompts per request

    def __init__(self, client: TeacherClient, tokenizer: Any):
        self.client = client
        self.tok = tokenizer

    def score(self, seqs: list[list[int]]) -> list[list[float]]:
        """``out[i][k] = log p_T(seqs[i][k] | seqs[i][:k])`` for k ≥ 1; ``out[i][0] = 0.0`` (no context)."""
        out: list[list[float]] = []
        for b in range(0, len(seqs), self.BATCH):
            chunk = seqs[b : b + self.BATCH]
            data = self.client.post("/completions", {"model": self.client.model, "prompt": chunk, "max_tokens": 0,
                                                     "echo": True, "logprobs": 0, "temperature": 1.0})
            choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(chunk):
                raise TeacherError(f"teacher {self.client.base_url}/completions: {len(choices)} choices for "
                                   f"{len(chunk)} prompts")
            for ids, c in zip(chunk, choices):
                lp = (c.get("logprobs") or {})
                lps, toks = lp.get("token_logprobs"), lp.get("tokens")
                if not isinstance(lps, list) or len(lps) < len(ids):
                    raise TeacherError(f"teacher {self.client.base_url}/completions did not return the prompt's "
                                       "log-probs (echo with logprobs, max_tokens 0): on-policy distillation needs a "
                                       "server that does (vLLM, agentrft serve)")
                self._check_tokens(ids, toks)
                out.append([0.0] + [float(x) for x in lps[1 : len(ids)]])
        return out

    def _check_tokens(self, ids: list[int], toks: Any) -> None:
        if not isinstance(toks, list):
            return
        for k, (t, s) in enumerate(zip(ids, toks)):
            mine = self.tok.decode([t], skip_special_tokens=False)
            if mine != s:
                raise TeacherError(f"the teacher's tokenizer differs from the student's: token id {t} (position {k}) "
                                   f"is {s!r} on the teacher, {mine!r} here — on-policy distillation needs the same "
                                   "tokenizer (use `agentrft distill` to distil across tokenizers)")


@dataclass
class OnPolicyDistiller:
    """The trainer's hook: per-token distillation advantages for a step's trajectories."""

    scorer: TeacherScorer
    kl_coef: float = 1.0
    reward_coef: float = 0.0

    def advantages(self, trajs: list[Trajectory]) -> tuple[list[Trajectory], dict[str, list[float]], dict[str, float]]:
        """``(trained trajectories, token advantages by trace_id, metrics)``; sets each trajectory's ``advantage``
        to the mean of its token advantages (what the store records)."""
        live = [t for t in trajs if not t.dropped and sum(t.loss_mask) > 0]
        teacher = self.scorer.score([t.token_ids for t in live])
        advs: dict[str, list[float]] = {}
        kl_sum, n_tok = 0.0, 0
        for t, tl in zip(live, teacher):
            outcome = float(t.advantage or 0.0)
            a = distill_token_advantages(t.logprobs, tl, t.loss_mask, kl_coef=self.kl_coef,
                                         outcome_advantage=outcome, reward_coef=self.reward_coef)
            advs[t.trace_id] = a
            s, n = reverse_kl(t.logprobs, tl, t.loss_mask)
            kl_sum, n_tok = kl_sum + s, n_tok + n
            t.advantage = sum(a) / max(1, n)
        m = {"distill/reverse_kl": kl_sum / max(1, n_tok), "distill/teacher_scored_tokens": float(n_tok),
             "distill/teacher_sequences": float(len(live))}
        return live, advs, m

    def close(self) -> None:
        self.scorer.client.close()


def build_distiller(cfg: Any, tokenizer: Any) -> OnPolicyDistiller | None:
    """The hook for a run config with ``distill.on_policy``; None otherwise."""
    d = getattr(cfg, "distill", None)
    if d is None or not d.on_policy:
        return None
    return OnPolicyDistiller(TeacherScorer(TeacherClient.from_config(d.teacher), tokenizer), d.kl_coef,
                             d.reward_coef)
