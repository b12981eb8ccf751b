"""Rollouts in Ray actors (``rollout: {backend: ray, workers: N}``): agent loops that run where the tools run, each
with its own remote-sampler client and tool router; finished trajectories stream back to the trainer.

:class:`RayRolloutLoop` has the agent loop's ``run(tasks, params, on_done)``, so the trainer and the evaluator use it
unchanged. Each of the N actors builds, once, a tokenizer + chat renderer for the model, a tool router from the run
config's ``tools`` and a :class:`~agentrft.policy.remote_sampler.RemoteSampler` to the engine; it runs up to
``concurrency`` rollouts at once (threads: each rollout is a one-task agent loop whose turns are HTTP requests the
engine batches, and whose tool calls run in that actor). Every task carries its trace id, seed and the served model
and version label of the moment it was submitted, so a trajectory is the same wherever it runs — the same tokens
as the in-process sampler's, given ``agentrft serve``'s seed offsets.

Failures. A task whose actor dies (killed, OOM, node lost) comes back as an actor error; the actor is replaced once
(a fresh one in its slot) and every unfinished task of the dead one is submitted again — counted in
``stats["rollouts_rerun"]`` and ``stats["workers_replaced"]``. Results are kept by task index, one per task, so a
re-run can never duplicate a trajectory. An error raised *inside* a rollout (the engine refusing a request, a bug)
is not retried: it fails the step as it would in process.

Ray is an optional dependency (``pip install 'agentrft[ray]'``); a local cluster is started on first use unless
``rollout.ray_address`` names one to join.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

from agentrft.policy.sampling import SamplingParams
from agentrft.types import Trajectory


class RolloutWorker:
    """The actor body (wrapped with ``ray.remote`` by :class:`RayRolloutLoop`)."""

    def __init__(self, spec: dict[str, Any]):
        from transformers import AutoTokenizer

        from agentrft.config import parse_config
        from agentrft.policy.remote_sampler import RemoteSampler
        from agentrft.rollout.agent import RolloutLimits
        from agentrft.rollout.render import ChatRenderer
        from agentrft.tools.router import build_router

        cfg = parse_config(spec["config"], base_dir=spec["base_dir"])
        hp = cfg.hyperparameters
        self.renderer = ChatRenderer(AutoTokenizer.from_pretrained(spec["model_path"]))
        self.router = build_router(cfg.tools, timeout_s=hp.tool_timeout_s, max_workers=hp.tool_workers,
                                   approval=cfg.approval.policy)
        self.sampler = RemoteSampler(spec["base_url"], model=spec["model"], stop_ids=self.renderer.stop_ids,
                                     api_key=spec.get("api_key"), timeout_s=spec["timeout_s"],
                                     max_concurrency=spec["concurrency"], retries=spec["retries"],
                                     seed_mode=spec["seed_mode"])
        self.limits = RolloutLimits(hp.max_turns, hp.max_episode_steps, hp.max_context_tokens)
        self.pid = os.getpid()

    def ping(self) -> int:
        return self.pid

    def run(self, task: Any, params: SamplingParams, model: str, version: str | None) -> Trajectory:
        from agentrft.rollout.agent import AgentLoop

        loop = AgentLoop(self.sampler.pinned(model, version), self.renderer, self.router, limits=self.limits,
                         max_batch=1)
        return loop.run([task], params)[0]


def _is_actor_death(e: BaseException) -> bool:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError

    return isinstance(e, (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError))


class RayRolloutLoop:
    """N rollout actors behind the agent loop's ``run``. ``sampler``: the trainer's remote sampler, read at each
    ``run`` for the served model and the version label (the trainer moves them after each weight sync)."""

    def __init__(self, *, spec: dict[str, Any], sampler: Any, workers: int, concurrency: int = 16,
                 address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError("rollout.backend: ray needs Ray: pip install 'agentrft[ray]'") from None
        self.ray = ray
        self.spec = dict(spec, concurrency=concurrency)
        self.sampler = sampler
        self.started_ray = False
        if not ray.is_initialized():
            # the actors import the run's tool modules: they get this process's import path
            path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}})
            self.started_ray = True
        self.cls = ray.remote(max_concurrency=concurrency, max_restarts=0)(RolloutWorker)
        self.actors = [self._spawn() for _ in range(workers)]
        self.gen = [0] * workers
        ray.get([a.ping.remote() for a in self.actors])  # up before the first step: start errors surface here
        self.stats = {"workers_replaced": 0, "rollouts_rerun": 0}
        self.lock = threading.Lock()

    def _spawn(self) -> Any:
        return self.cls.options(num_cpus=0).remote(self.spec)

    def run(self, tasks: list[Any], params: SamplingParams,
            on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        ray = self.ray
        model, version = self.sampler.model, getattr(self.sampler, "version", None)
        results: dict[int, Trajectory] = {}
        pending: dict[Any, tuple[int, int, int]] = {}  # ref → (task index, worker slot, worker generation)

        def submit(i: int, w: int) -> None:
            pending[self.actors[w].run.remote(tasks[i], params, model, version)] = (i, w, self.gen[w])

        for i in range(len(tasks)):
            submit(i, i % len(self.actors))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                i, w, g = pending.pop(ref)
                try:
                    traj = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - sorted below: a dead worker is replaced, the rest raise
                    if not _is_actor_death(e):
                        raise
                    with self.lock:
                        if g == self.gen[w]:  # the first of the dead actor's tasks to report: replace it once
                            self.actors[w] = self._spawn()
                            self.gen[w] += 1
                            self.stats["workers_replaced"] += 1
                        self.stats["rollouts_rerun"] += 1
                    submit(i, w)
                    continue
                if i in results:  # cannot happen (one ref per task at a time); never record a trajectory twice
                    continue
                results[i] = traj
                if on_done:
                    on_done(traj)
        return [results[i] for i in range(len(tasks))]

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self.started_ray:
            self.ray.shutdown()


__all__ = ["RayRolloutLoop", "RolloutWorker"]
