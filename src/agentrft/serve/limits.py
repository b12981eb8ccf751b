"""Rate limits and Prometheus metrics for the server (plain text exposition format, no client library)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class TokenRateLimiter:
    """Tokens per minute per API key (or client address without a key), as a token bucket of capacity ``tpm``
    refilled continuously. A request reserves ``prompt + max_tokens`` up front (429 when the bucket lacks them) and
    gets back what it did not use when it ends."""

    def __init__(self, tokens_per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.tpm = int(tokens_per_minute)
        self.clock = clock
        self._lock = threading.Lock()
        self._level: dict[str, float] = {}
        self._at: dict[str, float] = {}

    def _refill(self, key: str) -> float:
        now = self.clock()
        level = self._level.get(key, float(self.tpm))
        level = min(float(self.tpm), level + (now - self._at.get(key, now)) * self.tpm / 60.0)
        self._level[key], self._at[key] = level, now
        return level

    def reserve(self, key: str, tokens: int) -> float | None:
        """Take ``tokens``; None if granted, else the seconds until they would be available."""
        with self._lock:
            level = self._refill(key)
            if tokens > self.tpm:
                return float("inf")
            if level < tokens:
                return (tokens - level) * 60.0 / self.tpm
            self._level[key] = level - tokens
            return None

    def refund(self, key: str, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            level = self._refill(key)
            self._level[key] = min(float(self.tpm), level + tokens)


class Metrics:
    """Counters, a latency histogram and gauges read at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)  # (endpoint, model, status)
        self.prompt_tokens: dict[str, int] = defaultdict(int)
        self.completion_tokens: dict[str, int] = defaultdict(int)
        self.generated = 0  # tokens sampled by the engines (including cancelled requests)
        self.malformed_tool_calls: dict[str, int] = defaultdict(int)
        self.response_format_violations: dict[str, int] = defaultdict(int)
        self.lat_counts: dict[str, list[int]] = {}
        self.lat_sum: dict[str, float] = defaultdict(float)
        self.lat_n: dict[str, int] = defaultdict(int)
        self.rate_limited = 0
        self.gauges: dict[str, Callable[[], float]] = {}
        self.labelled_gauges: dict[str, Callable[[], dict[str, float]]] = {}

    def request(self, endpoint: str, model: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, model, int(status))] += 1

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        with self._lock:
            self.prompt_tokens[model] += prompt
            self.completion_tokens[model] += completion

    def tokens_generated(self, n: int) -> None:
        with self._lock:
            self.generated += n

    def malformed(self, model: str, n: int = 1) -> None:
        with self._lock:
            self.malformed_tool_calls[model] += n

    def response_format_violation(self, model: str) -> None:
        with self._lock:
            self.response_format_violations[model] += 1

    def latency(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            counts = self.lat_counts.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
            for i, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    counts[i] += 1
            self.lat_sum[endpoint] += seconds
            self.lat_n[endpoint] += 1

    def render(self) -> str:
        out: list[str] = []

        def esc(v: str) -> str:
            return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        with self._lock:
            out += ["# HELP agentrft_requests_total Requests answered, by endpoint, model and HTTP status.",
                    "# TYPE agentrft_requests_total counter"]
            for (ep, model, st), n in sorted(self.requests.items()):
                out.append(f'agentrft_requests_total{{endpoint="{esc(ep)}",model="{esc(model)}",status="{st}"}} {n}')
            for name, d, help_ in (("agentrft_prompt_tokens_total", self.prompt_tokens, "Prompt tokens of answered requests."),
                                   ("agentrft_completion_tokens_total", self.completion_tokens,
                                    "Completion tokens of answered requests."),
                                   ("agentrft_malformed_tool_calls_total", self.malformed_tool_calls,
                                    "Assistant turns whose tool-call text did not parse (returned as content)."),
                                   ("agentrft_response_format_violations_total", self.response_format_violations,
                                    "Choices whose text does not conform to the request's response_format.")):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
                for model, n in sorted(d.items()):
                    out.append(f'{name}{{model="{esc(model)}"}} {n}')
            out += ["# HELP agentrft_generated_tokens_total Tokens sampled by the engines (rate() of it is tokens/s).",
                    "# TYPE agentrft_generated_tokens_total counter", f"agentrft_generated_tokens_total {self.generated}",
                    "# HELP agentrft_rate_limited_total Requests refused with 429.",
                    "# TYPE agentrft_rate_limited_total counter", f"agentrft_rate_limited_total {self.rate_limited}",
                    "# HELP agentrft_request_latency_seconds Time from request to last token.",
                    "# TYPE agentrft_request_latency_seconds histogram"]
            for ep, counts in sorted(self.lat_counts.items()):
                for b, c in zip(LATENCY_BUCKETS, counts):
                    out.append(f'agentrft_request_latency_seconds_bucket{{endpoint="{esc(ep)}",le="{b}"}} {c}')
                out.append(f'agentrft_request_latency_seconds_bucket{{endpoint="{esc(ep)}",le="+Inf"}} {self.lat_n[ep]}')
                out.append(f'agentrft_request_latency_seconds_sum{{endpoint="{esc(ep)}"}} {self.lat_sum[ep]:.6f}')
                out.append(f'agentrft_request_latency_seconds_count{{endpoint="{esc(ep)}"}} {self.lat_n[ep]}')
            gauges = dict(self.gauges)
            labelled = dict(self.labelled_gauges)
        for name, fn in sorted(gauges.items()):
            out += [f"# TYPE {name} gauge", f"{name} {float(fn()):g}"]
        for name, fn in sorted(labelled.items()):
            out.append(f"# TYPE {name} gauge")
            for label, v in sorted(fn().items()):
                out.append(f'{name}{{model="{esc(label)}"}} {float(v):g}')
        return "\n".join(out) + "\n"
