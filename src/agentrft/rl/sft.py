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
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from agentrft.config import LoraConfig
from agentrft.data import DatasetError, load_dataset
from agentrft.policy.learner import Learner
from agentrft.rollout.render import ChatRenderer
from agentrft.rollout.stack import load_policy


class SFTHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan are errors naming the field
    # the same name as the run config's (hyperparameters.n_epochs); `epochs` is still read, for older SFT configs
    n_epochs: int = Field(3, ge=1, le=1000, validation_alias=AliasChoices("n_epochs", "epochs"),
                          description="passes over the demonstrations")
    batch_size: int = Field(16, ge=1, description="demonstrations per optimizer step")
    micro_batch_size: int = Field(16, ge=1, description="demonstrations per forward/backward pass")
    learning_rate: float = Field(3e-3, gt=0, description="AdamW learning rate")
    lora: LoraConfig | None = Field(None, description="LoRA settings, merged into the saved model; null = full")
    seed: int = Field(0, description="seeds the demo order and init")
    max_tokens: int = Field(2048, ge=16, description="demonstrations are cut to this many tokens")
    until_loss: float | None = Field(None, gt=0, description="stop once the 10-step mean loss is at or below it")


class SFTConfig(BaseModel):
    """``agentrft sft --config sft.yaml``: ``model``, ``demos_file``, ``output_dir`` (paths relative to the file)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf/.nan are errors naming the field
    model: str = Field(description="HF id or model directory to warm-start")
    demos_file: str = Field(description="demonstration conversations (OpenAI chat JSONL with tool calls)")
    output_dir: str = Field(description="where the warm-started model is written")
    check_file: str | None = Field(None, description="held-out rows (e.g. the validation file) to sample a first "
                                   "turn on at the end: warns when the model never stops, never calls a tool or "
                                   "writes calls that do not parse; default: 8 of the demos' own prompts")
    hyperparameters: SFTHyperparameters = Field(default_factory=SFTHyperparameters)


def load_sft_config(path: str | Path) -> tuple[SFTConfig, Path]:
    from agentrft.config import ConfigError, _format_errors, read_yaml

    path = Path(path)
    data = read_yaml(path)
    try:
        return SFTConfig.model_validate(data), path.parent.resolve()
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path), SFTConfig)) from None


@dataclass
class SFTResult:
    out_dir: Path
    steps: int
    examples: int
    tokens: int
    first_loss: float
    last_loss: float
    wall_s: float
    check: dict[str, Any] | None = None  # sample_check's report on the warm-started model


def sample_check(model: Any, renderer: ChatRenderer, rows: list[Any], *, n: int = 8, max_new_tokens: int = 128,
                 seed: int = 0) -> dict[str, Any]:
    """Does the warm-started model behave like an agent? One sampled first turn (T = 0.7) for up to ``n`` prompts —
    each row's conversation up to its first assistant turn — and the share that end with the end-of-turn token,
    call a tool, answer, and whose tool-call text fails to parse. A loss that looks fine can hide a model that
    never stops or never forms a call; RL on such a model learns nothing (every reward 0), so this says so now,
    not after a long baseline eval. ``warnings`` lists what looks wrong."""
    from agentrft.policy.sampling import SamplingParams
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.parse import parse_turn

    prompts, expect_call = [], 0
    for r in rows[:n]:
        msgs = r.messages
        first = next((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
        prompts.append(renderer.prompt_ids(msgs[:first], r.tools))
        expect_call += bool(first < len(msgs) and msgs[first].get("tool_calls"))
    if not prompts:
        return {"prompts": 0, "warnings": ["no prompts to sample"]}
    sampler = TransformersSampler(model, stop_ids=renderer.stop_ids, pad_id=renderer.eos_id)
    gens = sampler.generate(prompts, SamplingParams(temperature=0.7, max_new_tokens=max_new_tokens),
                            [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))])
    stopped = calls = answers = parse_errors = 0
    for g in gens:
        ended = g.finish_reason == "stop"
        parsed = parse_turn(renderer.decode(g.ids[:-1] if ended else g.ids))
        stopped += ended
        calls += bool(parsed.calls)
        answers += bool(parsed.is_final and (parsed.content or "").strip())
        parse_errors += bool(parsed.errors)
    k = len(gens)
    report: dict[str, Any] = {"prompts": k, "stopped": stopped / k, "called_a_tool": calls / k,
                              "answered": answers / k, "parse_errors": parse_errors / k, "warnings": []}
    if stopped / k < 0.5:
        report["warnings"].append(f"{k - stopped} of {k} sampled turns never ended (no end-of-turn token within "
                                  f"{max_new_tokens} tokens)")
    if parse_errors / k >= 0.5:
        report["warnings"].append(f"{parse_errors} of {k} sampled turns have tool-call text that does not parse")
    if expect_call and not calls:
        report["warnings"].append(f"no sampled turn called a tool, while {expect_call} of these demonstrations do")
    if not calls and not answers:
        report["warnings"].append("no sampled turn called a tool or gave an answer")
    return report


def render_demos(renderer: ChatRenderer, rows: list[Any], max_tokens: int | None = None, *,
                 source: str = "demos") -> list[tuple[list[int], list[int]]]:
    """Each demonstration as (ids, loss mask); a row that cannot be rendered is a DatasetError naming every such
    ``source:line`` (a row with no assistant turn was a ValueError traceback)."""
    out, problems = [], []
    for r in rows:
        try:
            ids, mask = renderer.render_demo(r.messages, r.tools)
        except ValueError as e:  # TemplateError is one too
            problems.append(f"{source}:{getattr(r, 'line', '?')}: {str(e).splitlines()[0] if str(e) else e!r}")
            continue
        if max_tokens and len(ids) > max_tokens:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        out.append((ids, mask))
    if problems:
        raise DatasetError(problems)
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
    check_rows: list[Any] | None = None,
) -> SFTResult:
    """Fine-tune ``model`` on the demos for ``epochs`` passes; write a plain model directory to ``out_dir``.

    ``until_loss``: stop early once the mean loss of the last 10 steps is at or below it (the skill being
    taught has been learned; the rest of the epochs would only memorise). ``check_rows``: held-out rows for
    :func:`sample_check` at the end (None: no check)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    rows = load_dataset(demos_path, allow_demos=True)
    # before the model loads: a demonstration with nothing to imitate is the user's file, named by line
    empty = [f"{demos_path}:{r.line}: a demonstration needs at least one assistant message (nothing to learn)"
             for r in rows if not any(m.get("role") == "assistant" for m in r.messages)]
    if empty:
        raise DatasetError(empty)
    policy = load_policy(model)
    tok = policy.tokenizer
    examples = render_demos(policy.renderer, list(rows), max_tokens, source=str(demos_path))
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
    check = sample_check(final, policy.renderer, list(check_rows), seed=seed) if check_rows else None
    return SFTResult(out, step, len(examples), sum(sum(mk) for _, mk in examples), losses[0], losses[-1],
                     time.perf_counter() - t0, check)
