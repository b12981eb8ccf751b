"""The benchmark's workload: one small multi-turn tool task, shared verbatim by every framework measured.

"What color is K3?" → ``lookup(key="K3")`` → "K3 is red" → "ANSWER: red". Two-key questions need two calls.
The colour table is global (a pure function of the key), so the same Python callable serves agentrft's tool
router, the HF-generate agent loop and TRL's ``tools=`` argument unchanged. Reward: 1 if the final assistant
text equals ``ANSWER: <colours>`` exactly, else 0 (agentrft: a ``string_check`` grader; TRL: the same rule as a
reward function).

Models are built locally (a BPE tokenizer trained on the task text, Llama configs of ~1M, ~10M and ~30M
parameters) and warm-started with SFT on imperfect demonstrations so that they call the tool (multi-turn) and
answer right about half the time: RL has something to improve and rollouts really are multi-turn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

KEYS = [f"K{i}" for i in range(10)]
COLORS = ["red", "blue", "green", "black", "white", "pink", "gray", "brown"]
TABLE = {k: COLORS[(7 * i + 3) % len(COLORS)] for i, k in enumerate(KEYS)}
SYSTEM = "Find the color of each key with lookup, then reply ANSWER: color."


def lookup(key: str) -> str:
    """Look up the color of a key.

    Args:
        key: The key, like K3.
    """
    return f"{key} is {TABLE[key]}" if key in TABLE else f"no key {key}"


LOOKUP_SCHEMA = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look up the color of a key.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string", "description": "The key, like K3."}},
                       "required": ["key"]},
    },
}
TOOLS = [LOOKUP_SCHEMA]

GRADER = {"type": "string_check", "name": "answer", "input": "{{ sample.output_text }}",
          "reference": "{{ item.answer }}", "operation": "eq"}


def make_row(rng: random.Random, two_keys: bool) -> dict:
    keys = rng.sample(KEYS, 2 if two_keys else 1)
    q = f"What color is {keys[0]}?" if not two_keys else f"What colors are {keys[0]} and {keys[1]}?"
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "tools": TOOLS, "keys": keys, "answer": "ANSWER: " + ", ".join(TABLE[k] for k in keys)}


def _call(i: int, key: str) -> dict:
    return {"id": f"c{i}", "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"key": key})}}


def make_demo(row: dict, rng: random.Random, wrong_rate: float) -> dict:
    """One call per key (parallel in one turn), the tool results, then the answer — wrong with ``wrong_rate``."""
    msgs = list(row["messages"])
    calls = [_call(i, k) for i, k in enumerate(row["keys"])]
    msgs.append({"role": "assistant", "content": "", "tool_calls": calls})
    for c, k in zip(calls, row["keys"]):
        msgs.append({"role": "tool", "tool_call_id": c["id"], "content": lookup(k)})
    colors = [TABLE[k] for k in row["keys"]]
    if rng.random() < wrong_rate:
        colors = [rng.choice(COLORS) for _ in colors]
    msgs.append({"role": "assistant", "content": "ANSWER: " + ", ".join(colors)})
    return {**row, "messages": msgs}


def write_task(out: Path, *, seed: int = 0, n_train: int = 64, n_valid: int = 16, n_demos: int = 96,
               wrong_rate: float = 0.5, two_key_rate: float = 0.3) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {k: out / f"{k}.jsonl" for k in ("train", "valid", "demos")}
    for k, n in (("train", n_train), ("valid", n_valid)):
        paths[k].write_text("".join(json.dumps(make_row(rng, rng.random() < two_key_rate)) + "\n" for _ in range(n)))
    demos = [make_demo(make_row(rng, rng.random() < two_key_rate), rng, wrong_rate) for _ in range(n_demos)]
    paths["demos"].write_text("".join(json.dumps(d) + "\n" for d in demos))
    return paths


def corpus(paths: dict[str, Path]) -> list[str]:
    texts = [SYSTEM, "lookup(key): Look up the color of a key.", "Tools:", "Call a tool with", *COLORS, *KEYS]
    for p in paths.values():
        for line in p.read_text().splitlines():
            for m in json.loads(line)["messages"]:
                texts.append(m.get("content") or "")
                for c in m.get("tool_calls") or []:
                    texts.append(json.dumps({"name": "lookup", "arguments": json.loads(c["function"]["arguments"])}))
    return texts


# name → (hidden, layers, heads, kv_heads, intermediate); vocab 1024 tied. Parameter counts are printed by the harness.
MODEL_SIZES = {
    "1M": (128, 4, 4, 2, 384),
    "10M": (320, 8, 5, 5, 960),
    "30M": (512, 9, 8, 8, 1536),
}


def build_model(paths: dict[str, Path], out_dir: Path, size: str, seed: int = 0) -> Path:
    from agentrft.models.tiny import TinyModelSpec, build_tiny_model

    h, n_layers, heads, kv, inter = MODEL_SIZES[size]
    spec = TinyModelSpec(vocab_size=1024, hidden_size=h, num_layers=n_layers, num_heads=heads, num_kv_heads=kv,
                         intermediate_size=inter, seed=seed)
    return build_tiny_model(corpus(paths), out_dir, spec)


def reward(final_text: str, answer: str) -> float:
    return 1.0 if final_text.strip() == answer else 0.0
