"""``score_model`` and ``label_model``: a judge model reads templated messages and answers in JSON.

Spec (OpenAI): ``name, model, input`` (messages ``{role, content}``; ``content`` is a template string or a list
of parts with ``text``), ``sampling_params`` (``seed, top_p, temperature, max_completions_tokens,
reasoning_effort``); ``score_model`` adds ``range`` (default ``[0, 1]``) and ``pass_threshold``; ``label_model``
adds ``labels`` and ``passing_labels`` (a non-empty subset of ``labels``).

The judge answers ``{"steps": [...], "result": ...}``. To make that explicit for any judge, a short system
message stating the format (and, for labels, the allowed labels) is appended after the user's messages, and an
HTTP judge is also asked for ``response_format`` JSON (retried without it if the server rejects the field).

Scoring:

* ``score_model``: ``score = clip(result, range[0], range[1])``; ``passed = score >= pass_threshold``
  (when given). The answer may also be a bare number. Anything else → 0 with ``model_grader_parse_error``.
* ``label_model``: ``score = 1`` if ``result`` is in ``passing_labels``, else 0; ``passed`` likewise. A label
  not in ``labels`` → ``model_grader_parse_error``.
* A refusal (``message.refusal`` set, or ``finish_reason == "content_filter"``) → ``model_grader_refusal_error``.
* HTTP 429/5xx and connection errors are retried 3 times with backoff (0.5 s, 1 s, 2 s); then, like any other
  HTTP failure, → ``model_grader_server_error``. A missing template variable → ``invalid_variable_error``
  (the judge is not called).
* ``metadata["token_usage"]`` = the judge's ``usage`` (prompt/completion/total tokens), summed over retries;
  ``metadata["steps"]`` keeps the judge's reasoning steps.

Judges: a judge registered under the spec's ``model`` name (:func:`register_judge` — any object with
``chat(messages, sampling_params) -> str``; the lead wires the project's local sampler here) is used first.
Otherwise an OpenAI-compatible chat endpoint: base URL ``AGENTRFT_JUDGE_BASE_URL`` (else ``OPENAI_BASE_URL``);
there is no default endpoint — with neither set and no judge registered the grader refuses to build
(:class:`GraderSpecError` naming ``grader.model`` and the variable), so no data is ever sent anywhere the user did
not configure. Key ``AGENTRFT_JUDGE_API_KEY`` (else ``OPENAI_API_KEY``), timeout
``AGENTRFT_JUDGE_TIMEOUT_S`` (default 120 s).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.common import as_score, check_pass_threshold, error_grade, optional, require
from agentrft.graders.templating import TemplateVariableError, check_template, render

SAMPLING_KEYS = ("seed", "top_p", "temperature", "max_completions_tokens", "max_completion_tokens",
                 "reasoning_effort", "max_tokens")
ROLES = ("system", "developer", "user", "assistant")


class ChatJudge(Protocol):
    def chat(self, messages: list[dict[str, Any]], sampling_params: dict[str, Any]) -> str: ...


_JUDGES: dict[str, ChatJudge] = {}


def register_judge(model: str, judge: ChatJudge | None) -> None:
    """Use ``judge`` for every model grader whose ``model`` is ``model`` (``None`` unregisters). ``"*"`` = all."""
    if judge is None:
        _JUDGES.pop(model, None)
    else:
        _JUDGES[model] = judge


@dataclass
class JudgeReply:
    text: str = ""
    refusal: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # a server error after retries
    retries: int = 0


def judge_base_url() -> str | None:
    """The configured judge endpoint, or ``None``: never a public default."""
    return os.environ.get("AGENTRFT_JUDGE_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or None


def judge_configured(model: str) -> bool:
    return bool(_JUDGES.get(model) or _JUDGES.get("*") or judge_base_url())


NO_JUDGE = ("no judge endpoint is configured — set AGENTRFT_JUDGE_BASE_URL (or OPENAI_BASE_URL) to an "
            "OpenAI-compatible endpoint you chose, or register a local judge (agentrft.graders.register_judge); "
            "agentrft never sends grader inputs to a default public endpoint")


class HTTPJudge:
    """An OpenAI-compatible ``/chat/completions`` client (httpx), retrying 429/5xx/connection errors."""

    RETRIES = 3
    BACKOFF = (0.5, 1.0, 2.0)

    def __init__(self, base_url: str | None = None, api_key: str | None = None, timeout_s: float | None = None):
        self.base_url = (base_url or judge_base_url() or "").rstrip("/")
        self.api_key = api_key if api_key is not None else (
            os.environ.get("AGENTRFT_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "")
        self.timeout_s = timeout_s or float(os.environ.get("AGENTRFT_JUDGE_TIMEOUT_S", "120"))
        self._client: Any = None
        self._lock = threading.Lock()
        self._no_response_format = False

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
                self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=self.timeout_s)
            return self._client

    def complete(self, model: str, messages: list[dict[str, Any]], sampling: dict[str, Any],
                 response_format: dict[str, Any] | None) -> JudgeReply:
        import httpx

        body: dict[str, Any] = {"model": model, "messages": messages}
        for k, v in sampling.items():
            if v is None:
                continue
            body["max_completion_tokens" if k == "max_completions_tokens" else k] = v
        if response_format and not self._no_response_format:
            body["response_format"] = response_format
        reply = JudgeReply()
        if not self.base_url:  # defence in depth: a grader built before the variable was unset
            reply.error = NO_JUDGE
            return reply
        last = ""
        for attempt in range(self.RETRIES + 1):
            if attempt:
                time.sleep(self.BACKOFF[min(attempt - 1, len(self.BACKOFF) - 1)])
                reply.retries += 1
            try:
                r = self.client.post("/chat/completions", json=body)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 400 and "response_format" in body and "response_format" in r.text:
                self._no_response_format = True  # this server does not take structured output: ask without
                body.pop("response_format")
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:300]}"
                continue
            if r.status_code != 200:
                reply.error = f"HTTP {r.status_code}: {r.text[:300]}"
                return reply
            try:
                data = r.json()
                choice = data["choices"][0]
                msg = choice.get("message") or {}
            except (ValueError, KeyError, IndexError, TypeError) as e:
                reply.error = f"malformed chat completion ({type(e).__name__}: {e}): {r.text[:300]}"
                return reply
            for k, v in (data.get("usage") or {}).items():
                if isinstance(v, int) and not isinstance(v, bool):
                    reply.usage[k] = reply.usage.get(k, 0) + v
            reply.refusal = msg.get("refusal") or (
                "finish_reason=content_filter" if choice.get("finish_reason") == "content_filter" else None)
            content = msg.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            reply.text = content or ""
            return reply
        reply.error = f"judge unreachable after {self.RETRIES} retries: {last}"
        return reply

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


_http_judges: dict[tuple, HTTPJudge] = {}
_http_lock = threading.Lock()


def http_judge() -> HTTPJudge:
    key = (os.environ.get("AGENTRFT_JUDGE_BASE_URL"), os.environ.get("OPENAI_BASE_URL"),
           os.environ.get("AGENTRFT_JUDGE_API_KEY"), os.environ.get("OPENAI_API_KEY"))
    with _http_lock:
        j = _http_judges.get(key)
        if j is None:
            j = _http_judges[key] = HTTPJudge()
        return j


def call_judge(model: str, messages: list[dict[str, Any]], sampling: dict[str, Any],
               response_format: dict[str, Any] | None = None) -> JudgeReply:
    """Ask the judge registered for ``model`` (or ``"*"``), else the HTTP judge."""
    local = _JUDGES.get(model) or _JUDGES.get("*")
    if local is not None:
        try:
            text = local.chat(messages, dict(sampling))
        except Exception as e:
            return JudgeReply(error=f"local judge raised {type(e).__name__}: {e}")
        if not isinstance(text, str):
            return JudgeReply(error=f"local judge returned {type(text).__name__}, expected str")
        return JudgeReply(text=text)
    return http_judge().complete(model, messages, sampling, response_format)


_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_judge_json(text: str) -> dict[str, Any] | None:
    """The judge's JSON object: the whole text, a fenced block, or the first ``{...}`` that parses."""
    t = text.strip()
    m = _FENCE_RE.match(t)
    if m:
        t = m.group(1)
    try:
        v = json.loads(t)
        return v if isinstance(v, dict) else {"result": v}
    except ValueError:
        pass
    start = t.find("{")
    while start >= 0:
        depth = 0
        for i in range(start, len(t)):
            if t[i] == "{":
                depth += 1
            elif t[i] == "}":
                depth -= 1
                if depth == 0:
                    try:
                        v = json.loads(t[start : i + 1])
                        if isinstance(v, dict):
                            return v
                    except ValueError:
                        pass
                    break
        start = t.find("{", start + 1)
    return None


