"""DAPO-style dynamic sampling (zero-variance groups replaced, up to one batch of extra groups per step) vs plain
GRPO, compared at an equal number of trajectories.

    python -m benchmarks.levers.dynamic_sampling --model runs/quickstart/sft [--env support_desk] [--seeds 0 1 2]
"""

import sys

from benchmarks.levers.common import main

if __name__ == "__main__":
    main("dynamic_sampling", {"dynamic_sampling": {"enabled": True, "max_extra_groups": 4, "max_rounds": 1}},
         sys.argv[1:])
