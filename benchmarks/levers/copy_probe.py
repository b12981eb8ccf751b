"""Can a repo_locator model copy grep's output into its answer? Copying isolated from tool choice.

For each row, the model is given the optimal demonstration without its answer (the generator's own plan, run against
the real tools by ``run_demo``: the system prompt, the question, the ``grep`` call and what it returned), and its
answer is decoded greedily. Counted per (task, number of expected
files): answers equal to the expected list, answers with fewer or more paths, answers that repeat a path. This is
how docs/levers.md ("The quickstart's pass rate") found that a 4-head quickstart model got the length of a 4-file
list right but not its items.

    python -m benchmarks.levers.copy_probe runs/quickstart/base --data runs/quickstart/data/train.jsonl --rows 300
"""

from __future__ import annotations

import argparse
import collections
import json
import sys


def probe(model_dir: str, data: str, rows: int = 300, show: int = 0) -> dict[str, dict[str, int]]:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentrft.environments.common import run_demo
    from agentrft.environments.repo_locator.generator import TOOLS_REF, demo_plan
    from agentrft.tools.registry import resolve_python_tool

    tools = {t.name: t for t in resolve_python_tool(TOOLS_REF)}
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    stats: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    shown = 0
    with open(data, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= rows:
                break
            row = json.loads(line)
            # the optimal plan (neither redundant nor wrong: no random draw) and its transcript, minus the answer
            plan, optimal = demo_plan(random.Random(0), row, redundant=False, wrong=False)
            msgs = run_demo(row, plan, optimal, tools, trace_id=f"probe-{i}", data_dir=None)[:-1]
            out = msgs[-1]["content"]
            ids = tok.apply_chat_template(msgs, tools=row["tools"], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True)["input_ids"]
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=end,
                                     pad_token_id=tok.pad_token_id)
            answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()
            got = [p.strip() for p in answer.removeprefix("FILES:").split(",") if p.strip()]
            expected = row["expected_files"]
            s = stats[f"{row['task']} {len(expected)}"]
            s["rows"] += 1
            s["exact"] += got == expected
            s["short"] += len(got) < len(expected)
            s["long"] += len(got) > len(expected)
            s["repeated"] += len(set(got)) < len(got)
            if got != expected and shown < show:
                shown += 1
                print(f"grep gave: {out}\n  answer:  {answer}", file=sys.stderr)
    return {k: dict(v) for k, v in sorted(stats.items())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model directory (a quickstart's base/, sft/ or a checkpoint)")
    ap.add_argument("--data", required=True, help="repo_locator rows (train.jsonl or valid.jsonl)")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--show", type=int, default=0, help="print this many wrong answers")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = probe(args.model, args.data, args.rows, args.show)
    print(json.dumps({"model": args.model, "data": args.data, "rows": args.rows, "by_task_and_files": result},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
