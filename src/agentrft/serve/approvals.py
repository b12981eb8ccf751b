"""Human approval of tool calls in production (issue 17; docs/flywheel.md).

A served model's chat answer that calls a tool declared ``requires_approval`` (serve config ``tools:``, or the run
config's tool entries) is *held*: each such call is queued in the store's ``approvals`` table, and the client gets
the call only after a person approved it. Shape of the answer (``POST /v1/chat/completions``, non-streamed):

* the request waits up to ``approvals.wait_s`` for every decision (read from the store every ``poll_s``, so a
  decision from ``agentrft approvals``, ``agentrft ui`` or ``/v1/approvals`` in any process counts);
* **all decided** → ``200``, an ordinary ``chat.completion``: approved calls are in ``message.tool_calls`` as the
  model wrote them; a denied call is removed and ``message.refusal`` says which call was denied, by whom and why
  (the field OpenAI clients already show for refusals); a choice left with no calls ends ``finish_reason: "stop"``;
* **not decided in time** → ``202`` with the same ``chat.completion`` object and ``"status": "pending_approval"``;
  a held choice carries no tool calls yet (``finish_reason: "pending_approval"``). The client polls
  ``GET /v1/chat/completions/{id}`` (the SDK's ``chat.completions.retrieve``): ``202`` while pending, then ``200``
  with the decided answer as above. Held answers live in the server's memory for ``approvals.keep_s``.

Every answer that involved approvals lists them at the top level, ``"approvals": [{id, choice, tool_call_id,
tool_name, arguments, status, decided_by, decided_at, reason}]``; the store keeps who decided and when.
This follows the shape of OpenAI's MCP approval requests in the Responses API (an approval item with an id and the
call's name and arguments, answered approve/deny with a reason), adapted to chat completions, whose clients run
tools themselves: the held thing is the tool call returned to the client, not a call the server would make.

``/v1/approvals`` (``GET`` list, ``GET /{id}``, ``POST /{id}/approve``, ``POST /{id}/deny``) decides over HTTP.
A streamed request that offers a tool needing approval is generated whole and held the same way, then sent as
server-sent events (the decided answer, or the pending one with ``finish_reason: "pending_approval"``; no
``logprobs``): a stream must not send a call token by token before its decision.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agentrft.serve.approvals_config import approval_tool_names
from agentrft.serve.errors import APIError, query_limit

PENDING = "pending_approval"


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decided_by: str = Field(..., min_length=1, max_length=200, description="who decides (recorded)")
    reason: str = Field("", max_length=4000)


def refusal_text(a: dict) -> str:
    """What a client shows for a denied call."""
    why = f": {a['reason']}" if a.get("reason") else ""
    return f"The call to {a['tool_name']}({a['arguments']}) was denied by {a.get('decided_by') or '?'}{why}"


class ApprovalHold:
    """Holds answers whose tool calls need a person's approval, and renders them as decided so far."""

    def __init__(self, store: Any, cfg: Any):
        from agentrft.config import ConfigError

        self.tools = approval_tool_names(cfg.tools)
        self.settings = cfg.approvals
        self.store = store
        if self.tools and store is None:
            raise ConfigError(f"tools {sorted(self.tools)} require approval, which needs a store (the approval "
                              "queue lives there): set store in the serve config or --store")
        self.held: dict[str, dict] = {}  # completion id -> {"body", "calls": [(choice, call, approval id)], "at"}
        self.by_approval: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.tools)

    def holds(self, tools: list[dict] | None) -> bool:
        """Whether a request offering ``tools`` may be held (a streamed one is then generated whole first)."""
        return bool({t.get("function", {}).get("name") for t in tools or []} & self.tools)

    def as_stream(self, body: dict, req: Any, headers: dict[str, str]) -> StreamingResponse:
        """A decided (or pending) answer as server-sent events, the way a stream ends: per choice the role, the
        content, the refusal and each tool call whole (one delta each), then ``finish_reason``; the last chunk
        also carries ``approvals`` (and ``status`` while pending); usage when asked for; ``[DONE]``."""
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        base = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"

        def chunk(choices: list[dict], **extra: Any) -> bytes:
            out = {**base, "choices": choices, **extra}
            if include_usage:
                out.setdefault("usage", None)
            return f"data: {json.dumps(out, ensure_ascii=False)}\n\n".encode()

        def events() -> Any:
            for ch in body["choices"]:
                i, msg = ch["index"], ch["message"]
                deltas = [{"role": "assistant", "content": ""}]
                if msg.get("content"):
                    deltas.append({"content": msg["content"]})
                if msg.get("refusal"):
                    deltas.append({"refusal": msg["refusal"]})
                for k, call in enumerate(msg.get("tool_calls") or []):
                    deltas.append({"tool_calls": [{"index": k, **call}]})
                for d in deltas:
                    yield chunk([{"index": i, "delta": d, "logprobs": None, "finish_reason": None}])
                yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": ch["finish_reason"]}])
            extra = {"approvals": body.get("approvals", [])}
            if "status" in body:
                extra["status"] = body["status"]
            yield chunk([], **extra, **({"usage": body["usage"]} if include_usage else {}))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})

    # ---- the hold ---------------------------------------------------------------------------------------
    async def hold(self, request: Request, body: dict, choices: list[dict], trace_id: str) -> tuple[dict, int]:
        """``(answer, HTTP status)`` for a chat completion ``body``; its ``choices`` (the trace's) get an
        ``approvals`` list naming the queued calls."""
        calls = [(c["index"], call) for c in choices for call in c["message"].get("tool_calls") or []
                 if call["function"]["name"] in self.tools]
        route = getattr(request.state, "deploy_route", None)
        if not calls or getattr(route, "arm", None) == "shadow":  # a shadow answer reaches no one: nothing to hold
            return body, 200
        original = copy.deepcopy(body)
        queued = []
        for idx, call in calls:
            aid = await asyncio.to_thread(self.store.enqueue_approval, trace_id[:100], call["function"]["name"],
                                          call["function"]["arguments"])
            queued.append((idx, call["id"], aid))
            choices[idx].setdefault("approvals", []).append({"id": aid, "tool_call_id": call["id"],
                                                             "tool_name": call["function"]["name"]})
        with self._lock:
            self._expire()
            self.held[body["id"]] = {"body": original, "calls": queued, "at": time.monotonic()}
            for _, _, aid in queued:
                self.by_approval[aid] = body["id"]
        decisions = await self.wait([aid for _, _, aid in queued], request)
        return self.render(original, queued, decisions)

    async def wait(self, ids: list[int], request: Request | None) -> dict[int, dict]:
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            decisions = await asyncio.to_thread(self.decisions, ids)
            if all(d["status"] != "pending" for d in decisions.values()) or time.monotonic() >= deadline:
                return decisions
            if request is not None and await request.is_disconnected():
                return decisions  # nobody is waiting; the held answer stays retrievable
            await asyncio.sleep(min(self.settings.poll_s, max(0.0, deadline - time.monotonic())))

    def decisions(self, ids: list[int]) -> dict[int, dict]:
        out = {}
        for aid in ids:
            a = self.store.get_approval(aid)
            out[aid] = a if a is not None else {"id": aid, "status": "pending"}
        return out

    def render(self, original: dict, queued: list[tuple[int, str, int]], decisions: dict[int, dict]
               ) -> tuple[dict, int]:
        """The answer as decided so far: 202 with held choices emptied while any call is pending; else 200 with
        denied calls removed and explained in ``refusal``."""
        body = copy.deepcopy(original)
        pending = any(decisions[aid]["status"] == "pending" for _, _, aid in queued)
        by_call = {(idx, cid): decisions[aid] for idx, cid, aid in queued}
        held_choices = {idx for idx, _, _ in queued}
        for ch in body["choices"]:
            idx = ch["index"]
            if idx not in held_choices:
                continue
            msg = ch["message"]
            if pending:
                msg.pop("tool_calls", None)
                ch["finish_reason"] = PENDING
                continue
            kept, refusals = [], []
            for call in msg.get("tool_calls") or []:
                d = by_call.get((idx, call["id"]))
                if d is not None and d["status"] == "denied":
                    refusals.append(refusal_text(d))
                else:
                    kept.append(call)
            if kept:
                msg["tool_calls"] = kept
            else:
                msg.pop("tool_calls", None)
                ch["finish_reason"] = "stop"
            if refusals:
                msg["refusal"] = "\n".join(refusals)
        body["approvals"] = [{"id": aid, "choice": idx, "tool_call_id": cid, **_public(decisions[aid])}
                             for idx, cid, aid in queued]
        if pending:
            body["status"] = PENDING
        return body, 202 if pending else 200

    def retrieve(self, completion_id: str) -> tuple[dict, int]:
        with self._lock:
            self._expire()
            rec = self.held.get(completion_id)
        if rec is None:
            raise APIError(404, f"no held chat completion {completion_id!r} on this server (only answers held for "
                           f"approval are kept, in memory, for approvals.keep_s = {self.settings.keep_s:g} s)",
                           param="completion_id", code="completion_not_found")
        decisions = self.decisions([aid for _, _, aid in rec["calls"]])
        return self.render(rec["body"], rec["calls"], decisions)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.settings.keep_s
        for cid in [c for c, r in self.held.items() if r["at"] < cutoff]:
            for _, _, aid in self.held.pop(cid)["calls"]:
                self.by_approval.pop(aid, None)