def render_messages(spec_input: list[dict[str, Any]], sample: dict[str, Any], item: dict[str, Any]
                    ) -> list[dict[str, Any]]:
    out = []
    for m in spec_input:
        c = m.get("content", "")
        if isinstance(c, list):
            parts = []
            for p in c:
                if isinstance(p, dict) and "text" in p:
                    parts.append(render(p["text"], sample, item))
                elif isinstance(p, str):
                    parts.append(render(p, sample, item))
            text = "\n".join(parts)
        elif isinstance(c, dict) and "text" in c:
            text = render(c["text"], sample, item)
        else:
            text = render(c, sample, item)
        out.append({"role": m.get("role", "user"), "content": text})
    return out


def validate_input(spec: dict[str, Any]) -> None:
    msgs = require(spec, "input", list)
    if not msgs:
        raise GraderSpecError("grader.input: needs at least one message")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise GraderSpecError(f"grader.input[{i}]: expected a message object")
        role = m.get("role", "user")
        if role not in ROLES:
            raise GraderSpecError(f"grader.input[{i}].role: {role!r} is not one of {', '.join(ROLES)}")
        c = m.get("content")
        texts = [c] if isinstance(c, str) else [p.get("text") if isinstance(p, dict) else p for p in c] \
            if isinstance(c, list) else [c.get("text")] if isinstance(c, dict) else None
        if texts is None or any(not isinstance(t, str) for t in texts):
            raise GraderSpecError(f"grader.input[{i}].content: expected a string or a list of text parts")
        for t in texts:
            try:
                check_template(t, f"grader.input[{i}].content")
            except TemplateVariableError as e:
                raise GraderSpecError(str(e)) from None


