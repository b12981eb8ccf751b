"""``endpoint`` (Agent RFT): POST the rollout to the team's grading service and read ``{"score": float}``.

``{"type": "endpoint", "name", "url", "headers"?, "rate_limit"?, "pass_threshold"?}``; agentrft adds
``timeout_s`` (default 600, the contract's 10 minutes).

* Request: ``POST url`` with JSON ``{"sample": sample, "item": item, "trace_id": trace_id}`` (the same
  ``trace_id`` the rollout's tool calls carried, so the service can grade from its per-rollout state).
  Header values may name environment variables as ``${VAR}`` (secrets stay out of the grader JSON and its
  version hash). A body over 1 MB is sent without ``sample.trajectory`` (agentrft's extra key); if still over,
  it is not sent.
* ``rate_limit``: at most this many requests per second to this URL from this process (default 50), spaced
  evenly (a shared token schedule, so concurrent graders cannot burst past it).
* Retries: connection errors, timeouts, 429 and 5xx are retried 3 times (backoff 0.5 s, 1 s, 2 s, or the
  server's ``Retry-After`` when shorter than 30 s).
* Reply: 200 with a JSON object whose ``score`` is a finite number (≤ 1 MB); extra keys are kept in
  ``metadata["endpoint"]``. Anything else — after the retries — scores 0 with ``unresponsive_reward_error``
  and ``metadata["drop_rollout"] = True``: per the contract such a rollout is discarded (not scored, not
  trained on), so the trainer must drop it rather than learn from the 0.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import as_score, check_pass_threshold, error_grade, optional, require

MAX_BODY = 1024 * 1024
RETRIES = 3
BACKOFF = (0.5, 1.0, 2.0)
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RateLimiter:
    """Evenly spaced slots: request k may start no earlier than ``start + k / rate``."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next)
            self.next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


_limiters: dict[tuple[str, float], RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(url: str, rate: float) -> RateLimiter:
    with _limiters_lock:
        key = (url, rate)
        if key not in _limiters:
            _limiters[key] = RateLimiter(rate)
        return _limiters[key]


@register_grader
class EndpointGrader(Grader):
    type = "endpoint"
    io_bound = True

    def validate_spec(self) -> None:
        url = require(self.spec, "url", str)
        if not url.startswith(("http://", "https://")):
            raise GraderSpecError(f"grader.url: expected an http(s) URL, got {url!r}")
        headers = optional(self.spec, "headers", dict, {})
        for k, v in headers.items():
            if not isinstance(v, str):
                raise GraderSpecError(f"grader.headers.{k}: expected a string")
        rate = optional(self.spec, "rate_limit", (int, float), 50)
        if rate <= 0:
            raise GraderSpecError(f"grader.rate_limit: must be > 0 requests per second, got {rate}")
        t = optional(self.spec, "timeout_s", (int, float), 600)
        if t <= 0:
            raise GraderSpecError(f"grader.timeout_s: must be > 0, got {t}")
        check_pass_threshold(self.spec)
        self.url, self.rate, self.timeout_s = url, float(rate), float(t)
        self._client: Any = None
        self._lock = threading.Lock()

    def _headers(self) -> dict[str, str]:
        out = {}
        for k, v in (self.spec.get("headers") or {}).items():
            out[k] = _ENV_RE.sub(lambda m: os.environ.get(m.group(1), ""), v)
        return out

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self.timeout_s, headers=self._headers())
            return self._client

    def _body(self, sample: dict[str, Any], item: dict[str, Any], trace_id: str | None) -> tuple[bytes | None, str]:
        payload = {"sample": sample, "item": item, "trace_id": trace_id}
        body = json.dumps(payload, ensure_ascii=False, default=str).encode()
        if len(body) <= MAX_BODY:
            return body, ""
        if isinstance(sample, dict) and "trajectory" in sample:
            payload["sample"] = {k: v for k, v in sample.items() if k != "trajectory"}
            body = json.dumps(payload, ensure_ascii=False, default=str).encode()
            if len(body) <= MAX_BODY:
                return body, "sample.trajectory left out (body over 1 MB)"
        return None, f"request body is {len(body)} bytes, over the 1 MB limit"

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        import httpx

        body, note = self._body(sample, item, trace_id)
        meta: dict[str, Any] = {}
        if note:
            meta["note"] = note
        if body is None:
            meta["drop_rollout"] = True
            return error_grade(self, "unresponsive_reward_error", note, metadata=meta)
        limiter = limiter_for(self.url, self.rate)
        last = ""
        attempts = 0
        for attempt in range(RETRIES + 1):
            if attempt:
                delay = BACKOFF[min(attempt - 1, len(BACKOFF) - 1)]
                time.sleep(delay)
            attempts += 1
            limiter.wait()
            try:
                r = self.client.post(self.url, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                ra = r.headers.get("retry-after")
                if ra and ra.replace(".", "", 1).isdigit() and float(ra) < 30:
                    time.sleep(float(ra))
                continue
            meta["attempts"] = attempts
            if r.status_code != 200:
                meta["drop_rollout"] = True
                return error_grade(self, "unresponsive_reward_error", f"HTTP {r.status_code}: {r.text[:300]}",
                                   metadata=meta)
            if len(r.content) > MAX_BODY:
                meta["drop_rollout"] = True
                return error_grade(self, "unresponsive_reward_error",
                                   f"answer is {len(r.content)} bytes, over the 1 MB limit", metadata=meta)
            try:
                data = r.json()
            except ValueError:
                meta["drop_rollout"] = True
                return error_grade(self, "unresponsive_reward_error", f"answer is not JSON: {r.text[:200]!r}",
                                   metadata=meta)
            score = as_score(data.get("score")) if isinstance(data, dict) else None
            if score is None:
                meta["drop_rollout"] = True
                got = data.get("score") if isinstance(data, dict) else data
                return error_grade(self, "unresponsive_reward_error",
                                   f"answer has no numeric 'score' (got {got!r:.200})", metadata=meta)
            extra = {k: v for k, v in data.items() if k != "score"}
            if extra:
                meta["endpoint"] = extra
            return self.make_grade(score, metadata=meta)
        meta["attempts"] = attempts
        meta["drop_rollout"] = True
        return error_grade(self, "unresponsive_reward_error", f"no answer after {RETRIES} retries: {last}",
                           metadata=meta)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
