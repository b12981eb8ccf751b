"""A data-parallel learner step: torch.distributed over ``world`` processes (gloo on CPU, NCCL on GPU), launched by
``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT``).

Every rank holds the whole batch description and trains on its shard (trajectories ``rank, rank + W, …``). The
model is wrapped in ``DistributedDataParallel`` (``strategy: ddp``; on GPU ``fsdp2``: ``torch.distributed.fsdp.
fully_shard``), whose backward all-reduces gradients as their **mean** over ranks. The learner's token loss is
normalised by the step's sampled tokens; for the ranks' gradients to average to the one-process gradient, every rank
normalises by the *global* token count divided by W:

    L_r = Σ_{t ∈ shard r} ℓ_t / (N / W)          (N = sampled tokens of the whole batch)
    mean_r ∇L_r = (1/W) Σ_r W · Σ_{t ∈ r} ∇ℓ_t / N = Σ_t ∇ℓ_t / N = ∇L_one-process

(sequence-level losses the same with sequences for tokens). Gradient clipping and the AdamW step then run on the
identical, all-reduced gradients on every rank, so the ranks' weights stay equal without a broadcast.
``tests/test_distributed.py`` checks the loss, the gradients and the updated weights of 2 gloo processes against
one process on the same batch.

Not yet: ``agentrft train`` itself does not run under torchrun (rollouts, the store and checkpoints are
single-process); this module is the learner step a distributed trainer calls. FSDP2 needs CUDA: asking for it
without a GPU is an error naming ``distributed.strategy``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field


class DistributedConfig(BaseModel):
    """``distributed:`` — how the learner is split over processes."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="ddp (any device) | fsdp2 (CUDA only: parameters, "
                                              "gradients and optimizer state sharded over ranks)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto = nccl on CUDA, else gloo")


def check_strategy(cfg: DistributedConfig, *, cuda: bool | None = None) -> str:
    """The process-group backend for ``cfg`` on this machine; refuses what it cannot run, naming the field."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cfg.strategy == "fsdp2" and not cuda:
        raise ValueError("distributed.strategy: fsdp2 shards over CUDA devices and this machine has none "
                         "(torch.cuda.is_available() is False); use strategy: ddp (gloo on CPU)")
    if cfg.backend == "nccl" and not cuda:
        raise ValueError("distributed.backend: nccl needs CUDA; use gloo (or auto) on CPU")
    return ("nccl" if cuda else "gloo") if cfg.backend == "auto" else cfg.backend


def init_from_env(cfg: DistributedConfig | None = None) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; ``(rank, world)``."""
    cfg = cfg or DistributedConfig()
    backend = check_strategy(cfg)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            raise RuntimeError("not launched by torchrun (no RANK in the environment): run "
                               "`torchrun --nproc_per_node N …`")
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


@dataclass(frozen=True)
class GlobalNorm:
    """A PolicyLoss normalised by the whole batch's totals over W (see the module docstring), whatever totals the
    learner computed from its shard."""

    inner: Any
    n_tokens: float
    n_seqs: int
    world: int

    def __call__(self, new_lp, old_lp, adv, mask, *, n_tokens, n_seqs, ref_lp, kl_coef):  # noqa: ARG002
        return self.inner(new_lp, old_lp, adv, mask, n_tokens=self.n_tokens / self.world,
                          n_seqs=self.n_seqs / self.world, ref_lp=ref_lp, kl_coef=kl_coef)


class DataParallelLearner:
    """Wraps an :class:`agentrft.policy.learner.Learner` whose process group is up: the model is wrapped (DDP or
    FSDP2) in place, and :meth:`rl_step` trains this rank's shard of a batch."""

    def __init__(self, learner: Any, cfg: DistributedConfig | None = None):
        self.cfg = cfg or DistributedConfig()
        check_strategy(self.cfg)
        self.learner = learner
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.module = learner.model
        if self.cfg.strategy == "fsdp2":  # pragma: no cover - CUDA only (benchmarks/gpu_smoke.sh)
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.module)
            wrapped = self.module
        else:
            wrapped = torch.nn.parallel.DistributedDataParallel(self.module, find_unused_parameters=False)
        # the learner runs the wrapped model (its forward registers the gradient all-reduce); its parameters are the
        # same tensors, so the learner's optimizer and clipping see the reduced gradients
        learner.model = wrapped

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank :: self.world]

    def rl_step(self, trajs: list[Any], token_advs: list[list[float]], loss_fn: Any) -> dict[str, float]:
        """One optimizer step on the whole batch, split over the ranks; the statistics are the whole batch's."""
        n_tokens = float(sum(sum(t.loss_mask) for t in trajs)) or 1.0
        mine = list(range(len(trajs)))[self.rank :: self.world]
        stats = self.learner.rl_step([trajs[i] for i in mine], [token_advs[i] for i in mine],
                                     GlobalNorm(loss_fn, n_tokens, len(trajs), self.world))
        # the shard's loss is W/N · Σ_shard ℓ: the batch loss is their mean; grad_norm is already the global one
        loss = torch.tensor([stats["loss"]], dtype=torch.float64)
        dist.all_reduce(loss)
        stats["loss"] = float(loss) / self.world
        stats["train_tokens"] = n_tokens
        return stats

    def unwrap(self) -> Any:
        """The learner with its plain model back (to save a checkpoint)."""
        self.learner.model = self.module
        return self.learner


__all__ = ["DataParallelLearner", "DistributedConfig", "GlobalNorm", "check_strategy", "init_from_env"]
