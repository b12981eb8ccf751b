"""Supervised warm-start on demonstration trajectories (the cold-start step before RL).

Demonstrations are whole conversations in OpenAI chat form (assistant messages with ``tool_calls``, ``tool``
messages, a final answer). Each is rendered by :meth:`ChatRenderer.render_demo` — the same code path a rollout
uses to build its ids — so SFT trains on exactly the tokens RL will see for the same conversation, with loss on
assistant turns only.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentrft.config import LoraConfig
from agentrft.data import load_dataset
from agentrft.policy.learner import Learner
from agentrft.rollout.render import ChatRenderer
from agentrft.rollout.stack import load_policy


class SFTHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan are errors naming the field
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(16, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    lora: LoraConfig | None = None
    seed: int = 0
    max_tokens: int = Field(2048, ge=16)
    until_loss: float | None = Field(None, gt=0, description="stop once the 10-step mean loss is at or below it")


class SFTConfig(BaseModel):
    """``agentrft sft --config sft.yaml``: ``model``, ``demos_file``, ``output_dir`` (paths relative to the file)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan are errors naming the field
    model: str
    demos_file: str
    output_dir: str
    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters)


def load_sft_config(path: str | Path) -> tuple[SFTConfig, Path]:
    from agentrft.config import ConfigError, _format_errors, read_yaml

    path = Path(path)
    data = read_yaml(path)
    try:
        return SFTConfig.model_validate(data), path.parent.resolve()
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None


@dataclass
class SFTResult:
    out_dir: Path
    steps: int
    examples: int
    tokens: int
    first_loss: float
    last_loss: float
    wall_s: float


def render_demos(renderer: ChatRenderer, rows: list[Any], max_tokens: int | None = None) -> list[tuple[list[int], list[int]]]:
    out = []
    for r in rows:
        ids, mask = renderer.render_demo(r.messages, r.tools)
        if max_tokens and len(ids) > max_tokens:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        out.append((ids, mask))
    return out


def run_sft(
    model: str,
    demos_path: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 3,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    lora: Any | None = None,
    micro_batch_size: int = 16,
    seed: int = 0,
    max_tokens: int | None = 2048,
    until_loss: float | None = None,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
) -> SFTResult:
    """Fine-tune ``model`` on the demos for ``epochs`` passes; write a plain model directory to ``out_dir``.

    ``until_loss``: stop early once the mean loss of the last 10 steps is at or below it (the skill being
    taught has been learned; the rest of the epochs would only memorise)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rows = load_dataset(demos_path, allow_demos=True)
    policy = load_policy(model)
    tok = policy.tokenizer
    examples = render_demos(policy.renderer, list(rows), max_tokens)
    learner = Learner(policy.model, lora=lora, learning_rate=learning_rate, micro_batch_size=micro_batch_size,
                      pad_id=policy.pad_id)
    rng = random.Random(seed)
    steps_per_epoch = max(1, -(-len(examples) // batch_size))
    total = epochs * steps_per_epoch
    losses: list[float] = []
    step = 0
    done = False
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for k in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[k : k + batch_size]]
            st = learner.sft_step(batch)
            losses.append(st["loss"])
            step += 1
            done = until_loss is not None and len(losses) >= 10 and sum(losses[-10:]) / 10 <= until_loss
            if on_step:
                on_step(step, step if done else total, st)
            if done:
                break
        if done:
            break
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = learner.model
    if learner.is_lora:
        final = final.merge_and_unload()
    final.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return SFTResult(out, step, len(examples), sum(sum(mk) for _, mk in examples), losses[0], losses[-1],
                     time.perf_counter() - t0)
