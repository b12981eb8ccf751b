"""Rollouts in Ray actors on a real local Ray cluster, sampling through a real `agentrft serve` process: a worker
killed mid-step is replaced and its unfinished rollouts re-run — counted, none lost, none twice — with the same
tokens the in-process sampler gives; and a training run with 2 workers records what the in-process run records."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

import lookup_task  # noqa: E402
from proc_helpers import src_env  # noqa: E402
from test_remote_sampler import _config, local, server  # noqa: E402,F401  (module fixtures)

from agentrft.data import load_dataset  # noqa: E402
from agentrft.policy.remote_sampler import RemoteSampler  # noqa: E402
from agentrft.policy.sampling import SamplingParams  # noqa: E402
from agentrft.rollout.agent import AgentLoop, RolloutLimits, RolloutTask  # noqa: E402

pytestmark = pytest.mark.slow


def _spec(tiny_model, lookup_files, tmp_path, url: str) -> dict:
    cfg = _config(tiny_model, lookup_files, tmp_path, {"type": "remote", "base_url": url + "/v1", "model": "tiny"})
    return {"config": cfg.model_dump(), "base_dir": cfg.base_dir, "model_path": str(tiny_model),
            "base_url": url + "/v1", "model": "tiny", "api_key": None, "timeout_s": 120, "retries": 2,
            "seed_mode": "offset"}


def test_a_killed_worker_is_replaced_and_its_rollouts_rerun_once(server, local, tiny_model, lookup_files, tmp_path):
    import ray

    from agentrft.rollout.ray_workers import RayRolloutLoop
    from agentrft.tools.router import build_router

    os.environ["PYTHONPATH"] = src_env()["PYTHONPATH"]
    policy, inproc = local
    rows = list(load_dataset(lookup_files["train"]))[:6]
    tasks = [RolloutTask(row=r, seed=100 + i * 7 + k, group_id=f"g{i}", sample_index=k,
                         data_dir=str(lookup_files["train"].parent)) for i, r in enumerate(rows) for k in range(3)]
    params = SamplingParams(1.0, 1.0, 24)
    driver = RemoteSampler(server + "/v1", model="tiny", stop_ids=policy.renderer.stop_ids)
    driver.version = "run-x:policy-0"
    pool = RayRolloutLoop(spec=_spec(tiny_model, lookup_files, tmp_path, server), sampler=driver, workers=2,
                          concurrency=4)
    try:
        victim = pool.actors[0]
        seen: list[str] = []

        def on_done(t):
            seen.append(t.trace_id)
            if len(seen) == 1:  # mid-step: worker 0 still has unfinished rollouts
                ray.kill(victim, no_restart=True)

        trajs = pool.run(tasks, params, on_done=on_done)
        assert [t.trace_id for t in trajs] == [t.trace_id for t in tasks]
        assert sorted(seen) == sorted(t.trace_id for t in tasks)  # streamed back once each, none twice
        assert pool.stats["workers_replaced"] == 1 and pool.stats["rollouts_rerun"] >= 1
        assert pool.actors[0] is not victim and len(pool.actors) == 2
        assert {t.checkpoint_id for t in trajs} == {"run-x:policy-0"}
        # a re-run rollout is the rollout: every trajectory equals the in-process sampler's for its seed
        router = build_router(["lookup_task:lookup"], timeout_s=30, max_workers=4)
        ref = AgentLoop(inproc, policy.renderer, router, limits=RolloutLimits(2, 2, 2048)).run(tasks, params)
        router.close()
        for a, b in zip(trajs, ref):
            assert (a.token_ids, a.outcome) == (b.token_ids, b.outcome), a.trace_id
        # the next step runs on the replacement like on any worker
        again = pool.run(tasks[:4], params)
        assert [t.token_ids for t in again] == [t.token_ids for t in trajs[:4]]
    finally:
        pool.close()
        driver.close()


def test_training_with_two_ray_workers_records_what_the_in_process_run_records(tiny_model, lookup_files, tmp_path,
                                                                                server):
    from agentrft.rl.trainer import train
    from agentrft.store import RunStore

    os.environ["PYTHONPATH"] = src_env()["PYTHONPATH"]
    cfg = _config(tiny_model, lookup_files, tmp_path / "ray",
                  {"type": "remote", "base_url": server + "/v1", "model": "tiny"})
    cfg.rollout.backend, cfg.rollout.workers, cfg.rollout.worker_concurrency = "ray", 2, 4
    ray_id = train(cfg, progress=False)
    local_cfg = _config(tiny_model, lookup_files, tmp_path / "local", None)
    local_id = train(local_cfg, progress=False)
    rs, ls = RunStore(cfg.store_url), RunStore(local_cfg.store_url)
    for step in (1, 2):
        r = {(t["row_index"], t["sample_index"]): t for t in rs.trajectories(ray_id, split="train", step=step)}
        lo = {(t["row_index"], t["sample_index"]): t for t in ls.trajectories(local_id, split="train", step=step)}
        assert r.keys() == lo.keys() and len(r) == 8
        assert all(set(r[k]) == set(lo[k]) for k in r)  # the same record shape
        if step == 1:  # the untouched policy: the same tokens (turn spans and texts) as in process
            for k in r:
                assert [(u["start"], u["end"], u["text"]) for u in r[k]["turns"]] == \
                    [(u["start"], u["end"], u["text"]) for u in lo[k]["turns"]], k
    rm = {m["step"]: m for m in rs.step_metrics(ray_id, split="train")}
    lm = {m["step"]: m for m in ls.step_metrics(local_id, split="train")}
    assert set(lm[1]) <= set(rm[1])  # every in-process metric, plus the remote/ray ones
    assert rm[2]["rollout/workers_replaced"] == 0 and rm[2]["rollout/rollouts_rerun"] == 0
    assert lookup_task  # the tool module the actors imported