def validate_sampling(spec: dict[str, Any]) -> dict[str, Any]:
    sp = optional(spec, "sampling_params", dict, {})
    for k in sp:
        if k not in SAMPLING_KEYS:
            raise GraderSpecError(f"grader.sampling_params.{k}: unknown (known: {', '.join(SAMPLING_KEYS[:5])})")
    return sp


class _ModelGraderBase(Grader):
    io_bound = True

    def validate_spec(self) -> None:
        require(self.spec, "model", str)
        validate_input(self.spec)
        self.sampling = validate_sampling(self.spec)
        check_pass_threshold(self.spec)

    def check_judge(self) -> None:
        if not judge_configured(self.spec["model"]):
            raise GraderSpecError(f"grader.model {self.spec['model']!r}: {NO_JUDGE}")

    def ask(self, sample: dict[str, Any], item: dict[str, Any], instruction: str,
            response_format: dict[str, Any]) -> tuple[dict[str, Any] | None, Grade | None, dict[str, Any]]:
        """Render, call the judge; returns (parsed JSON, error grade, metadata)."""
        try:
            msgs = render_messages(self.spec["input"], sample, item)
        except TemplateVariableError as e:
            return None, error_grade(self, e.flag, str(e)), {}
        msgs.append({"role": "system", "content": instruction})
        reply = call_judge(self.spec["model"], msgs, self.sampling, response_format)
        meta: dict[str, Any] = {}
        if reply.usage:
            meta["token_usage"] = reply.usage
        if reply.retries:
            meta["judge_retries"] = reply.retries
        if reply.error:
            return None, error_grade(self, "model_grader_server_error", reply.error, metadata=meta), meta
        if reply.refusal:
            return None, error_grade(self, "model_grader_refusal_error", f"judge refused: {reply.refusal}"[:500],
                                     metadata=meta), meta
        parsed = parse_judge_json(reply.text)
        if parsed is None or "result" not in parsed:
            return None, error_grade(self, "model_grader_parse_error",
                                     f"judge answer is not JSON with a 'result': {reply.text[:300]!r}",
                                     metadata=meta), meta
        if isinstance(parsed.get("steps"), list):
            meta["steps"] = parsed["steps"]
        meta["judge_output"] = reply.text[:2000]
        return parsed, None, meta


