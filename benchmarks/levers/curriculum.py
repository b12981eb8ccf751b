"""Curriculum (headroom sampling, retirement, eval weaknesses by the rows' ``task`` field) vs plain GRPO.

    python -m benchmarks.levers.curriculum --model runs/quickstart/sft [--env support_desk] [--seeds 0 1 2]
"""

import sys

from benchmarks.levers.common import main

if __name__ == "__main__":
    main("curriculum", {"curriculum": {"enabled": True, "weakness_key": "task"}}, sys.argv[1:])
