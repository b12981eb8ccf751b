"""``group_judge``: relative judging of a whole group of trajectories at once (RULER-style).

A judge that sees one answer at a time must score on an absolute scale it was never calibrated for; GRPO only needs
the *ranking within a group* (the advantage is reward − group mean). So, as OpenPipe's RULER does, the judge gets the
task and all G trajectories of a group in one request and answers one score per member::

    {"scores": [{"trajectory_id": "1", "explanation": "...", "score": 0.8}, ...]}

Spec (OpenAI grader JSON style)::

    {"type": "group_judge", "name": "ruler", "model": "judge-model",
     "rubric": "optional extra criteria", "base_url": "http://127.0.0.1:8000/v1",   # else the judge env/registry
     "api_key_env": "JUDGE_KEY", "max_chars": 4000, "sampling_params": {"temperature": 0}}

The judge is any OpenAI-compatible ``/chat/completions`` endpoint (``base_url``), or the judge configured for model
graders (``AGENTRFT_JUDGE_BASE_URL``, :func:`agentrft.graders.register_judge`). Each trajectory is shown as its
messages and tool calls with results (each message cut to ``max_chars``). Scores are clamped to [0, 1]. An answer
that does not parse, misses a member or repeats one gives every member of the group a grade with
``model_grader_parse_error`` (server failures: ``model_grader_server_error``) and the judge's text in the metadata —
never a silent zero. Called one trajectory at a time (``grade``) it judges a group of one.

:func:`agentrft.graders.batch.grade_trajectories` calls :meth:`GroupJudgeGrader.grade_group` once per group
(trajectories sharing a ``group_id``) when the reward grader is groupwise.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agentrft.graders.base import Grade, Grader, GraderSpecError, register_grader
from agentrft.graders.model_graders import HTTPJudge, call_judge, judge_configured, parse_judge_json, NO_JUDGE

INSTRUCTION = """You are judging several attempts by an AI agent at the same task. Each attempt is a full \
trajectory: its messages, the tools it called and what they returned, and its final answer. Compare the attempts \
with each other and give each a score between 0 and 1: 1 for an attempt that fully and correctly completes the task \
in a direct way, 0 for one that fails. Score relative to the other attempts: a better attempt gets a higher score. \
Answer only with JSON: {"scores": [{"trajectory_id": "<id>", "explanation": "<one sentence>", "score": <0..1>}, ...]} \
with exactly one entry per attempt."""


def _clip(text: Any, n: int) -> str:
    s = text if isinstance(text, str) else json.dumps(text, default=str)
    return s if len(s) <= n else s[: n - 20] + f"... [{len(s) - n + 20} chars cut]"


def render_trajectory(sample: dict[str, Any], max_chars: int) -> str:
    """One attempt as text: its messages after the prompt, tool calls with their arguments and outputs."""
    traj = sample.get("trajectory") or {}
    msgs = traj.get("messages") or [{"role": "assistant", "content": sample.get("output_text", "")}]
    first_reply = next((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), len(msgs))
    lines = []
    for m in msgs[first_reply:]:
        role = m.get("role")
        if role == "assistant":
            if m.get("content"):
                lines.append(f"assistant: {_clip(m['content'], max_chars)}")
            for c in m.get("tool_calls") or []:
                fn = c.get("function") or {}
                lines.append(f"assistant calls {fn.get('name')}({_clip(fn.get('arguments', ''), max_chars)})")
        elif role == "tool":
            lines.append(f"tool {m.get('name') or ''} returned: {_clip(m.get('content') or '', max_chars)}")
    if traj.get("outcome") and traj.get("outcome") != "completed":
        lines.append(f"(ended without an answer: {traj['outcome']})")
    return "\n".join(lines) or "(no reply)"


def task_text(item: dict[str, Any], samples: list[dict[str, Any]], max_chars: int) -> str:
    msgs = (samples[0].get("trajectory") or {}).get("messages") or item.get("messages") or []
    prompt = []
    for m in msgs:
        if m.get("role") == "assistant":
            break
        if m.get("role") in ("system", "user", "developer"):
            prompt.append(f"{m['role']}: {_clip(m.get('content') or '', max_chars)}")
    return "\n".join(prompt)


@register_grader
class GroupJudgeGrader(Grader):
    type = "group_judge"
    io_bound = True
    groupwise = True

    def validate_spec(self) -> None:
        s = self.spec
        if not isinstance(s.get("model"), str) or not s["model"]:
            raise GraderSpecError("grader.model: the judge's model name is required (a string)")
        for k in ("rubric", "base_url", "api_key_env"):
            if k in s and not isinstance(s[k], str):
                raise GraderSpecError(f"grader.{k}: expected a string")
        if "base_url" in s and not s["base_url"].startswith(("http://", "https://")):
            raise GraderSpecError(f"grader.base_url: {s['base_url']!r} is not an http(s) URL")
        mc = s.get("max_chars", 4000)
        if not isinstance(mc, int) or isinstance(mc, bool) or mc < 100:
            raise GraderSpecError("grader.max_chars: expected an integer >= 100")
        self.max_chars = mc
        sp = s.get("sampling_params", {"temperature": 0})
        if not isinstance(sp, dict):
            raise GraderSpecError("grader.sampling_params: expected an object")
        self.sampling = dict(sp)
        known = {"type", "name", "model", "rubric", "base_url", "api_key_env", "max_chars", "sampling_params",
                 "pass_threshold"}
        extra = sorted(set(s) - known)
        if extra:
            raise GraderSpecError(f"grader.{extra[0]}: unknown key for group_judge (known: {', '.join(sorted(known))})")
        self._http: HTTPJudge | None = None
        if "base_url" in s:
            key = os.environ.get(s["api_key_env"], "") if s.get("api_key_env") else ""
            self._http = HTTPJudge(s["base_url"], api_key=key)
        elif not judge_configured(s["model"]):
            raise GraderSpecError(f"grader.model {s['model']!r}: {NO_JUDGE} (or give grader.base_url)")

    def messages(self, samples: list[dict[str, Any]], item: dict[str, Any]) -> list[dict[str, Any]]:
        parts = [f"Task:\n{task_text(item, samples, self.max_chars)}"]
        if self.spec.get("rubric"):
            parts.append(f"Criteria:\n{self.spec['rubric']}")
        for i, s in enumerate(samples, 1):
            parts.append(f'<trajectory id="{i}">\n{render_trajectory(s, self.max_chars)}\n</trajectory>')
        return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "\n\n".join(parts)}]

    def _ask(self, messages: list[dict[str, Any]]) -> Any:
        if self._http is not None:
            return self._http.complete(self.spec["model"], messages, self.sampling, None)
        return call_judge(self.spec["model"], messages, self.sampling, None)

    def grade_group(self, samples: list[dict[str, Any]], item: dict[str, Any]) -> list[Grade]:
        """One judge request for the whole group; one grade per sample, in order."""
        reply = self._ask(self.messages(samples, item))
        meta: dict[str, Any] = {"group_size": len(samples)}
        if reply.usage:
            meta["token_usage"] = reply.usage
        if reply.error:
            return [self._error("model_grader_server_error", reply.error, meta) for _ in samples]
        meta["judge_output"] = reply.text[:4000]
        scores, problem = self.parse(reply.text, len(samples))
        if scores is None:
            return [self._error("model_grader_parse_error", problem, meta) for _ in samples]
        return [self.make_grade(sc, metadata={**meta, "explanation": ex, "rank_id": str(i + 1)})
                for i, (sc, ex) in enumerate(scores)]

    @staticmethod
    def parse(text: str, n: int) -> tuple[list[tuple[float, str]] | None, str]:
        """``[(score clamped to [0, 1], explanation)]`` by member, or ``(None, what is wrong)``."""
        obj = parse_judge_json(text)
        entries = obj.get("scores") if isinstance(obj, dict) else None
        if not isinstance(entries, list):
            return None, f"judge answer is not JSON with a 'scores' list: {text[:300]!r}"
        got: dict[str, tuple[float, str]] = {}
        for e in entries:
            if not isinstance(e, dict):
                return None, f"a 'scores' entry is not an object: {e!r}"[:300]
            tid = str(e.get("trajectory_id", e.get("id", "")))
            try:
                sc = float(e.get("score"))
            except (TypeError, ValueError):
                return None, f"trajectory {tid}: score {e.get('score')!r} is not a number"
            if sc != sc:
                return None, f"trajectory {tid}: score is NaN"
            if tid in got:
                return None, f"trajectory {tid} is scored twice"
            got[tid] = (min(1.0, max(0.0, sc)), str(e.get("explanation", ""))[:500])
        missing = [str(i) for i in range(1, n + 1) if str(i) not in got]
        if missing:
            return None, f"the judge scored no trajectory {', '.join(missing)} (of {n})"
        return [got[str(i)] for i in range(1, n + 1)], ""

    def _error(self, flag: str, message: str, meta: dict[str, Any]) -> Grade:
        return self.make_grade(0.0, errors={flag: True}, metadata={**meta, "error": message[:500]}, passed=False)

    def _grade(self, sample: dict[str, Any], item: dict[str, Any], *, trace_id: str | None) -> Grade:
        return self.grade_group([sample], item)[0]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