@register_grader
class ScoreModelGrader(_ModelGraderBase):
    type = "score_model"

    def validate_spec(self) -> None:
        super().validate_spec()
        rng = optional(self.spec, "range", list, [0, 1])
        if len(rng) != 2 or any(as_score(x) is None for x in rng) or float(rng[0]) > float(rng[1]):
            raise GraderSpecError(f"grader.range: expected [low, high] with low <= high, got {rng!r}")
        self.lo, self.hi = float(rng[0]), float(rng[1])
        self.check_judge()

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        instruction = (
            "Reply with only a JSON object: {\"steps\": [{\"description\": string, \"conclusion\": string}], "
            f"\"result\": number}}, where result is a score between {self.lo:g} and {self.hi:g}."
        )
        rf = {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": {
            "type": "object", "additionalProperties": False, "required": ["steps", "result"],
            "properties": {"steps": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["description", "conclusion"],
                "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}}}},
                "result": {"type": "number"}}}}}
        parsed, err, meta = self.ask(sample, item, instruction, rf)
        if err is not None:
            return err
        raw = parsed["result"]
        if isinstance(raw, str):
            try:
                raw = float(raw.strip())
            except ValueError:
                pass
        value = as_score(raw)
        if value is None:
            return error_grade(self, "model_grader_parse_error", f"judge result {raw!r:.200} is not a number",
                               metadata=meta)
        meta["raw_result"] = value
        score = min(self.hi, max(self.lo, value))
        return self.make_grade(score, metadata=meta)


@register_grader
class LabelModelGrader(_ModelGraderBase):
    type = "label_model"

    def validate_spec(self) -> None:
        super().validate_spec()
        labels = require(self.spec, "labels", list)
        passing = require(self.spec, "passing_labels", list)
        if not labels or any(not isinstance(x, str) for x in labels):
            raise GraderSpecError("grader.labels: expected a non-empty list of strings")
        if not passing or any(x not in labels for x in passing):
            bad = [x for x in passing if x not in labels]
            raise GraderSpecError(f"grader.passing_labels: must be a non-empty subset of labels (not in labels: {bad})")
        self.check_judge()
        self.labels, self.passing = list(labels), set(passing)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        instruction = (
            "Reply with only a JSON object: {\"steps\": [{\"description\": string, \"conclusion\": string}], "
            f"\"result\": string}}, where result is exactly one of: {json.dumps(self.labels, ensure_ascii=False)}."
        )
        rf = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": {
            "type": "object", "additionalProperties": False, "required": ["steps", "result"],
            "properties": {"steps": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["description", "conclusion"],
                "properties": {"description": {"type": "string"}, "conclusion": {"type": "string"}}}},
                "result": {"type": "string", "enum": self.labels}}}}}
        parsed, err, meta = self.ask(sample, item, instruction, rf)
        if err is not None:
            return err
        label = parsed["result"]
        if not isinstance(label, str) or label not in self.labels:
            return error_grade(self, "model_grader_parse_error",
                               f"judge label {label!r:.200} is not one of {self.labels}", metadata=meta)
        meta["label"] = label
        ok = label in self.passing
        return self.make_grade(1.0 if ok else 0.0, passed=ok, metadata=meta)
