"""The remote sampler against a real `agentrft serve` process on loopback: token-exact turns (the seed + seed_offset
extension continues a trajectory's random stream), clear errors, and training runs whose sampler is that server —
step-1 trajectories token-identical to the in-process sampler's, the adapter of each update hot-loaded under a new
name, and a skipped weight sync caught by the sampler-vs-learner mismatch monitor."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import openai
import pytest
import torch

import lookup_task
from proc_helpers import free_port, serve_process, src_env
from agentrft.policy.remote_sampler import RemoteSampler, RemoteSamplerError
from agentrft.policy.sampling import SamplingParams
from agentrft.policy.seeding import advance, seeded_generator



def _serve_args(model: Path) -> list[str]:
    return ["--model", str(model), "--model-name", "tiny", "--slots", "16", "--no-traces"]


def _serve_argv(model: Path, port: int) -> list[str]:
    """The whole command line, for a trainer that starts the server itself (sampler.command)."""
    return [sys.executable, "-m", "agentrft.cli", "serve", *_serve_args(model), "--port", str(port)]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """`agentrft serve` over the tiny model in its own process."""
    with serve_process(_serve_args(tiny_model), tmp_path_factory.mktemp("serve") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def local(tiny_model):
    from agentrft.policy.transformers_sampler import TransformersSampler
    from agentrft.rollout.stack import load_policy

    policy = load_policy(tiny_model)
    return policy, TransformersSampler(policy.model, stop_ids=policy.renderer.stop_ids, pad_id=policy.pad_id)


def test_seed_offset_skips_exactly_the_draws_the_samplers_make():
    g = seeded_generator(7, 0)
    first = [float(torch.rand(1, generator=g)) for _ in range(40)]
    assert [float(torch.rand(1, generator=seeded_generator(7, k))) for k in (0, 1, 17, 39)] == \
        [first[0], first[1], first[17], first[39]]
    assert advance(torch.Generator().manual_seed(7), 17).get_state().equal(seeded_generator(7, 17).get_state())


def test_two_turns_token_identical_to_the_in_process_sampler(server, local):
    """Turn 2 continues each trajectory's stream where turn 1 left it (seed_offset = tokens sampled so far), so a
    remote trajectory is the in-process one token for token; the log-probs agree to fp32 noise."""
    policy, inproc = local
    remote = RemoteSampler(server + "/v1", model="tiny", stop_ids=policy.renderer.stop_ids)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=12)
    msgs = [[{"role": "user", "content": f"What color is K{i}?"}] for i in range(4)]
    prompts = [policy.renderer.prompt_ids(m, lookup_task.TOOLS) for m in msgs]
    seeds = [11, 12, 13, 2**40 + 5]
    gl = [torch.Generator().manual_seed(s) for s in seeds]
    gr = [torch.Generator().manual_seed(s) for s in seeds]
    limits = [12, 12, 12, 5]  # row 3 is cut by its context budget
    try:
        for turn in range(2):
            a = inproc.generate(prompts, params, gl, limits=limits)
            b = remote.generate(prompts, params, gr, limits=limits)
            assert [y.ids for y in b] == [x.ids for x in a], turn
            assert [y.finish_reason for y in b] == [x.finish_reason for x in a]
            assert len(b[3].ids) <= 5
            for x, y in zip(a, b):
                assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < 1e-4
            # the local generators stay in step: each drew one uniform per token it sampled
            assert all(g.get_state().equal(h.get_state()) for g, h in zip(gl, gr))
            # the next turn's prompt: what was sampled plus a rendered tool result
            tool = policy.renderer.encode("\n<tool_response>\nK1 is red\n</tool_response>")
            prompts = [p + y.ids + tool for p, y in zip(prompts, b)]
        assert remote.tokens_generated == sum(remote._pos[id(g)][1] for g in gr) > 8
    finally:
        remote.close()


def test_errors_name_the_server_and_what_it_said(server, local):
    policy, _ = local
    params = SamplingParams(max_new_tokens=4)
    bad_model = RemoteSampler(server + "/v1", model="no-such-model", stop_ids=policy.renderer.stop_ids, retries=0)
    with pytest.raises(RemoteSamplerError, match=r"/v1/completions: HTTP 404: .*no-such-model"):
        bad_model.generate([[1, 2, 3]], params, [torch.Generator().manual_seed(0)])
    bad_model.close()
    nowhere = RemoteSampler(f"http://127.0.0.1:{free_port()}/v1", model="tiny", stop_ids={0}, retries=1)
    with pytest.raises(RemoteSamplerError, match=r"ConnectError.*after 2 tries"):
        nowhere.generate([[1, 2, 3]], params, [torch.Generator().manual_seed(0)])
    nowhere.close()
    remote = RemoteSampler(server + "/v1", model="tiny", stop_ids=policy.renderer.stop_ids)
    moved = torch.Generator().manual_seed(3)
    torch.rand(1, generator=moved)  # drawn from by someone else: its position is unknown to the sampler
    with pytest.raises(RemoteSamplerError, match="position"):
        remote.generate([[1, 2, 3]], params, [moved])
    remote.close()


def test_the_server_refuses_an_offset_without_a_seed(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="seed_offset needs a seed"):
        c.completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=2, extra_body={"seed_offset": 3})


# ---- training with the server as the sampler -------------------------------------------------------------------

def _config(tiny_model: Path, lookup_files: dict, out: Path, sampler: dict | None, lr: float = 1e-2, **hp):
    from agentrft.config import parse_config

    grader = {"type": "text_similarity", "name": "sim", "input": "{{ sample.output_text }}",
              "reference": "{{ item.answer }}", "evaluation_metric": "fuzzy_match"}
    return parse_config({
        "model": str(tiny_model), "training_file": str(lookup_files["train"]), "tools": ["lookup_task:lookup"],
        "grader": grader, "output_dir": str(out), **({"sampler": sampler} if sampler else {}),
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "group_size": 4, "learning_rate": lr,
                            "max_new_tokens": 16, "max_turns": 2, "max_episode_steps": 2, "seed": 3,
                            "max_signal_free_steps": 0, "save_interval_s": 1000, **hp},
    })


def _trajs(store, run_id: str, step: int) -> dict[tuple[int, int], dict]:
    return {(t["row_index"], t["sample_index"]): t for t in store.trajectories(run_id, split="train", step=step)}


@pytest.mark.slow
def test_training_run_started_its_own_agentrft_serve(tiny_model, lookup_files, tmp_path):
    """The trainer starts `agentrft serve` (sampler.command), samples every step through it, hot-loads the adapter
    after each update under a new name, and stops it at the end; step 1 (the untouched policy) is token-identical
    to an in-process run with the same seeds."""
    from agentrft.rl.trainer import train
    from agentrft.store import RunStore

    port = free_port()
    cfg = _config(tiny_model, lookup_files, tmp_path / "remote", {
        "type": "remote", "base_url": f"http://127.0.0.1:{port}/v1", "model": "tiny",
        "command": _serve_argv(tiny_model, port), "startup_timeout_s": 180})
    os.environ["PYTHONPATH"] = src_env()["PYTHONPATH"]  # the engine subprocess imports the test's tool module
    remote_id = train(cfg, progress=False)
    local_cfg = _config(tiny_model, lookup_files, tmp_path / "local", None)
    local_id = train(local_cfg, progress=False)

    rs, ls = RunStore(cfg.store_url), RunStore(local_cfg.store_url)
    r1, l1 = _trajs(rs, remote_id, 1), _trajs(ls, local_id, 1)
    assert r1.keys() == l1.keys() and len(r1) == 8
    for k in r1:
        # the store keeps each turn's span of the trajectory's ids and its decoded text (not the ids themselves;
        # test_two_turns_token_identical_to_the_in_process_sampler compares ids)
        spans = [[(u["start"], u["end"], u["text"], u["finish_reason"]) for u in t[k]["turns"]] for t in (r1, l1)]
        assert spans[0] == spans[1], k
        assert (r1[k]["completion_tokens"], r1[k]["total_tokens"], r1[k]["reward"]) == \
            (l1[k]["completion_tokens"], l1[k]["total_tokens"], l1[k]["reward"])
        assert r1[k]["checkpoint_id"] == f"{remote_id}:policy-0"
    r2 = _trajs(rs, remote_id, 2)
    assert {t["checkpoint_id"] for t in r2.values()} == {f"{remote_id}:policy-1"}
    metrics = {m["step"]: m for m in rs.step_metrics(remote_id, split="train")}
    for s in (1, 2):
        assert metrics[s]["policy_lag_max"] == 0
        assert metrics[s]["sampler_mismatch_kl"] < 1e-4, metrics[s]["sampler_mismatch_kl"]
        assert metrics[s]["sampler_mismatch_tokens"] > 0 and not metrics[s].get("alert/sampler_mismatch_kl")
        assert metrics[s]["time/weight_sync"] > 0
    assert metrics[1]["trained_trajectories"] > 0  # the update changed the weights step 2 sampled from
    sync = tmp_path / "remote" / remote_id / "sync"
    assert sorted(p.name for p in sync.iterdir()) == [f"{remote_id}-policy-1", f"{remote_id}-policy-2"]
    log = (tmp_path / "remote" / remote_id / "engine.log").read_text()
    assert "Uvicorn running" in log or "Application startup" in log
    with pytest.raises(httpx.TransportError):  # the engine was stopped with the run
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.slow
def test_a_skipped_weight_sync_fires_the_mismatch_alert(server, tiny_model, lookup_files, tmp_path, monkeypatch):
    """Fault injection: the push of policy-1 silently does nothing (the engine keeps answering with policy-0's
    weights while the trainer labels step 2 as policy-1 — the label, so the lag, is right); the mismatch monitor
    sees the sampler's log-probs disagree with the learner's and alerts at step 2, and only there."""
    from agentrft.policy.weight_sync import LoraSync
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    real_push = LoraSync.push

    def flaky_push(self, model, version):
        if version.endswith(":policy-1"):
            return self.loaded[-1] if self.loaded else "tiny"  # "loaded", but the old weights still answer
        return real_push(self, model, version)

    monkeypatch.setattr(LoraSync, "push", flaky_push)
    cfg = _config(tiny_model, lookup_files, tmp_path, {"type": "remote", "base_url": server + "/v1",
                                                       "mismatch_kl_alert": 1e-4})
    cfg.hyperparameters.max_steps = 3
    run_id = Trainer(cfg, progress=False).run()
    metrics = {m["step"]: m for m in RunStore(cfg.store_url).step_metrics(run_id, split="train")}
    kl = {s: metrics[s]["sampler_mismatch_kl"] for s in metrics}
    print("sampler_mismatch_kl by step:", kl)
    assert kl[1] < 1e-5 and kl[3] < 1e-5, kl  # in sync (policy-2 was pushed)
    assert kl[2] > 1e-4, kl
    assert metrics[2]["alert/sampler_mismatch_kl"] == 1.0
    assert [a["signal"] for a in metrics[2]["alerts"]] == ["sampler_mismatch_kl"]
    assert all(m["policy_lag_max"] == 0 for m in metrics.values())


def test_the_api_key_is_read_from_the_environment_and_never_recorded(monkeypatch, tmp_path):
    from agentrft.config import parse_config
    from agentrft.redact import redact_config
    from agentrft.rl.remote_training import resolve_secret

    cfg = parse_config({"model": "m", "training_file": "t.jsonl", "grader": {"type": "string_check"},
                        "sampler": {"type": "remote", "base_url": "http://127.0.0.1:1/v1", "api_key": "s3cret"}})
    assert redact_config(cfg.model_dump())["sampler"]["api_key"] == "<redacted>"
    monkeypatch.setenv("ENGINE_TOKEN", "from-env")
    assert resolve_secret("${ENGINE_TOKEN}") == "from-env"
    monkeypatch.delenv("ENGINE_TOKEN")
    with pytest.raises(ValueError, match="ENGINE_TOKEN is not set"):
        resolve_secret("${ENGINE_TOKEN}")


def test_an_engine_command_that_dies_is_reported_with_its_log(tmp_path):
    from agentrft.policy.engine_process import EngineProcess, EngineStartError

    eng = EngineProcess([sys.executable, "-c", "print('no GPU found'); raise SystemExit(3)"],
                        "http://127.0.0.1:1/v1", tmp_path / "engine.log", startup_timeout_s=60)
    with pytest.raises(EngineStartError, match=r"exited with status 3 .*\n.*no GPU found"):
        eng.start()
    with pytest.raises(EngineStartError, match="cannot start 'no-such-engine-binary'"):
        EngineProcess("no-such-engine-binary serve", "http://127.0.0.1:1/v1", tmp_path / "e2.log").start()


def test_a_vllm_answer_without_token_ids_is_read_from_its_token_id_strings():
    """vLLM itself cannot run here (CUDA-only wheels): this is the shape of its /v1/completions choice with
    ``return_tokens_as_token_ids`` and no ``token_ids`` (vLLM before return_token_ids), written out by hand."""
    s = RemoteSampler("http://127.0.0.1:1/v1", model="m", stop_ids={2})
    try:
        choice = {"text": "", "finish_reason": "stop",
                  "logprobs": {"tokens": ["token_id:17", "token_id:5", "token_id:2"],
                               "token_logprobs": [-0.5, -1.25, -0.01], "top_logprobs": None}}
        assert s._parse({"choices": [choice]}) == ([17, 5, 2], [-0.5, -1.25, -0.01], "stop")
        choice["logprobs"]["tokens"] = choice["logprobs"]["tokens"][:2]
        choice["logprobs"]["token_logprobs"] = choice["logprobs"]["token_logprobs"][:2]
        assert s._parse({"choices": [choice]})[2] == "length"  # cut before a stop token
        with pytest.raises(RemoteSamplerError, match="no sampled token ids"):
            s._parse({"choices": [{"text": "hi", "logprobs": None}]})
        assert s._body([1, 2], SamplingParams(0.7, 0.9, 8), 5, 3, 8)["seed_offset"] == 3
        mixed = RemoteSampler("http://127.0.0.1:1/v1", model="m", stop_ids={2}, seed_mode="mixed")
        b = mixed._body([1, 2], SamplingParams(0.7, 0.9, 8), 5, 3, 8)
        assert "seed_offset" not in b and b["seed"] != 5 and b["seed"] != mixed._body([1], SamplingParams(), 5, 4, 8)[
            "seed"]
        mixed.close()
    finally:
        s.close()


@pytest.mark.slow
def test_a_resumed_run_pushes_its_adapter_before_sampling(server, tiny_model, lookup_files, tmp_path):
    """Resume with a remote sampler: the engine has only the base (or stale adapters) — the trainer hot-loads the
    resumed `latest` as policy-(s-1) before step s samples, so the sampler-vs-learner KL stays at numerics."""
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    cfg = _config(tiny_model, lookup_files, tmp_path, {"type": "remote", "base_url": server + "/v1",
                                                       "mismatch_kl_alert": 1e-4})
    cfg.hyperparameters.save_interval_s = 0
    run_id = Trainer(cfg, progress=False).run()  # 2 steps
    cfg.hyperparameters.max_steps = 3
    assert Trainer(cfg, resume=run_id, progress=False).run() == run_id
    metrics = {m["step"]: m for m in RunStore(cfg.store_url).step_metrics(run_id, split="train")}
    assert sorted(metrics) == [1, 2, 3]
    assert metrics[3]["sampler_mismatch_kl"] < 1e-5 and not metrics[3].get("alerts"), metrics[3]
    assert {t["checkpoint_id"] for t in RunStore(cfg.store_url).trajectories(run_id, split="train", step=3)} == \
        {f"{run_id}:policy-2"}
    assert (tmp_path / run_id / "sync" / f"{run_id}-policy-3").is_dir()


@pytest.mark.slow
def test_full_fine_tuning_pushes_whole_weights_through_pause_update_resume(tiny_model, lookup_files, tmp_path):
    """weight_sync: full against its own `agentrft serve`: each update's weights are loaded between /pause and
    /resume, the server then answers as the new version, and the learner agrees with what it sampled; the endpoint
    refuses an update without a pause and a directory without weights, changing nothing."""
    from agentrft.rl.trainer import Trainer
    from agentrft.store import RunStore

    with serve_process(_serve_args(tiny_model), tmp_path / "serve.log") as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        before = c.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=4, seed=1, logprobs=0)
        r = httpx.post(url + "/update_weights", json={"path": str(tmp_path)})
        assert r.status_code == 400 and "POST /pause" in r.json()["error"]["message"]
        assert httpx.post(url + "/pause").json() == {"is_paused": True}
        r = httpx.post(url + "/update_weights", json={"path": str(tmp_path)})
        assert r.status_code == 400 and "no *.safetensors" in r.json()["error"]["message"]
        assert httpx.post(url + "/resume").json() == {"is_paused": False}

        cfg = _config(tiny_model, lookup_files, tmp_path, {"type": "remote", "base_url": url + "/v1",
                                                           "weight_sync": "full", "mismatch_kl_alert": 1e-4}, lr=1e-3,
                      lora=None)
        run_id = Trainer(cfg, progress=False).run()
        metrics = {m["step"]: m for m in RunStore(cfg.store_url).step_metrics(run_id, split="train")}
        assert metrics[1]["trained_trajectories"] > 0
        assert metrics[2]["sampler_mismatch_kl"] < 1e-5 and not metrics[2].get("alerts"), metrics[2]
        after = c.completions.create(model="tiny", prompt=[5, 6, 7], max_tokens=4, seed=1, logprobs=0)
        assert before.system_fingerprint == "base:tiny" and after.system_fingerprint == f"{run_id}:policy-2"
        assert after.choices[0].logprobs.token_logprobs != before.choices[0].logprobs.token_logprobs
        assert [p.name for p in (tmp_path / run_id / "sync").iterdir()] == [f"{run_id}-policy-2"]
