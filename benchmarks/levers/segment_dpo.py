"""Segment DPO mixed with GRPO (loss: mixed, β = 0.1, λ = 1) vs plain GRPO; ``--alone`` benchmarks
``loss: segment_dpo`` on its own instead.

    python -m benchmarks.levers.segment_dpo --model runs/quickstart/sft [--env support_desk] [--alone]
"""

import sys

from benchmarks.levers.common import main

if __name__ == "__main__":
    args = sys.argv[1:]
    alone = "--alone" in args
    args = [a for a in args if a != "--alone"]
    main("segment_dpo" if alone else "segment_dpo_mixed",
         {"hyperparameters": {"loss": "segment_dpo" if alone else "mixed"}}, args)
