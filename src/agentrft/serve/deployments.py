"""Deployments on the model server: a deployment's name is a model id clients call; behind it production and a
candidate, split by the deployment's mode; the ``/v1/deployments`` API; the rollout controller's thread.

Routing a request to deployment ``d`` (``model: "support-agent"``):

* ``full`` (and after a rollback): production answers; the trace is ``arm=production``.
* ``canary`` at weight ``w``: ``u = U(d, key)`` (a number in [0, 1) from sha256 of the deployment's name and the
  conversation's key: ``X-Trace-Id``, else ``user``, else the request itself); the candidate answers when
  ``u < w``. The key fixes ``u``, so a conversation stays on its arm while ``w`` is unchanged, and as ``w`` grows
  conversations only move production → candidate, never back.
* ``shadow``: production answers and is returned; when ``U(d, "shadow" + key) < shadow_fraction`` the same request
  is answered by the candidate too, afterwards, on a bounded background queue (``SHADOW_CONCURRENCY`` at a time,
  at most ``SHADOW_QUEUE`` waiting; beyond that a shadow request is dropped and counted), through this same app in
  process, recorded as ``arm=shadow`` and never returned to anyone.

A candidate answer that finishes after its candidate was withdrawn (rolled back while it was generating) is not
returned: the request is answered again by production (non-streaming requests; a stream already started ends on
the arm it started on). Every trace carries ``deployment`` and ``arm``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agentrft.gate import rollout as ro
from agentrft.serve.errors import APIError

log = logging.getLogger("agentrft.serve.deployments")

SHADOW_HEADER = "X-Agentrft-Shadow"
SHADOW_CONCURRENCY = 2
SHADOW_QUEUE = 32
TICK_S = 0.5


@dataclass
class Route:
    deployment: str
    arm: str  # production | candidate | shadow
    model_ref: str  # what the model manager resolves
    shadow_ref: str | None = None  # also ask the candidate (shadow mode), afterwards


class CreateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    production: str
    candidate: str | None = None
    mode: str = "shadow"
    policy: dict[str, Any] | None = None
    shadow_fraction: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    weight: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = ""


class Deployments:
    """The server's deployments: routing, shadow traffic, the API's operations and the controller."""

    def __init__(self, app: FastAPI, st: Any, *, interval_s: float = TICK_S):
        self.app, self.st, self.store = app, st, st.store
        self.secret = secrets.token_hex(16)  # marks the server's own shadow requests (never leaves the process)
        self._deps: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.shadow_sent = self.shadow_dropped = self.shadow_failed = self.recalled = 0
        self._shadow_sem: asyncio.Semaphore | None = None
        self._shadow_waiting = 0
        self._tasks: set[asyncio.Task] = set()
        self.refresh(self.store.list_deployments())
        self.controller = ro.RolloutController(self.store, interval_s=interval_s, on_change=self.refresh).start()

    def close(self) -> None:
        self.controller.close()

    # ---- state ---------------------------------------------------------------------------------------------
    def refresh(self, deps: list[dict]) -> None:
        with self._lock:
            self._deps = {d["name"]: d for d in deps}

    def get(self, name: str) -> dict | None:
        with self._lock:
            return self._deps.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._deps)

    def models(self) -> list[dict]:
        """``/v1/models`` entries for the deployments."""
        created = int(time.time())
        with self._lock:
            deps = list(self._deps.values())
        return [{"id": d["name"], "object": "model", "created": created, "owned_by": "agentrft", "parent": None,
                 "deployment": {"mode": d["mode"], "weight": d["weight"], "status": d["status"],
                                "production": d["production"], "candidate": d["candidate"]}} for d in deps]

    # ---- routing -------------------------------------------------------------------------------------------
    def route(self, request: Request, model: str, user: str | None) -> Route | None:
        dep = self.get(model)
        if dep is None:
            return None
        if request.headers.get(SHADOW_HEADER):
            if not secrets.compare_digest(request.headers[SHADOW_HEADER].encode(), self.secret.encode()):
                raise APIError(403, f"{SHADOW_HEADER} is for the server's own shadow requests", code="forbidden")
            if not dep["candidate"]:
                raise APIError(409, f"deployment {model!r} has no candidate any more", code="shadow_withdrawn")
            return Route(dep["name"], "shadow", dep["candidate"])
        key = (request.headers.get("X-Trace-Id") or "").strip() or user or secrets.token_hex(8)
        name = dep["name"]
        if dep["candidate"] and dep["mode"] == "canary" and ro._unit(f"{name}\x00{key}") < dep["weight"]:
            return Route(name, "candidate", dep["candidate"])
        shadow = None
        if dep["candidate"] and dep["mode"] == "shadow" and ro._unit(f"shadow\x00{name}\x00{key}") < \
                dep["shadow_fraction"]:
            shadow = dep["candidate"]
        return Route(name, "production", dep["production"], shadow)

    async def serve(self, request: Request, model: str, user: str | None, body: dict,
                    run: Callable[[str], Awaitable[Any]]) -> Any:
        """Answer a request to ``model``: directly when it is no deployment, else on its arm (``run(model_ref)``
        produces the response); then the shadow request, if any."""
        route = self.route(request, model, user)
        request.state.deploy_route = route
        if route is None:
            return await run(model)
        resp = await run(route.model_ref)
        if route.arm == "candidate" and not isinstance(resp, StreamingResponse):
            dep = await asyncio.to_thread(self.store.get_deployment, route.deployment)  # the store, not the cache
            withdrawn = dep is None or dep["candidate"] != route.model_ref or dep["mode"] != "canary"
            if withdrawn and not (dep is not None and dep["production"] == route.model_ref):  # (not: it went full)
                self.recalled += 1
                route = Route(route.deployment, "production", dep["production"] if dep else route.model_ref)
                request.state.deploy_route = route
                resp = await run(route.model_ref)
        if route.shadow_ref:
            self._shadow(request, body)
        return resp

    # ---- shadow traffic ------------------------------------------------------------------------------------
    def _shadow(self, request: Request, body: dict) -> None:
        if self._shadow_waiting >= SHADOW_QUEUE:
            self.shadow_dropped += 1
            return
        if self._shadow_sem is None:
            self._shadow_sem = asyncio.Semaphore(SHADOW_CONCURRENCY)
        headers = {SHADOW_HEADER: self.secret}
        for h in ("authorization", "x-trace-id"):
            if request.headers.get(h):
                headers[h] = request.headers[h]
        body = {**body, "stream": False}
        body.pop("stream_options", None)
        self._shadow_waiting += 1
        task = asyncio.get_running_loop().create_task(self._send_shadow(request.url.path, body, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_shadow(self, path: str, body: dict, headers: dict) -> None:
        import httpx

        try:
            async with self._shadow_sem:  # type: ignore[union-attr]
                self._shadow_waiting -= 1
                transport = httpx.ASGITransport(app=self.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://shadow") as client:
                    r = await client.post(path, json=body, headers=headers, timeout=600)
                self.shadow_sent += 1
                if r.status_code != 200:
                    self.shadow_failed += 1
        except Exception:  # noqa: BLE001 - a failed shadow request is counted and logged, never the client's problem
            self.shadow_failed += 1
            log.exception("shadow request failed")

    async def drain(self, timeout: float = 60.0) -> None:
        """Wait for the shadow requests in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    # ---- API operations ------------------------------------------------------------------------------------
    def check_ref(self, ref: str, field: str) -> None:
        """404 unless the server can load ``ref`` (loads it now: a broken candidate fails here, not on traffic)."""
        if ref in self.names():
            raise APIError(400, f"{field}: {ref!r} is a deployment; name a model or checkpoint", param=field)
        try:
            target = self.st.manager.resolve(ref)
        except APIError as e:
            raise APIError(e.status, f"{field}: {e.message}", param=field, code=e.code) from None
        target.done()

    def create(self, req: CreateDeployment, actor: str) -> dict:
        mgr = self.st.manager
        if req.name == mgr.base_id or req.name in mgr.ALIASES or req.name.startswith("ft:") or \
                req.name in mgr.adapter_paths:
            raise APIError(400, f"name: {req.name!r} is a model id already", param="name")
        self.check_ref(req.production, "production")
        if req.candidate:
            self.check_ref(req.candidate, "candidate")
        dep = ro.create_deployment(self.store, req.name, production=req.production, candidate=req.candidate,
                                   mode=req.mode, policy=req.policy, shadow_fraction=req.shadow_fraction,
                                   weight=req.weight, actor=actor, source="policy")
        self.refresh(self.store.list_deployments())
        return dep


