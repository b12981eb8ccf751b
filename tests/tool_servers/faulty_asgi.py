"""ASGI middleware that injects HTTP 500s in front of a real tool server (e.g. make_tool_server(...)).

Attempt k (0-based) of a call_id fails iff ``flaky_fails(seed, call_id, k, p)`` — the same deterministic
schedule as the stdlib fault server — so a test can recompute, for every call the trainer made, how many
retries it must have recorded and whether its rollout must have been dropped.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

from tool_servers.faulty import flaky_fails


class FaultInjector:
    def __init__(self, app: Any, *, p: float, seed: int, fail_every: int = 0):
        """``fail_every=n`` (n > 0) also fails every attempt of every n-th distinct call_id, so a run is sure to
        see rollouts dropped even when p alone would rarely fail 4 attempts in a row (0.3^4 < 1%)."""
        self.app, self.p, self.seed, self.fail_every = app, p, seed, fail_every
        self.order: list[str] = []  # distinct call_ids in arrival order
        self.lock = threading.Lock()
        self.attempts: dict[str, list[str]] = defaultdict(list)  # call_id -> outcomes in order
        self.trace_of: dict[str, str] = {}

    def always_fails(self, call_id: str) -> bool:
        return self.fail_every > 0 and (self.order.index(call_id) + 1) % self.fail_every == 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/":
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        payload = json.loads(body)
        call_id = payload["call_id"]
        with self.lock:
            if call_id not in self.attempts:
                self.order.append(call_id)
            k = len(self.attempts[call_id])
            fail = self.always_fails(call_id) or flaky_fails(self.seed, call_id, k, self.p)
            self.attempts[call_id].append("500" if fail else "pass")
            self.trace_of[call_id] = payload["trace_id"]
        if fail:
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"injected failure"})
            return
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
