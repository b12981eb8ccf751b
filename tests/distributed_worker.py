"""One learner step pair on a fixed synthetic batch, in one process or as one rank of a torchrun gloo group;
rank 0 saves the loss, gradients and updated weights for tests/test_distributed.py to compare.

    python tests/distributed_worker.py MODEL_DIR OUT.pt                     # one process
    torchrun --nproc_per_node 2 tests/distributed_worker.py MODEL_DIR OUT.pt  # two ranks (DDP over gloo)
"""

from __future__ import annotations

import os
import random
import sys

import torch


def batch(vocab: int, n: int = 7, seed: int = 1):
    """``n`` trajectories of different lengths (prompt tokens masked out), with sampler log-probs near the model's
    and per-token advantages; uneven shards on 2 ranks (4 and 3) with different token counts."""
    from agentrft.types import Trajectory

    rng = random.Random(seed)
    trajs, advs = [], []
    for i in range(n):
        p, s = rng.randint(4, 12), rng.randint(3, 20)
        t = Trajectory(trace_id=f"t{i}", row_index=i, split="train", group_id="g", sample_index=i, messages=[])
        t.token_ids = [rng.randrange(vocab) for _ in range(p + s)]
        t.loss_mask = [0] * p + [1] * s
        t.logprobs = [0.0] * p + [-rng.uniform(4.0, 8.0) for _ in range(s)]
        trajs.append(t)
        a = rng.uniform(-1, 1)
        advs.append([0.0] * p + [a] * s)
    return trajs, advs


def main(model_dir: str, out: str) -> None:
    from agentrft.config import LoraConfig
    from agentrft.policy.learner import Learner, load_model_and_tokenizer
    from agentrft.rl.loss import ClippedPolicyLoss

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer(model_dir)
    learner = Learner(model, lora=LoraConfig(r=4, alpha=8), learning_rate=1e-2, grad_clip=1e9, micro_batch_size=2,
                      pad_id=0)
    trajs, advs = batch(len(tok))
    loss_fn = ClippedPolicyLoss(0.2, 0.28, "token")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    step = learner.rl_step
    if world > 1:
        from agentrft.rl.distributed import DataParallelLearner, init_from_env

        init_from_env()
        step = DataParallelLearner(learner).rl_step
    stats = [step(trajs, advs, loss_fn) for _ in range(2)]  # the second step has gradients on A and B
    named = [(n, p) for n, p in learner.model.named_parameters() if p.requires_grad]
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save({"loss": [s["loss"] for s in stats], "grad_norm": [s["grad_norm"] for s in stats],
                    "grads": {n.removeprefix("module."): p.grad.detach().clone() for n, p in named},
                    "params": {n.removeprefix("module."): p.detach().clone() for n, p in named}}, out)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
