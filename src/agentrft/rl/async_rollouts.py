"""Async off-policy rollouts (``rollout.max_staleness: k``): the batches of the next steps are sampled by a
background thread while the current step grades and trains.

Schedule. Let ``v`` be the learner's version (the last step whose update is done and pushed to the engine: 0 before
any). The batch of step ``s`` may start as soon as

    v ≥ s − 1 − k

and is sampled from the engine's weights at that moment (version ``v``, stamped ``run:policy-v`` on its
trajectories), so the policy lag of step s's batch, ``(s − 1) − v``, is at most ``k``; ``k = 0`` is the synchronous
schedule. At most ``k + 1`` batches are therefore sampled ahead of the learner. The producer thread takes rows from
its own copy of the data cursor, in step order, and every batch carries the cursor after its rows: the trainer
adopts it when it trains on the batch, so ``latest`` at step s holds exactly the cursor of step s and a resumed run
samples step s + 1's rows again (their rollout seeds depend only on the seed, step, row and sample index).

The learner trains on the sampler's tokens with the sampler's log-probs as the behaviour policy: the clipped ratio
``exp(ℓ − ℓ_behaviour)`` is the learner's ordinary loss (agentrft.rl.loss); ``rollout.tis_cap`` switches to the
decoupled form with truncated importance sampling (agentrft.rl.async_importance).

Only for a remote sampler (the config refuses otherwise): an in-process sampler is the learner's own module, which
the optimizer would change under the rollouts. A remote batch's turns are each sampled by the adapter the sampler
names at that turn — a weight sync in the middle of a batch moves its later turns to the newer weights; the
log-prob of every token is still that of the weights that sampled it, so the ratio stays exact, and the stamped
version is the oldest weights in the batch (the lag reported is an upper bound).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Batch:
    step: int
    version: int  # the learner version the batch started sampling from
    rows: list[Any] = field(default_factory=list)
    trajs: list[Any] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)  # (epoch, offset) after this batch's rows
    sample_s: float = 0.0
    error: BaseException | None = None


class AsyncRollouts:
    """The producer thread. ``make(step, version) -> Batch`` samples one batch (rows, rollouts) — called on the
    producer thread, in step order; ``take(step)`` (trainer) waits for that step's batch; ``updated(step)`` (trainer,
    after the update and weight sync of ``step``) lets the batches it unblocks start."""

    def __init__(self, make: Callable[[int, int], Batch], *, first_step: int, last_step: int, max_staleness: int):
        self.make = make
        self.first, self.last = first_step, last_step
        self.k = int(max_staleness)
        self.version = first_step - 1
        self.ready: dict[int, Batch] = {}
        self.cond = threading.Condition()
        self.stopped = False
        self.waited_s = 0.0
        self.thread = threading.Thread(target=self._run, name="agentrft-async-rollouts", daemon=True)

    def start(self) -> "AsyncRollouts":
        self.thread.start()
        return self

    def _run(self) -> None:
        for step in range(self.first, self.last + 1):
            with self.cond:
                while not self.stopped and self.version < step - 1 - self.k:
                    self.cond.wait()
                if self.stopped:
                    return
                version = self.version
            t0 = time.perf_counter()
            try:
                batch = self.make(step, version)
            except BaseException as e:  # handed to the trainer at take(): the run fails there, with this error
                batch = Batch(step, version, error=e)
            batch.sample_s = time.perf_counter() - t0
            with self.cond:
                self.ready[step] = batch
                self.cond.notify_all()
            if batch.error is not None:
                return

    def take(self, step: int) -> Batch:
        t0 = time.perf_counter()
        with self.cond:
            while step not in self.ready:
                if not self.thread.is_alive() and step not in self.ready:
                    raise RuntimeError(f"async rollouts: the producer stopped before step {step}'s batch")
                self.cond.wait(timeout=1.0)
            batch = self.ready.pop(step)
        self.waited_s = time.perf_counter() - t0
        if batch.error is not None:
            raise batch.error
        return batch

    def updated(self, step: int) -> None:
        with self.cond:
            self.version = max(self.version, step)
            self.cond.notify_all()

    def close(self, timeout: float = 60.0) -> None:
        """Stop starting batches; a batch being sampled finishes (or fails on the closed sampler) in the background."""
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        self.thread.join(timeout=timeout)


def producer(trainer: Any) -> AsyncRollouts:
    """An :class:`AsyncRollouts` over a trainer's data, agent loop and remote sampler, from its resume point."""
    from agentrft.rl.trainer import Cursor, rollout_seed
    from agentrft.rollout.agent import RolloutTask

    hp = trainer.hp
    cursor = Cursor(trainer.cursor.epoch, trainer.cursor.offset)

    def make(step: int, version: int) -> Batch:
        row_ids = cursor.take(len(trainer.train_rows), hp.batch_size, hp.seed)
        rows = [trainer.train_rows[i] for i in row_ids]
        tasks = [RolloutTask(row=r, seed=rollout_seed(hp.seed, step, r.index, k), split="train",
                             group_id=f"s{step}-r{r.index}-{j}", sample_index=k, data_dir=trainer.data_dir)
                 for j, r in enumerate(rows) for k in range(hp.group_size)]
        trainer.sampler.version = f"{trainer.run_id}:policy-{version}"  # stamped on each task as it starts
        trajs = trainer.loop.run(tasks, trainer.train_params)
        return Batch(step, version, rows, trajs, (cursor.epoch, cursor.offset))

    return AsyncRollouts(make, first_step=trainer.start_step, last_step=trainer.total_steps,
                         max_staleness=trainer.cfg.rollout.max_staleness).start()


__all__ = ["AsyncRollouts", "Batch", "producer"]
