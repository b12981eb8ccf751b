"""User feedback on served answers: ``POST /v1/feedback`` and ``GET /v1/feedback`` (issue 17; docs/flywheel.md).

``mount_feedback(app, state, body_as)`` adds, behind the server's auth, limits and OpenAI-shaped errors:

* ``POST /v1/feedback {trace_id, score | label, comment?, request_id?, actor?}`` — one verdict on a served
  conversation (the ``X-Trace-Id`` of its answers), written with ``RunStore.add_feedback``. A ``trace_id`` (or a
  ``request_id`` of it) the store has never served is a 404 naming the field: feedback on nothing is refused,
  not kept as an orphan. Answers the stored row as ``{"object": "feedback", ...}``.
* ``GET /v1/feedback?trace_id=&limit=`` — the stored feedback, oldest first (the newest ``limit`` rows).

Feedback is read back by ``agentrft traces export`` (filters and reference fields) and by deployment KPIs.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentrft.serve.errors import APIError, query_limit


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trace_id: str = Field(..., min_length=1, max_length=200)
    score: Any = None  # checked below: one clear message rather than a union's two
    label: str | None = Field(None, min_length=1, max_length=200)
    comment: str = Field("", max_length=20000)
    request_id: str | None = Field(None, min_length=1, max_length=100)
    actor: str = Field("", max_length=200)

    @field_validator("score")
    @classmethod
    def _finite(cls, v: Any) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"must be a finite number, got {v!r}")
        return float(v)


def _store(state: Any) -> Any:
    if state.store is None:
        raise APIError(503, "this server has no store, so it keeps no feedback (start it with --store URL)",
                       code="no_store")
    return state.store


def add_feedback(state: Any, body: FeedbackBody) -> dict:
    """Check the conversation exists (after the server's pending trace writes land), then store the verdict."""
    store = _store(state)
    if body.score is None and body.label is None:
        raise APIError(400, "give a score (a number) or a label (a string), or both", param="score")
    if state.traces is not None:
        state.traces.flush()  # an answer's trace is written on a background thread: feedback may follow at once
    served = store.traces(trace_id=body.trace_id)
    if not served:
        raise APIError(404, f"no served conversation with trace_id {body.trace_id!r} on this server's store",
                       param="trace_id", code="trace_not_found")
    if body.request_id is not None and body.request_id not in {t["request_id"] for t in served}:
        raise APIError(404, f"request_id {body.request_id!r} is not a request of trace {body.trace_id!r}",
                       param="request_id", code="request_not_found")
    try:
        row = store.add_feedback(body.trace_id, score=body.score, label=body.label, comment=body.comment,
                                 actor=body.actor, request_id=body.request_id)
    except ValueError as e:  # the store's own checks, in case they are stricter than the body's
        raise APIError(400, str(e)) from None
    return {"object": "feedback", **row}


def mount_feedback(app: FastAPI, state: Any, body_as: Any) -> None:
    @app.post("/v1/feedback")
    async def post_feedback(request: Request) -> dict:
        body: FeedbackBody = await body_as(request, FeedbackBody)
        return await asyncio.to_thread(add_feedback, state, body)

    @app.get("/v1/feedback")
    async def list_feedback(request: Request) -> dict:
        store = _store(state)
        trace_id = request.query_params.get("trace_id")
        limit = query_limit(request, 100)
        rows = await asyncio.to_thread(store.feedback, trace_ids=[trace_id] if trace_id else None)
        rows = rows[-limit:]
        return {"object": "list", "data": [{"object": "feedback", **r} for r in rows]}
