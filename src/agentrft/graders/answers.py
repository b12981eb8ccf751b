"""The answers of OpenAI's graders/run, shared by ``agentrft grade`` (graders/cli.py) and the server's
``POST /v1/fine_tuning/alpha/graders/run`` (serve/jobs.py), so both answer alike: a sample from an object or plain
text, the run response for one Grade, and the response for a grader that does not build."""

from __future__ import annotations

from typing import Any

from agentrft.graders.base import ERROR_FLAGS, Grade, Grader, GraderSpecError, grader_version


def normalize_sample(value: Any) -> dict[str, Any]:
    """A sample object (missing OpenAI keys filled in) from an object or plain text."""
    from agentrft.graders.base import sample_from_text

    if isinstance(value, str):
        return sample_from_text(value)
    if not isinstance(value, dict):
        raise ValueError(f"sample: expected an object or a string, got {type(value).__name__}")
    text = value.get("output_text")
    if text is None:
        try:
            text = value["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            text = ""
    out = sample_from_text(str(text))
    out.update(value)
    out["output_text"] = str(text)
    return out


def run_output(grader: Grader | None, grade: Grade) -> dict[str, Any]:
    """OpenAI graders/run response shape for one Grade."""
    errors = {f: bool(grade.errors.get(f)) for f in ERROR_FLAGS}
    errors.update({k: bool(v) for k, v in grade.errors.items() if k not in errors})
    meta = dict(grade.metadata)
    usage = meta.pop("token_usage", None)
    scores = dict(grade.sub_rewards) if grade.sub_rewards else {grade.grader_name: grade.score}
    return {
        "reward": grade.score,
        "sub_rewards": dict(grade.sub_rewards),
        "metadata": {
            "name": grade.grader_name,
            "type": grade.grader_type,
            "execution_time": grade.execution_time_s,
            "scores": scores,
            "token_usage": usage,
            "errors": errors,
            "sampled_model_name": (grader.spec.get("model") if grader is not None else None),
            "agentrft": {"version": grade.version, "passed": grade.passed, "turn_scores": grade.turn_scores,
                         "details": meta},
        },
    }


def spec_error_output(spec: Any, err: GraderSpecError) -> dict[str, Any]:
    msg = str(err)
    flag = "formula_parse_error" if "calculate_output" in msg else "other_error"
    name = spec.get("name") or spec.get("type") if isinstance(spec, dict) else None
    g = Grade(grader_name=str(name or "grader"), grader_type=str(spec.get("type") if isinstance(spec, dict) else ""),
              version=grader_version(spec) if isinstance(spec, dict) else "", score=0.0, errors={flag: True},
              metadata={"errors_detail": [f"{flag}: {msg}"]})
    return run_output(None, g)
