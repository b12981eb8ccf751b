"""The learner's output layer at loss positions only vs at every position (one run, same model, same batch).

Agent trajectories are mostly prompt and tool tokens; the loss covers the sampled ones (10–30%). Running the
vocabulary projection and its softmax only there saves most of their cost, which dominates for large
vocabularies (Gemma 3 270M: 262k rows, ~63% of a forward pass here).

    python benchmarks/bench_learner_head.py [--vocab 65536] [--hidden 384] [--layers 2] [--mask 0.2]

Prints one JSON object: seconds per forward+backward for both paths, their ratio, and the peak RSS growth of
the selective path and what the full path needs beyond it.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=65536)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=384)
    ap.add_argument("--mask", type=float, default=0.2, help="share of positions in the loss")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentrft.policy.learner import Learner

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                      num_attention_heads=a.hidden // 64, num_key_value_heads=a.hidden // 64,
                      intermediate_size=3 * a.hidden, tie_word_embeddings=True)
    learner = Learner(LlamaForCausalLM(cfg), lora=None, learning_rate=1e-4)
    ids = torch.randint(0, a.vocab, (a.batch, a.length))
    attn = torch.ones_like(ids)
    where = torch.zeros(a.batch, a.length - 1, dtype=torch.bool)
    n = int(a.mask * (a.length - 1))
    where[:, -n:] = True  # the completion tokens sit at the end of each row

    def once(selective: bool) -> float:
        learner.model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        lp, _ = learner._token_logprobs(learner.model, ids, attn, entropy=True,
                                        where=where if selective else None)
        (lp * where).sum().backward()
        return time.perf_counter() - t

    out: dict[str, float | int] = {"vocab": a.vocab, "hidden": a.hidden, "layers": a.layers,
                                   "tokens": a.batch * a.length, "loss_share": a.mask}
    # selective first: ru_maxrss only grows, so the full path's figure is what it needs beyond the selective one
    for name, sel in (("selective", True), ("full", False)):
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        once(sel)  # warm-up (its peak counts)
        times = [once(sel) for _ in range(a.repeats)]
        out[f"{name}_s"] = round(min(times), 4)
        out[f"{name}_peak_rss_growth_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1)
    out["speedup"] = round(out["full_s"] / out["selective_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
