"""Checkpoints from the run store served by id (LoRA adapters over the base, full fine-tuned models in a memory
budget), a checkpoint written while the server runs, vLLM-style adapter hot-loading under live traffic, and the
production traces on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import threading
import uuid

import httpx
import openai
import pytest

import serve_helpers as h
from agentrft.serve.app import ServerState, create_app
from agentrft.serve.config import ServeConfig
from agentrft.serve.server import BackgroundServer
from agentrft.store import RunStore

N = 10  # greedy tokens compared per answer


@pytest.fixture(scope="module")
def env(tiny_model, tmp_path_factory):
    tool = h.tool_model_dir(tiny_model, tmp_path_factory)
    d = tmp_path_factory.mktemp("ckpts")
    adapters = {k: h.make_adapter(tool, d / f"lora-{k}", seed) for k, seed in (("a", 1), ("b", 2), ("c", 3))}
    full1 = shutil.copytree(tiny_model, d / "full-1")  # the untrained model: answers unlike the tuned base
    full2 = shutil.copytree(tiny_model, d / "full-2")
    from agentrft.policy.learner import load_model_and_tokenizer
    from agentrft.rollout.render import ChatRenderer

    _, tok = load_model_and_tokenizer(str(tool))
    prompt = ChatRenderer(tok).prompt_ids(h.PLAIN, None)
    want = {k: h.greedy_ids(p, prompt, N) for k, p in [("base", tool), *adapters.items(), ("full", full1)]}
    assert len({tuple(v) for v in want.values()}) == len(want), "every set of weights answers differently"
    return {"tool": tool, "dir": d, "adapters": adapters, "full1": full1, "full2": full2, "prompt": prompt,
            "want": want}


def _ids(client, model, prompt):
    r = client.completions.with_raw_response.create(model=model, prompt=prompt, max_tokens=N, temperature=0,
                                                    extra_body={"return_token_ids": True})
    c = r.parse()
    assert c.system_fingerprint == r.headers["x-agentrft-checkpoint"]
    return c.choices[0].model_dump()["token_ids"], c.system_fingerprint


def test_store_checkpoints_served_by_id_and_new_ones_without_restart(env, tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    run = store.create_run("My Job", {"base_dir": str(tmp_path)}, base_model=str(env["tool"]))
    store.record_checkpoint(run, f"{run}:step-5", 5, env["adapters"]["a"], {}, 0.5, kept=True)
    store.record_checkpoint(run, f"{run}:step-10", 10, env["adapters"]["b"], {}, 0.8, kept=True)
    store.record_checkpoint(run, f"{run}:step-1", 1, tmp_path / "gone", {}, 0.1, kept=False)
    full = store.create_run("Full FT", {}, base_model=str(env["tool"]))
    store.record_checkpoint(full, f"{full}:step-3", 3, env["full1"], {}, 0.2, kept=True)
    other = store.create_run("other base", {}, base_model="some/other-model")
    store.record_checkpoint(other, f"{other}:step-2", 2, env["adapters"]["c"], {}, 0.9, kept=True)

    cfg = ServeConfig(model=str(env["tool"]), model_name="tool", store=store.url, max_loras=1, slots=4)
    app = create_app(cfg)
    stem, fstem = f"ft:tool:my-job:{run}", f"ft:tool:full-ft:{full}"
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            ids = [m.id for m in c.models.list().data]
            assert ids == ["tool", stem, f"{stem}:ckpt-step-5", f"{stem}:ckpt-step-10", fstem,
                           f"{fstem}:ckpt-step-3"] or sorted(ids) == sorted(
                ["tool", stem, f"{stem}:ckpt-step-5", f"{stem}:ckpt-step-10", fstem, f"{fstem}:ckpt-step-3"])
            p = env["prompt"]
            assert _ids(c, "tool", p) == (env["want"]["base"], "base:tool")
            assert _ids(c, stem, p) == (env["want"]["b"], f"{run}:step-10")  # the best checkpoint
            assert _ids(c, f"{stem}:ckpt-step-5", p) == (env["want"]["a"], f"{run}:step-5")
            assert app.state.serve.manager.lru.keys() == {f"{run}:step-5"}  # max_loras=1: LRU evicted b
            assert _ids(c, stem, p) == (env["want"]["b"], f"{run}:step-10")
            assert _ids(c, fstem, p) == (env["want"]["full"], f"{full}:step-3")  # a separate full model
            assert _ids(c, "tool", p) == (env["want"]["base"], "base:tool")  # base unaffected by adapters
            # a checkpoint recorded while the server runs: listed and servable, and the run's best follows it
            store.record_checkpoint(run, f"{run}:step-15", 15, env["adapters"]["c"], {}, 0.9, kept=True)
            assert f"{stem}:ckpt-step-15" in [m.id for m in c.models.list().data]
            assert _ids(c, stem, p) == (env["want"]["c"], f"{run}:step-15")
            # registry aliases: `agentrft promote` records promoted checkpoints
            with pytest.raises(openai.NotFoundError):
                c.completions.create(model="production", prompt=p, max_tokens=1)
            store.add_registry_entry(run, f"{run}:step-5", status="promoted", evidence={}, grader_versions={})
            assert "production" in [m.id for m in c.models.list().data]
            assert _ids(c, "production", p) == (env["want"]["a"], f"{run}:step-5")
            assert "candidate" not in [m.id for m in c.models.list().data]
            store.add_registry_entry(run, f"{run}:step-10", status="candidate", evidence={}, grader_versions={})
            assert _ids(c, "candidate", p) == (env["want"]["b"], f"{run}:step-10")
            assert _ids(c, "production", p) == (env["want"]["a"], f"{run}:step-5")  # each alias its own entry
            for bad in (f"{stem}:ckpt-step-1", f"{stem}:ckpt-step-99", f"ft:tool:wrong:{run}",
                        f"ft:tool:other-base:{other}", "ft:other:my-job:" + run):
                with pytest.raises(openai.NotFoundError):
                    c.completions.create(model=bad, prompt=p, max_tokens=1)
            m = httpx.get(srv.base_url + "/metrics").text
            assert "agentrft_loaded_adapters 1" in m and "agentrft_loaded_models 2" in m
    finally:
        app.state.serve.close()


def test_full_checkpoints_within_the_memory_budget(env, tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'store.db'}")
    run = store.create_run("full", {}, base_model=str(env["tool"]))
    store.record_checkpoint(run, f"{run}:step-1", 1, env["full1"], {}, 0.2, kept=True)
    store.record_checkpoint(run, f"{run}:step-2", 2, env["full2"], {}, 0.3, kept=True)
    size = sum(f.stat().st_size for f in env["full1"].glob("*.safetensors")) / 2**20
    # room for the base and one full checkpoint, not two
    cfg = ServeConfig(model=str(env["tool"]), model_name="tool", store=store.url, slots=2,
                      max_model_memory_mb=2.5 * size)
    app = create_app(cfg)
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            stem = f"ft:tool:full:{run}"
            assert _ids(c, f"{stem}:ckpt-step-1", env["prompt"])[1] == f"{run}:step-1"
            assert _ids(c, f"{stem}:ckpt-step-2", env["prompt"])[1] == f"{run}:step-2"  # step-1 (idle) evicted
            assert list(app.state.serve.manager.full) == [f"{run}:step-2"]
            app.state.serve.manager.cfg = cfg.model_copy(update={"max_model_memory_mb": 1.5 * size})
            app.state.serve.manager.full.popitem()[1][0].close()
            with pytest.raises(openai.InternalServerError) as e:
                c.completions.create(model=f"{stem}:ckpt-step-1", prompt=env["prompt"], max_tokens=1)
            assert e.value.status_code == 503
            assert "max_model_memory_mb" in e.value.message and e.value.body["code"] == "memory_budget"
    finally:
        app.state.serve.close()


def test_lora_hot_load_and_swap_under_live_traffic(env):
    cfg = ServeConfig(model=str(env["tool"]), model_name="tool", max_loras=3, slots=8, record_traces=False,
                      loras={"a": str(env["adapters"]["a"])})
    app = create_app(cfg)
    p, want = env["prompt"], env["want"]
    errors: list[str] = []
    answered = {"tool": 0, "a": 0, "b": 0}
    stop = threading.Event()
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)

            def traffic(model: str, expect: list[int], fp: str) -> None:
                cl = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
                while not stop.is_set():
                    try:
                        got = _ids(cl, model, p)
                    except Exception as e:  # noqa: BLE001 - every failure is a lost request
                        errors.append(f"{model}: {e!r}")
                        continue
                    if got != (expect, fp):
                        errors.append(f"{model} answered by {got}")
                    answered[model] += 1

            threads = [threading.Thread(target=traffic, args=a) for a in
                       (("tool", want["base"], "base:tool"), ("a", want["a"], "lora:a"),
                        ("tool", want["base"], "base:tool"), ("a", want["a"], "lora:a"))]
            for t in threads:
                t.start()
            url = srv.url
            for path, expect in ((env["adapters"]["b"], want["b"]), (env["adapters"]["c"], want["c"])):
                r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "b", "lora_path": str(path)})
                assert r.status_code == 200, r.text
                for _ in range(3):
                    assert _ids(c, "b", p) == (expect, "lora:b")
                r = httpx.post(url + "/unload_lora_adapter", json={"lora_name": "b"})
                assert r.status_code == 200, r.text
                with pytest.raises(openai.NotFoundError):
                    c.completions.create(model="b", prompt=p, max_tokens=1)
            stop.set()
            for t in threads:
                t.join()
            r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "a", "lora_path": str(env["adapters"]["a"])})
            assert r.status_code == 400 and "already" in r.json()["error"]["message"]
            r = httpx.post(url + "/load_lora_adapter", json={"lora_name": "z", "lora_path": str(env["dir"])})
            assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
            r = httpx.post(url + "/unload_lora_adapter", json={"lora_name": "nope"})
            assert r.status_code == 404
    finally:
        stop.set()
        app.state.serve.close()
    assert not errors, errors[:5]
    assert answered["tool"] > 0 and answered["a"] > 0


def _trace(i: int, trace_id: str) -> dict:
    return {"request_id": f"req_{uuid.uuid4().hex}", "trace_id": trace_id, "endpoint": "chat.completions",
            "model": "m", "checkpoint_id": "base:m", "status": 200, "messages": [{"role": "user", "content": f"q{i}"}],
            "tools": None, "params": {"seed": i}, "choices": [{"index": 0, "message": {"content": "a"}}],
            "tool_calls": [], "prompt_tokens": 3, "completion_tokens": 1 + i, "latency_s": 0.5, "user": "u",
            "metadata": {"k": "v"}}


def test_traces_in_the_store(store_url, env):
    store = RunStore(store_url)
    store.record_traces([_trace(0, "conv-1"), _trace(1, "conv-1"), _trace(2, "conv-2")])
    conv = store.traces(trace_id="conv-1")
    assert [t["completion_tokens"] for t in conv] == [1, 2]
    assert conv[0]["metadata"] == {"k": "v"} and conv[0]["messages"][0]["content"] == "q0"
    assert len(store.traces(model="m")) == 3 and store.traces(limit=1)[0]["trace_id"] == "conv-1"
    # a served request lands in this store, keyed by the client's trace id
    cfg = ServeConfig(model=str(env["tool"]), model_name="tool", store=store_url, slots=2)
    app = create_app(cfg)
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            r = c.chat.completions.create(model="tool", messages=h.ONE, tools=h.TOOLS, temperature=0, max_tokens=40,
                                          extra_headers={"X-Trace-Id": "conv-3"}, user="ana", metadata={"team": "x"})
            app.state.serve.traces.flush()
    finally:
        app.state.serve.close()
    (t,) = RunStore(store_url).traces(trace_id="conv-3")
    assert t["model"] == "tool" and t["user"] == "ana" and t["metadata"] == {"team": "x"}
    assert t["prompt_tokens"] == r.usage.prompt_tokens and t["completion_tokens"] == r.usage.completion_tokens
    assert t["tool_calls"][0]["function"]["arguments"] == r.choices[0].message.tool_calls[0].function.arguments
    assert t["choices"][0]["finish_reason"] == "tool_calls" and t["tools"] == h.TOOLS


def test_checkpoints_of_a_training_run_served_while_the_server_runs(env, lookup_files, tmp_path):
    """A real `train` (LoRA, evals every step) writes checkpoints into the store of a server that is already running:
    each is listed and answers with exactly its own weights, without a restart."""
    import lookup_task
    from agentrft.config import parse_config
    from agentrft.rl.trainer import train

    cfg = parse_config({
        "name": "Served Run", "model": str(env["tool"]), "training_file": str(lookup_files["train"]),
        "validation_file": str(lookup_files["valid"]), "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER,
        "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "group_size": 2, "eval_interval": 1, "eval_samples": 1,
                            "max_new_tokens": 8, "max_turns": 2, "learning_rate": 5e-2, "seed": 1,
                            "keep_checkpoints": 3, "lora": {"r": 4, "alpha": 16}},
    }, base_dir=tmp_path)
    app = create_app(ServeConfig(model=str(env["tool"]), model_name="tool", store=cfg.store_url, slots=2))
    try:
        with BackgroundServer(app) as srv:
            c = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=120)
            assert [m.id for m in c.models.list().data] == ["tool"]
            run = train(cfg, progress=False)
            store = RunStore(cfg.store_url)
            kept = [k for k in store.checkpoints(run) if k["kept"]]
            assert len(kept) >= 2
            ids = [m.id for m in c.models.list().data]
            for k in kept:
                mid = f"ft:tool:served-run:{run}:ckpt-step-{k['step']}"
                assert mid in ids
                got, fp = _ids(c, mid, env["prompt"])
                assert fp == k["id"]
                assert got == h.greedy_ids(k["path"], env["prompt"], N)
            assert f"ft:tool:served-run:{run}" in ids
    finally:
        app.state.serve.close()
