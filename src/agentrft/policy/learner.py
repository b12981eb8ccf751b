"""The transformers learner: token log-probs, the RL update, SFT steps, checkpoints.

It owns the policy model (LoRA via peft by default, full fine-tuning as an option) and its AdamW optimizer.
The sampler shares the same model object in-process, so there is no weight sync on one machine.

Log-probs are always ``log_softmax(logits / T)`` at the sampling temperature T, matching what the sampler
recorded. With LoRA, the KL reference is the same network with the adapter switched off (no extra memory);
with full fine-tuning and ``kl_coef > 0`` a frozen copy of the initial weights is kept.
"""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from agentrft.policy.architectures import architecture_of, base_model
from agentrft.policy.checkpoint_io import write_atomically
from agentrft.types import Trajectory


def load_model_and_tokenizer(path: str, *, dtype: torch.dtype = torch.float32):
    """Load a causal LM + tokenizer from a HF id or local directory. An agentrft LoRA checkpoint directory
    (``adapter_config.json``) loads its base model and applies the adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        meta = json.loads((p / "adapter_config.json").read_text())
        base = meta.get("base_model_name_or_path")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(p), is_trainable=True)
        tok = AutoTokenizer.from_pretrained(str(p) if (p / "tokenizer_config.json").exists() else base)
        return model, tok
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok


class PolicyLoss(Protocol):
    """What ``rl_step`` minimises, given per-token tensors [B, T] of one micro-batch: the current log-probs (with
    gradient), the sampler's, the advantages, the loss mask, the reference log-probs (when ``kl_coef > 0``) and
    the step's totals (sampled tokens, sequences) so micro-batches add up to the full-batch loss. Returns the loss
    to backpropagate and statistics summed over the micro-batch (``clipped``, ``ratio_sum``, ``units``,
    ``kl_sum``). The RL objectives live in :mod:`agentrft.rl.loss`."""

    def __call__(self, new_lp: torch.Tensor, old_lp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                 n_tokens: float, n_seqs: int, ref_lp: torch.Tensor | None, kl_coef: float
                 ) -> tuple[torch.Tensor, dict[str, float]]: ...


def _split_head(model: Any) -> tuple[Any, Any, float | None] | None:
    """``(decoder, lm_head, softcap)`` for a model whose logits are its head over its decoder's last hidden
    state (``plain_head`` in the architecture table), else None (the caller then runs the whole model)."""
    arch, base = architecture_of(model), base_model(model)
    if arch is None or not arch.plain_head or not hasattr(base, "get_decoder"):
        return None
    return base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


def _pad_batch(seqs: list[list[Any]], value: Any, dtype: torch.dtype) -> torch.Tensor:
    L = max(len(s) for s in seqs)
    out = torch.full((len(seqs), L), value, dtype=dtype)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=dtype)
    return out


class Learner:
    def __init__(
        self,
        model: Any,
        *,
        lora: Any | None,
        learning_rate: float,
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        temperature: float = 1.0,
        kl_coef: float = 0.0,
        micro_batch_size: int = 8,
        pad_id: int = 0,
        compile: bool = False,
    ):
        """``compile``: run the training forward (RL and SFT steps; not scoring or the KL reference) through
        ``torch.compile`` (inductor; needs a C++ compiler on CPU). The first step pays the compile and one more
        after the first change of batch shape, when torch switches to dynamic shapes; then updates of small models
        run faster (figures in docs/benchmarks.md). Worth it for long runs of small models, not for short ones."""
        if compile:
            import shutil

            if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
                raise ValueError("compile_learner needs a C++ compiler for torch.compile's CPU backend (none of "
                                 "g++, c++, clang++ is on PATH): install one (Debian: build-essential) or turn "
                                 "compile_learner off")
        self.compile = compile
        self._compiled: dict[int, Any] = {}  # id(module) → its torch.compile wrapper
        self.temperature = temperature
        self.kl_coef = kl_coef
        self.grad_clip = grad_clip
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id
        self.is_lora = False
        self.ref_model = None
        from peft import PeftModel

        if isinstance(model, PeftModel):
            self.is_lora = True
        elif lora is not None:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            pcfg = PeftLoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, pcfg)
            self.is_lora = True
        elif kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        # foreach: one fused update over all parameter tensors (many small ones in small models and LoRA)
        self.optimizer = torch.optim.AdamW(self.params, lr=learning_rate, weight_decay=weight_decay, foreach=True)
        self.updates = 0

    # ---- log-probs -------------------------------------------------------------------------------
    def _run(self, module: Any, compiled: bool, **kw: Any) -> Any:
        """``module(**kw)``, through its ``torch.compile`` wrapper when asked (the module itself is untouched:
        the rollout engine, scoring and checkpoints keep using it eagerly)."""
        if compiled and self.compile:
            fn = self._compiled.get(id(module))
            if fn is None:
                fn = self._compiled[id(module)] = torch.compile(module)
            return fn(**kw)
        return module(**kw)

    def _token_logprobs(self, model: Any, ids: torch.Tensor, attn: torch.Tensor, *, entropy: bool = False,
                        where: torch.Tensor | None = None, compiled: bool = False):
        """log p(ids[:, t+1] | ids[:, :t+1]) for t in 0..L-2 → [B, L-1] (and the per-token entropy).

        ``where`` ([B, L-1] bool): the positions whose values are used (the loss mask). When given, the
        output layer and the softmax over the vocabulary run at those positions only — prompt and tool
        tokens are most of an agent trajectory, and the vocabulary projection is a large share of a forward
        pass (~63% for Gemma 3 270M's 262k rows) — and the other positions read 0."""
        split = _split_head(model) if where is not None else None
        targets = ids[:, 1:]
        if split is not None:
            decoder, head, cap = split
            hidden = self._run(decoder, compiled, input_ids=ids, attention_mask=attn,
                               use_cache=False).last_hidden_state[:, :-1]
            sel = where.nonzero(as_tuple=True)
            logits = head(hidden[sel]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            targets = targets[sel]
        else:
            out = self._run(model, compiled, input_ids=ids, attention_mask=attn, use_cache=False)
            logits = out.logits[:, :-1, :].float()
        logp_all = torch.log_softmax(logits / self.temperature, dim=-1)
        lp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = -(logp_all.exp() * logp_all).sum(-1)
        if split is not None:  # back to [B, L-1], 0 where no log-prob was computed
            lp = torch.zeros(where.shape, dtype=lp.dtype).index_put(sel, lp)
            if ent is not None:
                ent = torch.zeros(where.shape, dtype=ent.dtype).index_put(sel, ent)
        return lp, ent

    @torch.no_grad()
    def score(self, token_ids: list[list[int]]) -> list[list[float]]:
        """Teacher-forced log-probs of each token given its prefix (0.0 for the first token)."""
        self.model.eval()
        res: list[list[float]] = []
        for i in range(0, len(token_ids), self.micro_batch_size):
            chunk = token_ids[i : i + self.micro_batch_size]
            ids = _pad_batch(chunk, self.pad_id, torch.long)
            attn = _pad_batch([[1] * len(s) for s in chunk], 0, torch.long)
            lp, _ = self._token_logprobs(self.model, ids, attn)
            for j, s in enumerate(chunk):
                res.append([0.0] + lp[j, : len(s) - 1].tolist())
        return res

    # ---- RL update -------------------------------------------------------------------------------
    def rl_step(
        self,
        trajs: list[Trajectory],
        token_advs: list[list[float]],
        loss_fn: PolicyLoss,
    ) -> dict[str, float]:
        """One optimizer step of ``loss_fn`` on ``trajs`` (all with advantages), accumulated over micro-batches."""
        t0 = time.perf_counter()
        self.model.train()
        total_tokens = float(sum(sum(t.loss_mask) for t in trajs)) or 1.0
        agg = {"clipped": 0.0, "ratio_sum": 0.0, "units": 0.0, "kl_sum": 0.0, "loss": 0.0, "entropy_sum": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        order = sorted(range(len(trajs)), key=lambda i: len(trajs[i].token_ids))  # similar lengths together
        for k in range(0, len(order), self.micro_batch_size):
            idx = order[k : k + self.micro_batch_size]
            mb = [trajs[i] for i in idx]
            ids = _pad_batch([t.token_ids for t in mb], self.pad_id, torch.long)
            attn = _pad_batch([[1] * len(t.token_ids) for t in mb], 0, torch.long)
            mask = _pad_batch([t.loss_mask[1:] for t in mb], 0.0, torch.float32)
            old = _pad_batch([t.logprobs[1:] for t in mb], 0.0, torch.float32)
            adv = _pad_batch([token_advs[i][1:] for i in idx], 0.0, torch.float32)
            new_lp, ent = self._token_logprobs(self.model, ids, attn, entropy=True, where=mask > 0, compiled=True)
            ref_lp = self._reference_logprobs(ids, attn, where=mask > 0) if self.kl_coef > 0 else None
            loss, st = loss_fn(new_lp, old, adv, mask, n_tokens=total_tokens, n_seqs=len(trajs), ref_lp=ref_lp,
                               kl_coef=self.kl_coef)
            loss.backward()
            for key in ("clipped", "ratio_sum", "units", "kl_sum"):
                agg[key] += st.get(key, 0.0)
            agg["loss"] += float(loss.detach())  # micro-batch losses add up to the step's loss
            agg["entropy_sum"] += float((ent * mask).sum()) if ent is not None else 0.0
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        self.optimizer.step()
        self.updates += 1
        units = agg["units"] or 1.0
        return {
            "loss": agg["loss"],
            "clip_fraction": agg["clipped"] / units,
            "ratio_mean": agg["ratio_sum"] / units,
            "kl": agg["kl_sum"] / total_tokens,
            "entropy": agg["entropy_sum"] / total_tokens,
            "grad_norm": grad_norm,
            "train_tokens": total_tokens,
            "update_time_s": time.perf_counter() - t0,
        }

    @torch.no_grad()
    def _reference_logprobs(self, ids: torch.Tensor, attn: torch.Tensor,
                            where: torch.Tensor | None = None) -> torch.Tensor:
        if self.is_lora:
            with self.model.disable_adapter():
                lp, _ = self._token_logprobs(self.model, ids, attn, where=where)
            return lp
        assert self.ref_model is not None
        lp, _ = self._token_logprobs(self.ref_model, ids, attn, where=where)
        return lp

    @torch.no_grad()
    def kl_to_reference(self, trajs: list[Trajectory]) -> float:
        """Mean k3 KL to the reference over sampled tokens (a metric even when kl_coef = 0)."""
        num = den = 0.0
        for k in range(0, len(trajs), self.micro_batch_size):
            mb = trajs[k : k + self.micro_batch_size]
            ids = _pad_batch([t.token_ids for t in mb], self.pad_id, torch.long)
            attn = _pad_batch([[1] * len(t.token_ids) for t in mb], 0, torch.long)
            mask = _pad_batch([t.loss_mask[1:] for t in mb], 0.0, torch.float32)
            if not self.is_lora and self.ref_model is None:
                return 0.0
            ref = self._reference_logprobs(ids, attn, where=mask > 0)
            new = _pad_batch([t.logprobs[1:] for t in mb], 0.0, torch.float32)
            d = ref - new
            num += float(((torch.exp(d) - d - 1.0) * mask).sum())
            den += float(mask.sum())
        return num / den if den else 0.0

    # ---- SFT ---------------------------------------------------------------------------------------
    def sft_step(self, batch: list[tuple[list[int], list[int]]]) -> dict[str, float]:
        """One optimizer step of masked next-token cross-entropy over ``(ids, loss_mask)`` pairs (mean over
        masked tokens of the whole batch, accumulated over micro-batches)."""
        self.model.train()
        total = float(sum(sum(m[1:]) for _, m in batch)) or 1.0
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        saved_t, self.temperature = self.temperature, 1.0
        try:
            for k in range(0, len(batch), self.micro_batch_size):
                mb = batch[k : k + self.micro_batch_size]
                ids = _pad_batch([x for x, _ in mb], self.pad_id, torch.long)
                attn = _pad_batch([[1] * len(x) for x, _ in mb], 0, torch.long)
                mask = _pad_batch([m[1:] for _, m in mb], 0.0, torch.float32)
                lp, _ = self._token_logprobs(self.model, ids, attn, where=mask > 0, compiled=True)
                loss = -(lp * mask).sum() / total
                loss.backward()
                loss_sum += float(loss.detach()) * total
        finally:
            self.temperature = saved_t
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        self.optimizer.step()
        self.updates += 1
        return {"loss": loss_sum / total, "grad_norm": grad_norm, "tokens": total}

    # ---- checkpoints -------------------------------------------------------------------------------
    def save(self, path: str | Path, tokenizer: Any, extra: dict[str, Any]) -> Path:
        """Write weights (adapter or full, safetensors), tokenizer, optimizer, RNG states and ``extra``
        (step, data cursor…) to ``path`` crash-safely: written to ``path.tmp`` with a completion marker, then swapped
        into place; a kill at any instant leaves a complete checkpoint that :func:`checkpoint_io.recover` restores."""
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, tmp / "rng.pt")
            (tmp / "trainer_state.json").write_text(json.dumps({**extra, "updates": self.updates}, indent=2))

        step = extra.get("step")
        return write_atomically(path, write, step=step if isinstance(step, int) else None)

    def load_state(self, path: str | Path) -> dict[str, Any]:
        """Restore optimizer, RNG and return trainer_state (weights are loaded by the caller's model load)."""
        path = Path(path)
        opt = torch.load(path / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(opt)
        rng = torch.load(path / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        state = json.loads((path / "trainer_state.json").read_text())
        self.updates = int(state.get("updates", 0))
        return state
