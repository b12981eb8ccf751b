"""OpenAI's fine-tuning jobs API and alpha graders API on the model server (issue 16); see docs/openai-api.md.

``mount_fine_tuning(app, state, body_as)`` adds, on the server's app (same auth, limits and error objects):

* the files API (serve/files.py);
* ``POST /v1/fine_tuning/jobs`` — validates everything at once (model in the allow-list, files as datasets,
  grader, hyperparameters; 400 naming the field or line), creates the job's run in the store and queues it;
* ``GET /v1/fine_tuning/jobs`` (``after``, ``limit``, ``metadata[k]=v``), ``GET …/{id}``, ``POST …/{id}/cancel``,
  ``…/pause``, ``…/resume``, ``GET …/{id}/events`` (``after``, ``limit``), ``GET …/{id}/checkpoints``;
* ``POST /v1/fine_tuning/alpha/graders/run`` and ``/validate``, answering as ``agentrft grade run|validate``;
* on startup (uvicorn's lifespan), ``jobs.workers`` worker processes (serve/job_worker.py), restarted if they die.

Jobs run in worker processes, never in the server: the server only writes job rows and reads the store.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict

from agentrft import bounded
from agentrft.serve.errors import APIError, query_limit
from agentrft.serve.job_spec import Source, bad, check_body, method_of, reinforcement_spec, supervised_spec
from agentrft.serve.job_views import checkpoint_objects, job_events, job_object, page
from agentrft.serve.jobs_config import data_dir
from agentrft.store.jobs import TERMINAL


class _AnyBody(BaseModel):
    model_config = ConfigDict(extra="allow")


def resolve_source(state: Any, model: str) -> Source:
    """The weights a job named ``model`` starts from: the served base, an allow-listed model, or a kept checkpoint
    of the served base (``ft:…``, e.g. a supervised job's output); anything else is a 400 naming ``model``."""
    mgr = state.manager
    allow = list(state.cfg.jobs.allow_models)
    if model == mgr.base_id or model == mgr.base_path:
        return Source(model, mgr.base_path, mgr.base_path, mgr.base_id)
    if model in allow:
        local = Path(model).expanduser()
        path = str(local.resolve()) if local.exists() else model
        return Source(model, path, path, Path(model.rstrip("/")).name)
    if model.startswith("ft:"):
        found = mgr._checkpoint_for(model)
        if found is None:
            raise bad(f"model {model!r}: no such fine-tuned model or checkpoint of {mgr.base_id} on this server",
                      "model", code="model_not_available")
        _, path = found
        if (Path(path) / "adapter_config.json").exists():
            raise bad(f"model {model!r} is a LoRA checkpoint; continuing training from an adapter is not supported "
                      "yet — train the first job with hyperparameters.agentrft.lora = null, or start from "
                      f"{mgr.base_id}", "model", code="model_not_available")
        return Source(model, path, mgr.base_path, mgr.base_id, full_checkpoint=True)
    names = [mgr.base_id, *allow]
    raise bad(f"model {model!r} is not available for fine-tuning on this server (allowed: {', '.join(names)}, or "
              f"an ft: model of {mgr.base_id})", "model", code="model_not_available")


def create_job(state: Any, body: dict) -> dict:
    store = state.store
    check_body(body)
    mtype, sub = method_of(body)
    src = resolve_source(state, body["model"])
    files = {}
    for key in ("training_file", "validation_file"):
        fid = body.get(key)
        if fid is None:
            continue
        f = store.get_file(fid)
        if f is None:
            raise bad(f"{key}: no file {fid!r} on this server (upload it with POST /v1/files)", key,
                      code="invalid_file")
        if f["purpose"] != "fine-tune":
            raise bad(f"{key}: file {fid} has purpose {f['purpose']!r}, not 'fine-tune'", key, code="invalid_file")
        files[key] = f
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    job_id = f"ftjob-{secrets.token_hex(12)}"
    name = body.get("suffix") or job_id
    root = data_dir(state.cfg.jobs, state.cfg.store)
    out_dir = str(root / "runs")
    integrations = body.get("integrations") or []
    if mtype == "reinforcement":
        spec = reinforcement_spec(sub, src, files["training_file"], files.get("validation_file"), seed=seed,
                                  store_url=store.url, output_dir=out_dir, name=name, integrations=integrations)
    else:
        spec = supervised_spec(sub, src, files["training_file"], files.get("validation_file"), seed=seed,
                               output_dir=out_dir, integrations=integrations)
    run_cfg = spec.config.get("run_config") or {"name": name, "model": src.path, "supervised": spec.config}
    run_id = store.create_run(name, run_cfg, base_model=src.base_model, output_dir=out_dir)
    store.create_job(job_id, status="validating_files", model=body["model"], base_model=src.base_model,
                     served_base=src.served_base, method_type=mtype, method=spec.method,
                     hyperparameters=spec.hyperparameters, config=spec.config, training_file=body["training_file"],
                     validation_file=body.get("validation_file"), suffix=body.get("suffix"), seed=seed,
                     metadata=body.get("metadata") or {}, integrations=integrations, run_id=run_id,
                     total_steps=spec.total_steps)
    store.add_job_event(job_id, f"Validating training file: {body['training_file']}"
                        + (f" and validation file: {body['validation_file']}" if body.get("validation_file") else ""))
    for w in spec.warnings:
        store.add_job_event(job_id, w, level="warn")
    store.add_job_event(job_id, f"Files validated; {mtype} job queued ({spec.total_steps} steps, run {run_id})",
                        data={"run_id": run_id, "total_steps": spec.total_steps, "config": spec.config})
    store.update_job(job_id, expect_status=("validating_files",), status="queued")
    return store.get_job(job_id)


def mount_fine_tuning(app: FastAPI, state: Any, body_as: Any) -> None:
    from agentrft.serve.files import mount_files

    cfg = state.cfg
    root = data_dir(cfg.jobs, cfg.store)
    mount_files(app, state, root / "files")

    def store() -> Any:
        if state.store is None:
            raise APIError(400, "this server has no store (start it with --store) so it runs no fine-tuning jobs",
                           code="no_store")
        return state.store

    def get(job_id: str) -> dict:
        j = store().get_job(job_id)
        if j is None:
            raise APIError(404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id",
                           code="fine_tuning_job_not_found")
        return j

    async def body_dict(request: Request) -> dict:
        b = await body_as(request, _AnyBody)
        return b.model_dump()

    @app.post("/v1/fine_tuning/jobs")
    async def create(request: Request) -> dict:
        st = store()
        body = await body_dict(request)
        job = await asyncio.to_thread(create_job, state, body)
        return job_object(st, job)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request) -> dict:
        st = store()
        md = {k[len("metadata["):-1]: v for k, v in request.query_params.items()
              if k.startswith("metadata[") and k.endswith("]")}
        jobs, more = await asyncio.to_thread(st.list_jobs, after=request.query_params.get("after"),
                                             limit=query_limit(request, 20), metadata=md or None)
        data = [job_object(st, j) for j in jobs]
        return {"object": "list", "data": data, "has_more": more}

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def retrieve(job_id: str) -> dict:
        return job_object(store(), get(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel(job_id: str) -> dict:
        st = store()
        j = get(job_id)
        if j["status"] in TERMINAL:
            raise APIError(400, f"job {job_id} is already {j['status']}", param="fine_tuning_job_id",
                           code="invalid_state")
        now = time.time()
        # a job no worker holds is cancelled here; a running one is stopped by its worker at the next step
        if st.update_job(job_id, expect_status=("validating_files", "queued", "paused"), status="cancelled",
                         control=None, finished_at=now):
            st.add_job_event(job_id, "Job cancelled")
            _cancel_run(st, j)
            # off the event loop: a slow receiver (10 s timeout) must not stall every other request of the server
            await asyncio.to_thread(notify_terminal, state, job_id)
        else:
            st.update_job(job_id, expect_status=("running", "pausing"), control="cancel")
            st.add_job_event(job_id, "Cancellation requested; the worker stops the job after its current step")
            # report it as OpenAI does: a cancelled job at once (the worker finishes the transition)
            st.update_job(job_id, expect_status=("running", "pausing"), status="cancelled", finished_at=now)
        return job_object(st, get(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause(job_id: str) -> dict:
        st = store()
        j = get(job_id)
        if j["method_type"] == "supervised":
            raise APIError(400, "supervised jobs cannot be paused here (they have no resumable state); cancel it "
                           "instead", param="fine_tuning_job_id", code="invalid_state")
        if st.update_job(job_id, expect_status=("queued",), status="paused", control=None):
            st.add_job_event(job_id, "Job paused before it started")
        elif st.update_job(job_id, expect_status=("running",), status="pausing", control="pause"):
            st.add_job_event(job_id, "Pause requested; the worker saves a checkpoint after its current step")
        else:
            raise APIError(400, f"job {job_id} is {j['status']}; only queued or running jobs can be paused",
                           param="fine_tuning_job_id", code="invalid_state")
        return job_object(st, get(job_id))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume(job_id: str) -> dict:
        st = store()
        j = get(job_id)
        if not st.update_job(job_id, expect_status=("paused",), status="queued", control=None):
            raise APIError(400, f"job {job_id} is {j['status']}; only paused jobs can be resumed",
                           param="fine_tuning_job_id", code="invalid_state")
        st.add_job_event(job_id, "Job resumed; queued for a worker")
        return job_object(st, get(job_id))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> dict:
        st = store()
        j = get(job_id)
        evs = await asyncio.to_thread(job_events, st, j)
        return page(list(reversed(evs)), request.query_params.get("after"), query_limit(request, 20))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(job_id: str, request: Request) -> dict:
        st = store()
        j = get(job_id)
        cks = await asyncio.to_thread(checkpoint_objects, st, j)
        return page(cks, request.query_params.get("after"), query_limit(request, 10))

    # ---- graders (as `agentrft grade`) --------------------------------------------------------------------
    @app.post("/v1/fine_tuning/alpha/graders/validate")
    async def grader_validate(request: Request) -> dict:
        body = await body_dict(request)
        return await asyncio.to_thread(validate_grader, body)

    @app.post("/v1/fine_tuning/alpha/graders/run")
    async def grader_run(request: Request) -> dict:
        body = await body_dict(request)
        return await asyncio.to_thread(run_grader, body)

    # ---- worker processes -----------------------------------------------------------------------------------
    if cfg.jobs.workers > 0 and cfg.store:
        from agentrft.serve.job_worker import WorkerPool

        pool = WorkerPool(cfg)
        app.router.on_startup.append(pool.start)  # uvicorn's lifespan (agentrft serve); not in-process test servers
        app.router.on_shutdown.append(pool.stop)
        app.state.job_workers = pool


def _cancel_run(st: Any, job: dict) -> None:
    if job.get("run_id"):
        try:
            st.set_status(job["run_id"], "cancelled")
        except Exception:  # noqa: BLE001 - the run row is informational here
            pass


def notify_terminal(state: Any, job_id: str) -> None:
    from agentrft.serve.job_worker import send_webhook

    send_webhook(state.cfg.jobs, state.store, job_id)


# ---------------------------------------------------------------------------------------------------------------
def validate_grader(body: dict) -> dict:
    """``{"grader"}`` → ``{"grader", "type", "name", "version", "valid": true}``, or 400 naming what is wrong — the
    answer of ``agentrft grade validate``."""
    from agentrft.graders.base import GraderSpecError, build_grader

    spec = body.get("grader")
    if not isinstance(spec, dict):
        raise APIError(400, "Missing required parameter: 'grader' (an OpenAI grader object)", param="grader")
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        raise APIError(400, f"grader: {e}", param="grader", code="invalid_grader") from None
    out = {"valid": True, "type": g.type, "name": g.name, "version": g.version, "grader": spec}
    g.close()
    return out


def run_grader(body: dict) -> dict:
    """``{"grader", "model_sample", "item"}`` → OpenAI's graders/run answer, made by the same functions as
    ``agentrft grade run`` (``normalize_sample``, ``run_output``, ``spec_error_output``)."""
    from agentrft.graders.base import GraderSpecError, build_grader
    from agentrft.graders.answers import normalize_sample, run_output, spec_error_output

    spec = body.get("grader")
    if not isinstance(spec, dict):
        raise APIError(400, "Missing required parameter: 'grader' (an OpenAI grader object)", param="grader")
    item = body.get("item", {})
    if item is None:
        item = {}
    if not isinstance(item, dict):
        raise APIError(400, f"item must be an object, got {type(item).__name__}", param="item")
    if "reference_answer" in body and "reference_answer" not in item:
        item = {**item, "reference_answer": body["reference_answer"]}
    if "model_sample" not in body:
        raise APIError(400, "Missing required parameter: 'model_sample'", param="model_sample")
    raw = body["model_sample"]
    if isinstance(raw, str):
        try:  # the SDK sends a string; a JSON object in it is a sample object, as `agentrft grade run` reads one
            parsed = bounded.loads_json(raw)
            raw = parsed if isinstance(parsed, dict) else raw
        except ValueError:  # not JSON, or nested past the bound (a BoundsError): graded as the plain text it is
            pass
    try:
        sample = normalize_sample(raw)
    except ValueError as e:
        raise APIError(400, str(e), param="model_sample") from None
    try:
        g = build_grader(spec)
    except GraderSpecError as e:
        return spec_error_output(spec, e)
    try:
        grade = g.grade(sample, item, trace_id=body.get("trace_id"))
    finally:
        g.close()
    return run_output(g, grade)