def _public(dep: dict) -> dict:
    out = {"object": "deployment", "id": dep["name"], **dep}
    state = dict(out.pop("state", {}) or {})
    state.pop("drift_window", None)
    out["state"] = state
    return out


def mount_deployments(app: FastAPI, st: Any, body_as: Any) -> Deployments | None:
    """``/v1/deployments`` and the router; None (and no routes) when the server has no store."""
    if st.store is None:
        return None
    dm = Deployments(app, st)
    st.deploy = dm

    def errors(fn: Callable[[], Any]) -> Any:
        from agentrft.gate.rollout_policy import RolloutPolicyError

        try:
            return fn()
        except ro.DeployError as e:
            raise APIError(e.status, str(e), param=e.param) from None
        except RolloutPolicyError as e:
            raise APIError(400, str(e), param="policy") from None

    async def step_body(request: Request) -> StepRequest:
        if request.headers.get("content-length") in (None, "0"):
            return StepRequest()
        return await body_as(request, StepRequest)

    def actor(request: Request) -> str:
        return (request.headers.get("X-Agentrft-Actor") or "api").strip()[:200]

    @app.get("/v1/deployments")
    async def list_deployments() -> dict:
        deps = await asyncio.to_thread(dm.store.list_deployments)
        return {"object": "list", "data": [_public(d) for d in deps]}

    @app.post("/v1/deployments")
    async def create(request: Request) -> dict:
        req: CreateDeployment = await body_as(request, CreateDeployment)
        dep = await asyncio.to_thread(errors, lambda: dm.create(req, actor(request)))
        return _public(dep)

    @app.get("/v1/deployments/{name}")
    async def get(name: str) -> dict:
        return _public(await asyncio.to_thread(errors, lambda: ro.status(dm.store, name)))

    @app.post("/v1/deployments/{name}/advance")
    async def advance(name: str, request: Request) -> dict:
        req = await step_body(request)
        dep = await asyncio.to_thread(errors, lambda: ro.advance(dm.store, name, actor=actor(request),
                                                                 reason=req.reason or "by hand (API)"))
        dm.refresh(await asyncio.to_thread(dm.store.list_deployments))
        return _public(dep)

    @app.post("/v1/deployments/{name}/rollback")
    async def rollback(name: str, request: Request) -> dict:
        req = await step_body(request)
        dep = await asyncio.to_thread(errors, lambda: ro.rollback(dm.store, name, actor=actor(request),
                                                                  reason=req.reason or "by hand (API)"))
        dm.refresh(await asyncio.to_thread(dm.store.list_deployments))
        return _public(dep)

    return dm
