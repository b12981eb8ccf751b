"""An environment of your own: "how many letters does WORD have?", answered with a ``count_letters`` tool.

An environment is a module with ``generate(out_dir, seed, n_train, n_valid, **kw)`` (writes OpenAI-format
train/valid/demos JSONL and returns their paths) and ``corpus(out_dir)`` (the texts a tiny model's tokenizer learns
from), plus a function returning its :class:`~agentrft.environments.Environment`. Name that function as
``environment: letters_env:load_environment`` in a run config (it supplies the tools and grader), ``agentrft tools
serve letters_env:load_environment`` (or ``tools list``), ``agentrft model tiny --env …``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

from agentrft.environments import Environment
from agentrft.tools.registry import ToolContext, tool

SYSTEM = "Count the letters of the word with count_letters, then reply ANSWER: <number>."
WORDS = ["apple", "river", "stone", "cloud", "garden", "lamp", "orbit", "pepper", "violet", "window", "yak", "zebra"]


@tool
def count_letters(word: str, ctx: ToolContext) -> str:
    """Count the letters of a word.

    Args:
        word: The word.
    """
    return f"{word} has {len(word)} letters"


GRADER = {"type": "multi", "name": "letters",
          "graders": {"correct": {"type": "string_check", "name": "correct", "input": "{{ sample.output_text }}",
                                  "reference": "{{ item.answer }}", "operation": "eq"},
                      "format": {"type": "string_check", "name": "format", "input": "{{ sample.output_text }}",
                                 "reference": "ANSWER: ", "operation": "like"}},
          "calculate_output": "0.5 * format + 0.5 * correct"}


def _row(word: str) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"How many letters: {word}?"}],
            "answer": f"ANSWER: {len(word)}", "word": word}


def _demo(row: dict[str, Any]) -> dict[str, Any]:
    w = row["word"]
    call = {"id": "c0", "type": "function", "function": {"name": "count_letters", "arguments": json.dumps({"word": w})}}
    return {**row, "messages": row["messages"] + [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c0", "content": f"{w} has {len(w)} letters"},
        {"role": "assistant", "content": row["answer"]}]}


def generate(out_dir: str | Path, seed: int = 0, n_train: int = 16, n_valid: int = 4, **kw: Any) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = {k: [_row(rng.choice(WORDS)) for _ in range(n)] for k, n in (("train", n_train), ("valid", n_valid))}
    rows["demos"] = [_demo(_row(rng.choice(WORDS))) for _ in range(kw.get("n_demos", n_train))]
    paths = {k: out / f"{k}.jsonl" for k in rows}
    for k, p in paths.items():
        p.write_text("".join(json.dumps(r) + "\n" for r in rows[k]))
    (out / "grader.json").write_text(json.dumps(GRADER))
    return {**paths, "grader": out / "grader.json"}


def corpus(out_dir: str | Path) -> Iterator[str]:
    from agentrft.models.tiny import dataset_corpus

    yield SYSTEM
    yield from dataset_corpus([Path(out_dir) / f"{k}.jsonl" for k in ("train", "valid", "demos")],
                              extra_tools=[count_letters.__agentrft_tool__.schema])  # type: ignore[attr-defined]


def load_environment() -> Environment:
    return Environment(name="letters", description="Count a word's letters with a tool.",
                       tool_refs=[f"{__name__}:count_letters"], grader=GRADER, holdout_graders={},
                       system_prompt=SYSTEM, module=__name__)
