"""The rollout stack, built from a run config in one place: tool router, reward and holdout graders, the policy
(model, tokenizer, chat renderer), the sampler and the agent loop. Training, ``eval``, ``compare``, ``check``,
``promote`` and distillation build theirs here, so a new backend (a remote sampler, another tool kind) plugs in
once; SFT and the model server, which need no tools or graders, load their model through :func:`load_policy`.

It is built in two halves because training validates its inputs before it loads a model, and wraps the model
(LoRA) before it samples from it::

    stack = RolloutStack(cfg)                      # router + graders: config errors surface before any model load
    policy = load_policy(cfg.model_path)           # model + tokenizer + renderer
    stack.attach(policy, model=learner.model)      # sampler + agent loop over the (wrapped) model
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrft.config import ConfigError, RunConfig
from agentrft.graders.base import Grader, build_grader
from agentrft.policy.learner import load_model_and_tokenizer
from agentrft.policy.sampler import Sampler, SamplingParams
from agentrft.policy.transformers_sampler import TransformersSampler
from agentrft.rollout.agent import AgentLoop, RolloutLimits
from agentrft.rollout.render import ChatRenderer
from agentrft.tools.router import ToolRouter, build_router


class ModelLoadError(ValueError):
    """A model reference that cannot be loaded; the message names it and says why."""


@dataclass
class Policy:
    """A loaded model with what renders its conversations: ``ref`` is what it was loaded from."""

    ref: str
    model: Any
    tokenizer: Any
    renderer: ChatRenderer

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.renderer.eos_id


def load_policy(ref: str | Path) -> Policy:
    """Load a HF model id, a model directory or an agentrft checkpoint (a LoRA adapter over its base) with its
    tokenizer and chat renderer."""
    ref = str(ref)
    p = Path(ref)
    # a path, not a HF id: it starts like one, exists, or sits in a directory that exists here ("models/tiny")
    looks_local = ref.startswith((".", "/", "~")) or p.exists() or (len(p.parts) > 1 and p.parent.is_dir())
    if looks_local and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
        why = "no such directory" if not p.exists() else "not a model directory (no config.json)"
        raise ModelLoadError(f"model {ref!r}: {why}")
    try:
        model, tok = load_model_and_tokenizer(ref)
    except Exception as e:  # noqa: BLE001 — corrupt weights raise the loader's own types (SafetensorError,
        # RuntimeError on shape mismatch, KeyError, ...): each is a model that cannot load, named, not a traceback
        first = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise ModelLoadError(f"model {ref!r}: cannot load: {first}") from None
    return Policy(ref, model, tok, ChatRenderer(tok))


def build_graders(cfg: RunConfig) -> tuple[Grader, dict[str, Grader]]:
    """The reward grader and the holdout graders (recorded beside the reward, never part of it)."""
    grader = build_grader(cfg.grader)
    holdouts = {name: build_grader({"name": name, **spec}) for name, spec in cfg.holdout_graders.items()}
    return grader, holdouts


class RolloutStack:
    def __init__(self, cfg: RunConfig, *, router: ToolRouter | None = None):
        hp = cfg.hyperparameters
        self.cfg = cfg
        if router is None:
            try:
                router = build_router(cfg.tools, timeout_s=hp.tool_timeout_s, max_workers=hp.tool_workers,
                                      approval=cfg.approval.policy)
            except (ValueError, ImportError) as e:
                raise ConfigError(e if str(e).startswith("tools") else f"tools: {e}") from None
        self.router = router
        try:
            self.grader, self.holdouts = build_graders(cfg)
        except Exception:
            self.router.close()
            raise
        self.limits = RolloutLimits(hp.max_turns, hp.max_episode_steps, hp.max_context_tokens)
        self.train_params = SamplingParams(hp.temperature, hp.top_p, hp.max_new_tokens)
        self.eval_params = SamplingParams(hp.eval_temperature or hp.temperature, hp.top_p, hp.max_new_tokens)
        self.policy: Policy | None = None
        self.sampler: Sampler | None = None
        self.loop: AgentLoop | None = None

    def attach(self, policy: Policy, *, model: Any = None, sampler: Sampler | None = None,
               version: str | None = None) -> RolloutStack:
        """Sample from ``policy`` — through ``model`` when the caller wrapped it (the learner's LoRA model), through
        ``sampler`` when one is given (e.g. a remote server), else the in-process transformers sampler."""
        self.policy = policy
        if sampler is None:
            sampler = TransformersSampler(model if model is not None else policy.model,
                                          stop_ids=policy.renderer.stop_ids, pad_id=policy.pad_id)
        if version is not None:
            sampler.version = version  # type: ignore[attr-defined]
        self.sampler = sampler
        self.loop = AgentLoop(sampler, policy.renderer, self.router, limits=self.limits,
                              max_batch=self.cfg.hyperparameters.max_batch_trajectories)
        return self

    @classmethod
    def for_model(cls, cfg: RunConfig, model_ref: str) -> RolloutStack:
        """A stack sampling from ``model_ref`` (resolved against the config's directory when it is a path there),
        versioned by that reference — what evaluating a baseline or a checkpoint needs."""
        path = cfg.path(model_ref)
        ref = str(path) if path is not None and path.exists() else model_ref
        stack = cls(cfg)
        try:
            return stack.attach(load_policy(ref), version=ref)
        except Exception:
            stack.close()
            raise

    def close(self) -> None:
        self.router.close()
