"""GiGPO step-level credit (advantage: gigpo, ω = 1, γ = 0.95, anchor state = the previous step) vs plain GRPO.

    python -m benchmarks.levers.gigpo --model runs/quickstart/sft [--env support_desk] [--seeds 0 1 2]
"""

import sys

from benchmarks.levers.common import main

if __name__ == "__main__":
    main("gigpo", {"hyperparameters": {"advantage": "gigpo"}}, sys.argv[1:])
