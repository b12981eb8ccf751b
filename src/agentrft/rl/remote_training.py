"""Training with a remote sampler (``sampler: {type: remote, …}``): the trainer's side of it, in one object.

Lifecycle, as the trainer drives it::

    rt = RemoteTraining.build(cfg, run_dir, run_id, policy)   # starts sampler.command and waits on /health
    stack.attach(policy, model=learner.model, sampler=rt.sampler)
    rt.start(learner, first_step)         # a resumed run pushes its weights first: the engine has only the base
    per step s:
        rollouts through rt.sampler (version label run:policy-(s-1), the agent loop stamps it on trajectories)
        rt.measure(s, trajs, learner)     # before the update: policy lag + sampler-vs-learner KL
        update
        rt.sync(s, learner)               # push policy-s; the sampler now asks for its adapter
        rt.report(s, metrics, monitor)    # the measurements and their alerts into the step's record
    rt.close()                             # stops the engine it started

Weights: a fresh run samples step 1 from the base model as the server loaded it (a LoRA learner's initial adapter
is zero, so that *is* policy-0); every later version is pushed by :class:`agentrft.policy.weight_sync.LoraSync`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from agentrft.config import RunConfig
from agentrft.policy.engine_process import EngineProcess
from agentrft.policy.remote_sampler import RemoteSampler, RemoteSamplerError
from agentrft.policy.weight_sync import FullSync, LoraSync, WeightSync
from agentrft.redact import ENV_REF
from agentrft.rl.async_safety import AsyncSafetyMonitor


def resolve_secret(value: str | None) -> str | None:
    """``${VAR}`` references read from the environment (a missing one is an error naming it)."""
    if value is None:
        return None

    def sub(m: Any) -> str:
        v = os.environ.get(m.group(1))
        if v is None:
            raise ValueError(f"sampler.api_key: environment variable {m.group(1)} is not set")
        return v

    return ENV_REF.sub(sub, value)


def first_model(base_url: str, api_key: str | None) -> str:
    """The first model id the server lists (``sampler.model`` left out)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        r = httpx.get(url, headers=headers, timeout=30)
        r.raise_for_status()
        return str(r.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        raise RemoteSamplerError(f"sampler: {url}: cannot list the server's models to pick sampler.model "
                                 f"({type(e).__name__}: {e}); set sampler.model") from None


class RemoteTraining:
    def __init__(self, sampler: RemoteSampler, sync: WeightSync | None, monitor: AsyncSafetyMonitor, run_id: str,
                 engine: EngineProcess | None = None):
        self.sampler = sampler
        self.weight_sync = sync
        self.monitor = monitor
        self.run_id = run_id
        self.engine = engine
        self.base_model = sampler.model
        self.sync_s: dict[int, float] = {}
        self.tis_cap: float | None = None
        self.pool: Any = None  # agentrft.rollout.ray_workers.RayRolloutLoop (rollout.backend: ray)
        self.tis_stats: dict[int, dict[str, float]] = {}

    @classmethod
    def build(cls, cfg: RunConfig, run_dir: Path, run_id: str, stop_ids: set[int]) -> "RemoteTraining | None":
        sc = cfg.sampler
        if sc.type != "remote":
            return None
        assert sc.base_url is not None  # the config validates it
        api_key = resolve_secret(sc.api_key)
        engine = None
        if sc.command:
            engine = EngineProcess(sc.command, sc.base_url, run_dir / "engine.log",
                                   startup_timeout_s=sc.startup_timeout_s).start()
        try:
            model = sc.model or first_model(sc.base_url, api_key)
            sampler = RemoteSampler(sc.base_url, model=model, stop_ids=stop_ids, api_key=api_key,
                                    timeout_s=sc.request_timeout_s, max_concurrency=sc.max_concurrency,
                                    retries=sc.retries, seed_mode=sc.seed_mode)
            root = sc.base_url.rstrip("/").removesuffix("/v1")
            sync: WeightSync | None = None
            if sc.weight_sync == "lora":
                sync = LoraSync(root, run_dir / "sync", api_key=api_key, keep=sc.keep_adapters)
            elif sc.weight_sync == "full":
                sync = FullSync(root, run_dir / "sync", model=model, api_key=api_key)
        except BaseException:
            if engine is not None:
                engine.stop()
            raise
        monitor = AsyncSafetyMonitor(mismatch_kl_alert=sc.mismatch_kl_alert, max_lag=cfg.rollout.max_staleness,
                                     check_mismatch=sc.check_mismatch)
        rt = cls(sampler, sync, monitor, run_id, engine)
        rt.tis_cap = cfg.rollout.tis_cap
        return rt

    def start_pool(self, cfg: RunConfig, model_ref: str) -> Any:
        """With ``rollout.backend: ray``: the pool of Ray rollout actors (agentrft.rollout.ray_workers), whose
        ``run`` replaces the agent loop's; else None."""
        ro = cfg.rollout
        if ro.backend != "ray":
            return None
        from agentrft.rollout.ray_workers import RayRolloutLoop

        sc = cfg.sampler
        spec = {"config": cfg.model_dump(), "base_dir": cfg.base_dir, "model_path": model_ref,
                "base_url": sc.base_url, "model": self.sampler.model, "api_key": resolve_secret(sc.api_key),
                "timeout_s": sc.request_timeout_s, "retries": sc.retries, "seed_mode": sc.seed_mode}
        self.pool = RayRolloutLoop(spec=spec, sampler=self.sampler, workers=ro.workers,
                                   concurrency=ro.worker_concurrency, address=ro.ray_address)
        return self.pool

    def version(self, n: int) -> str:
        return f"{self.run_id}:policy-{n}"

    def start(self, learner: Any, first_step: int) -> None:
        """A resumed run's weights (policy-(first_step−1)) go to the engine before its first rollout."""
        if first_step > 1 and self.weight_sync is not None:
            self.sync(first_step - 1, learner)

    def measure(self, step: int, trajs: list[Any], learner: Any) -> None:
        self.monitor.measure(step, trajs, learner, keep_logprobs=self.tis_cap is not None)

    def importance(self, step: int, trajs: list[Any], token_advs: dict[str, list[float]]
                   ) -> tuple[list[Any], dict[str, list[float]]]:
        """With ``rollout.tis_cap``: the batch rewritten for the decoupled clipped loss with truncated importance
        weights (agentrft.rl.async_importance); else unchanged."""
        if self.tis_cap is None:
            return trajs, token_advs
        from agentrft.rl.async_importance import decoupled_batch

        prox = self.monitor.proximal(step)
        new_t, new_a, stats = decoupled_batch(trajs, [token_advs[t.trace_id] for t in trajs], prox, self.tis_cap)
        self.tis_stats[step] = stats
        return new_t, {t.trace_id: a for t, a in zip(new_t, new_a)}

    def sync(self, step: int, learner: Any) -> None:
        """Push the weights after the update of ``step`` as ``policy-step`` and sample from them from now on."""
        if self.weight_sync is None:
            return
        t0 = time.perf_counter()
        self.sampler.model = self.weight_sync.push(learner.model, self.version(step))
        self.sync_s[step] = time.perf_counter() - t0

    def report(self, step: int, metrics: dict[str, Any], monitor: Any = None) -> list[Any]:
        metrics["sampler/requests"] = self.sampler.requests
        metrics["sampler/retries"] = self.sampler.retried
        if step in self.sync_s:
            metrics["time/weight_sync"] = self.sync_s.pop(step)
        metrics.update(self.tis_stats.pop(step, {}))
        self.monitor.discard(step)
        if self.pool is not None:
            metrics.update({f"rollout/{k}": v for k, v in self.pool.stats.items()})
        return self.monitor.report(step, metrics, monitor)

    def close(self) -> None:
        try:
            if self.pool is not None:
                self.pool.close()
            self.sampler.close()
            if self.weight_sync is not None:
                self.weight_sync.close()
        finally:
            if self.engine is not None:
                self.engine.stop()


__all__ = ["RemoteTraining", "first_model", "resolve_secret"]
