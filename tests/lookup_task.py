"""A small multi-turn tool task for the spine's tests: look up the colour of one or two keys, answer.

"What color is K3?" → lookup(key="K3") → "K3 is red" → "ANSWER: red". Two-key questions are answered best with
two parallel calls in one turn. Demonstrations are deliberately imperfect: some call redundantly, some answer
with a wrong colour — so a warmed-up model has a middling baseline and RL has room.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from agentrft.tools.registry import ToolContext, tool

COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "brown"]
SYSTEM = "Find the color of each key with lookup, then reply ANSWER: color."


def _table(item: dict) -> dict[str, str]:
    return item["table"]


@tool
def lookup(key: str, ctx: ToolContext) -> str:
    """Look up the color of a key.

    Args:
        key: The key, like K3.
    """
    table = _table(ctx.item)
    if key not in table:
        return f"no key {key}"
    return f"{key} is {table[key]}"


TOOLS = [lookup.__agentrft_tool__.schema]  # type: ignore[attr-defined]

GRADER = {
    "type": "string_check",
    "name": "answer",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.answer }}",
    "operation": "eq",
}


# Shaped reward for the learning test: answering in the format with the fewest calls is learnable by RL from a
# warmed-up tiny model; correctness (copying the colour, which a tiny model learns only after far more steps than a
# test can afford) is the rest of the reward.
GRADER_SHAPED = {
    "type": "multi",
    "name": "lookup_shaped",
    "graders": {
        "correct": GRADER,
        "format": {"type": "string_check", "name": "format", "input": "{{ sample.output_text }}",
                   "reference": "ANSWER: ", "operation": "like"},
        "efficiency": {"type": "tool_efficiency", "name": "efficiency", "target_calls": "{{ item.min_tool_calls }}",
                       "budget": 4},
    },
    "calculate_output": "0.8 * format * efficiency + 0.2 * correct",
}


def make_row(rng: random.Random, two_keys: bool) -> dict:
    keys = rng.sample([f"K{i}" for i in range(10)], 2 if two_keys else 1)
    table = {k: rng.choice(COLORS) for k in keys}
    q = f"What color is {keys[0]}?" if not two_keys else f"What colors are {keys[0]} and {keys[1]}?"
    answer = "ANSWER: " + ", ".join(table[k] for k in keys)
    return {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
        "tools": TOOLS,
        "table": table,
        "keys": keys,
        "answer": answer,
        "min_tool_calls": len(keys),
    }


def _call(i: int, key: str) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"key": key})}}


def make_demo(row: dict, rng: random.Random, wrong_rate: float, redundant_rate: float,
              redundant_extra: int = 1) -> dict:
    keys, table = row["keys"], row["table"]
    msgs = list(row["messages"])
    calls = [_call(i, k) for i, k in enumerate(keys)]
    if rng.random() < redundant_rate:  # one call per turn, repeating the first `redundant_extra` times
        seq = [calls[0]] + [_call(9 - j, keys[0]) for j in range(redundant_extra)] + calls[1:]
        for c in seq:
            k = json.loads(c["function"]["arguments"])["key"]
            msgs += [{"role": "assistant", "content": "", "tool_calls": [c]},
                     {"role": "tool", "tool_call_id": c["id"], "content": f"{k} is {table[k]}"}]
    else:
        msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
        for c in calls:
            k = json.loads(c["function"]["arguments"])["key"]
            msgs.append({"role": "tool", "tool_call_id": c["id"], "content": f"{k} is {table[k]}"})
    colors = [table[k] for k in keys]
    if rng.random() < wrong_rate:
        colors = [rng.choice(COLORS) for _ in keys]
    msgs.append({"role": "assistant", "content": "ANSWER: " + ", ".join(colors)})
    return {**row, "messages": msgs}


def write_task(out: Path, *, seed: int = 0, n_train: int = 64, n_valid: int = 24, n_demos: int = 96,
               wrong_rate: float = 0.5, redundant_rate: float = 0.3, two_key_rate: float = 0.3,
               redundant_extra: int = 1) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {"train": out / "train.jsonl", "valid": out / "valid.jsonl", "demos": out / "demos.jsonl"}
    rows = {k: [make_row(rng, rng.random() < two_key_rate) for _ in range(n)]
            for k, n in (("train", n_train), ("valid", n_valid))}
    demos = [make_demo(make_row(rng, rng.random() < two_key_rate), rng, wrong_rate, redundant_rate, redundant_extra)
             for _ in range(n_demos)]
    for k in ("train", "valid"):
        paths[k].write_text("".join(json.dumps(r) + "\n" for r in rows[k]))
    paths["demos"].write_text("".join(json.dumps(r) + "\n" for r in demos))
    return paths


def corpus(paths: dict[str, Path]) -> list[str]:
    texts = []
    for p in paths.values():
        for line in p.read_text().splitlines():
            row = json.loads(line)
            for m in row["messages"]:
                texts.append(m.get("content") or "")
                for c in m.get("tool_calls") or []:
                    texts.append(json.dumps({"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}))
    texts += [SYSTEM, "lookup(key): Look up the color of a key.", "Tools:", "Call a tool with"]
    return texts