def _public(a: dict) -> dict:
    return {k: a.get(k) for k in ("tool_name", "arguments", "status", "decided_by", "decided_at", "reason")}


def approval_object(a: dict, hold: ApprovalHold | None) -> dict:
    out = {"object": "approval", **a}
    if hold is not None and a["id"] in hold.by_approval:
        out["completion_id"] = hold.by_approval[a["id"]]
    return out


# ---- /v1/approvals and GET /v1/chat/completions/{id} ---------------------------------------------------------
def mount_approvals(app: FastAPI, state: Any, body_as: Any) -> None:
    hold: ApprovalHold = state.approvals

    def store() -> Any:
        if state.store is None:
            raise APIError(503, "this server has no store, so it has no approval queue (start it with --store URL)",
                           code="no_store")
        return state.store

    def approval_id(raw: str) -> int:
        try:
            return int(raw)
        except ValueError:
            raise APIError(400, f"approval id {raw!r} is not an integer", param="approval_id") from None

    def get(aid: int) -> dict:
        a = store().get_approval(aid)
        if a is None:
            raise APIError(404, f"no approval request {aid}", param="approval_id", code="approval_not_found")
        return a

    @app.get("/v1/approvals")
    async def list_approvals(request: Request) -> dict:
        status = request.query_params.get("status", "pending")
        if status not in ("pending", "approved", "denied", "all"):
            raise APIError(400, f"status must be pending, approved, denied or all; got {status!r}", param="status")
        limit = query_limit(request, 200)
        rows = await asyncio.to_thread(store().list_approvals, None if status == "all" else status, limit=limit)
        return {"object": "list", "data": [approval_object(a, hold) for a in rows]}

    @app.get("/v1/approvals/{aid}")
    async def get_approval(aid: str) -> dict:
        return approval_object(await asyncio.to_thread(get, approval_id(aid)), hold)

    async def decide(request: Request, aid: str, decision: str) -> dict:
        n = approval_id(aid)
        body: DecisionBody = await body_as(request, DecisionBody)
        if decision == "denied" and not body.reason.strip():
            raise APIError(400, "reason: say why the call is denied (the client shows it)", param="reason")
        from agentrft.store import StoreError

        def run() -> dict:
            get(n)
            try:
                return store().decide_approval(n, decision, decided_by=body.decided_by, reason=body.reason)
            except StoreError as e:
                raise APIError(409, str(e), param="approval_id", code="approval_already_decided") from None
            except ValueError as e:
                raise APIError(400, str(e), param="decided_by") from None

        return approval_object(await asyncio.to_thread(run), hold)

    @app.post("/v1/approvals/{aid}/approve")
    async def approve(request: Request, aid: str) -> dict:
        return await decide(request, aid, "approved")

    @app.post("/v1/approvals/{aid}/deny")
    async def deny(request: Request, aid: str) -> dict:
        return await decide(request, aid, "denied")

    @app.get("/v1/chat/completions/{completion_id}")
    async def retrieve_completion(completion_id: str) -> JSONResponse:
        body, status = await asyncio.to_thread(hold.retrieve, completion_id)
        return JSONResponse(body, status_code=status)

