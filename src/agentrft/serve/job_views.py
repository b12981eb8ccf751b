"""OpenAI's job, event and checkpoint objects, derived from the store.

Metrics events and checkpoints are not stored as events: they are read from the job's run (its ``steps`` and
``checkpoints`` rows), so what a client polls is exactly what ``agentrft show`` prints, and a resumed run — whose
records past its last checkpoint were deleted and re-run — shows every step once. Lifecycle events (``message``)
come from the job's own event rows.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from agentrft.graders.base import ERROR_FLAGS
from agentrft.serve.models import slug


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def model_stem(job: dict, run_name: str) -> str:
    return f"ft:{job['served_base']}:{slug(run_name)}:{job['run_id']}"


def run_name(job: dict) -> str:
    return job["suffix"] or job["id"]


def checkpoint_model_id(job: dict, step: int) -> str:
    return f"{model_stem(job, run_name(job))}:ckpt-step-{step}"


def fine_tuned_model(job: dict, checkpoints: list[dict]) -> str | None:
    """What the model server serves for the job: the run's best checkpoint (its ``ft:`` stem) when an evaluation
    scored one, else the newest kept checkpoint's ``…:ckpt-step-N`` id."""
    kept = [c for c in checkpoints if c["kept"] and c["path"] and Path(c["path"]).is_dir()]
    if any(c["val_reward"] is not None for c in kept):
        return model_stem(job, run_name(job))
    if kept:
        return checkpoint_model_id(job, max(c["step"] for c in kept))
    return None


# ---------------------------------------------------------------------------------------------------------------
def job_object(store: Any, job: dict) -> dict[str, Any]:
    status = job["status"]
    trained = job["trained_tokens"]
    est = None
    if job["run_id"] and trained is None:
        trained = store.trained_tokens(job["run_id"]) if job["method_type"] == "reinforcement" else None
    if status == "running" and job["run_id"] and job["total_steps"]:
        steps = [r for r in store.step_records(job["run_id"]) if r["split"] == "train"]
        if len(steps) >= 2:
            first, last = steps[0], steps[-1]
            per = (last["created_at"] - first["created_at"]) / max(1, last["step"] - first["step"])
            est = int(last["created_at"] + per * max(0, job["total_steps"] - last["step"]))
    err = job["error"]
    return {
        "id": job["id"], "object": "fine_tuning.job", "created_at": int(job["created_at"]),
        "finished_at": int(job["finished_at"]) if job["finished_at"] else None, "estimated_finish": est,
        "error": err, "fine_tuned_model": job["fine_tuned_model"], "hyperparameters": job["hyperparameters"],
        "method": job["method"], "model": job["model"], "organization_id": "org-agentrft",
        "result_files": list(job["result_files"] or []), "seed": job["seed"], "status": status,
        "trained_tokens": trained, "training_file": job["training_file"], "validation_file": job["validation_file"],
        "integrations": job["integrations"] or None, "metadata": job["metadata"] or None, "suffix": job["suffix"],
        "user_provided_suffix": job["suffix"],
        # ours: the run behind the job (``agentrft show RUN``) and the worker holding it
        "agentrft": {"run_id": job["run_id"], "total_steps": job["total_steps"], "attempts": job["attempts"],
                     "worker": job["lease_owner"] if job["lease_expires"] and job["lease_expires"] > time.time()
                     else None},
    }


# ---------------------------------------------------------------------------------------------------------------
def _graders(m: dict) -> list[str]:
    return sorted(k[len("grader/"):] for k in m if k.startswith("grader/"))


def rl_metrics_data(step: int, total: int, train: dict | None, valid: dict | None, grader: dict) -> dict[str, Any]:
    """OpenAI's reinforcement metrics payload for one step, plus our agent metrics (``agentrft``: the step's train and
    valid records as the store holds them)."""
    t, v = train or {}, valid or {}
    top = grader.get("name") or grader.get("type") or "grader"
    names = sorted(set(_graders(t)) | set(_graders(v)))
    graders = [{"name": n, "type": grader.get("type") if n == top else (
        (grader.get("graders") or {}).get(n.split(".", 1)[-1], {}).get("type") if "." in n else None),
        "train_reward_mean": _num(t.get(f"grader/{n}")), "valid_reward_mean": _num(v.get(f"grader/{n}"))}
        for n in names]
    errs: dict[str, Any] = {"name": top}
    for split, m in (("train", t), ("valid", v)):
        for flag in ERROR_FLAGS:
            errs[f"{split}_{flag}_mean"] = _num(m.get(f"grader_errors_mean/{flag}", 0.0)) if m else None
            errs[f"{split}_{flag}_count"] = int(m.get(f"grader_errors/{flag}", 0)) if m else None
    n_train = int(t.get("trajectories") or 0)
    n_valid = int(v.get("trajectories") or 0)
    data: dict[str, Any] = {
        "step": step, "total_steps": total,
        "train_mean_reward": _num(t.get("reward_mean")) if t else None,
        "full_valid_mean_reward": _num(v.get("reward_mean")) if v else None,
        "full_valid_mean_parse_error": _num(v.get("grader_errors_mean/sample_parse_error", 0.0)) if v else None,
        "completion_tokens_mean": _num(t.get("completion_tokens_mean")) if t else None,
        "reasoning_tokens_mean": 0.0 if t else None,
        "valid_reasoning_tokens_mean": 0.0 if v else None,
        "mean_unresponsive_rewards": _num(t.get("grader_errors_mean/unresponsive_reward_error", 0.0)) if t else None,
        "scores": {"train_reward_mean": _num(t.get("reward_mean")) if t else None,
                   "valid_reward_mean": _num(v.get("reward_mean")) if v else None, "graders": graders},
        "errors": {"graders": [errs]},
        "timing": {"step": {"sampling": _num(t.get("time/sampling")), "training": _num(t.get("time/training")),
                            "grading": _num(t.get("time/grading")), "eval": _num(v.get("time/eval")),
                            "full_iteration": _num(t.get("time/full_iteration"))},
                   "graders": [{"name": top, "train_execution_latency_mean": (
                       _num(t.get("time/grading")) / n_train if t and n_train and _num(t.get("time/grading"))
                       is not None else None), "valid_execution_latency_mean": None}]},
        "usage": {"samples": {"train_completion_tokens": round((_num(t.get("completion_tokens_mean")) or 0) * n_train),
                              "valid_completion_tokens": round((_num(v.get("completion_tokens_mean")) or 0)
                                                               * n_valid),
                              "train_trajectories": n_train, "valid_trajectories": n_valid},
                  "graders": {"model_grader_tokens": 0}},
        # Agent RFT's tool metrics
        "tool_calls_per_rollout": _num(t.get("tool_calls_per_traj")) if t else None,
        "tool_errors_per_rollout": _num(t.get("tool_errors_per_traj")) if t else None,
        "tokens_per_tool_call": _num(t.get("tokens_per_tool_call")) if t else None,
        "tool_latency_mean": _num(t.get("tool_time_s_mean")) if t else None,
        "rollout_latency_mean": _num(t.get("latency_s_mean")) if t else None,
        "valid_tool_calls_per_rollout": _num(v.get("tool_calls_per_traj")) if v else None,
        "agentrft": {"train": t or None, "valid": v or None},
    }
    return data


def _msg(data: dict) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.2f}"
    s = f"Step {data['step']}/{data['total_steps']}"
    if data.get("train_mean_reward") is not None:
        s += f", train mean reward={f(data['train_mean_reward'])}"
    if data.get("full_valid_mean_reward") is not None:
        s += (f", full validation mean reward={f(data['full_valid_mean_reward'])}, full validation mean parse "
              f"error={f(data['full_valid_mean_parse_error'])}")
    if data.get("train_loss") is not None:
        s += f", training loss={data['train_loss']:.4f}"
    return s


def job_events(store: Any, job: dict) -> list[dict[str, Any]]:
    """All events of a job, oldest first."""
    out: list[tuple[float, int, dict]] = []
    short = job["id"].removeprefix("ftjob-")
    for e in store.job_events(job["id"]):
        out.append((e["created_at"], 0, {"id": f"ftevent-{short}-{e['seq']}", "object": "fine_tuning.job.event",
                                         "created_at": int(e["created_at"]), "level": e["level"],
                                         "message": e["message"], "type": "message", "data": e["data"] or {}}))
    run_id = job["run_id"]
    if run_id:
        recs = store.step_records(run_id)
        by_step: dict[int, dict[str, dict]] = {}
        when: dict[int, float] = {}
        for r in recs:
            by_step.setdefault(r["step"], {})[r["split"]] = r["metrics"]
            when[r["step"]] = max(when.get(r["step"], 0.0), r["created_at"] or 0.0)
        grader = ((job["config"] or {}).get("run_config") or {}).get("grader") or {}
        for step in sorted(by_step):
            splits = by_step[step]
            if job["method_type"] == "supervised":
                m = splits.get("train", {})
                data = {"step": step, "total_steps": int(m.get("total_steps", job["total_steps"])),
                        "train_loss": _num(m.get("loss")), "train_mean_token_accuracy": None,
                        "agentrft": {"train": m}}
            else:
                data = rl_metrics_data(step, job["total_steps"], splits.get("train"), splits.get("valid"), grader)
            out.append((when[step], 1, {"id": f"ftevent-{run_id}-step-{step}", "object": "fine_tuning.job.event",
                                        "created_at": int(when[step]), "level": "info", "message": _msg(data),
                                        "type": "metrics", "data": data}))
        for c in store.checkpoints(run_id):
            if not c["kept"]:
                continue
            created = _created(c)
            vr = c["val_reward"]
            out.append((created, 2, {
                "id": f"ftevent-{run_id}-ckpt-{c['step']}", "object": "fine_tuning.job.event",
                "created_at": int(created), "level": "info", "type": "message",
                "message": f"Checkpoint created at step {c['step']}"
                           + (f" (validation reward {vr:.3f})" if vr is not None else ""),
                "data": {"step": c["step"], "checkpoint": checkpoint_model_id(job, c["step"])}}))
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


def _created(c: dict) -> float:
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(c["created_at"])
    except (TypeError, ValueError):
        return time.time()
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def checkpoint_objects(store: Any, job: dict) -> list[dict[str, Any]]:
    """The job's kept checkpoints, newest first, each with its metrics in both shapes clients read."""
    if not job["run_id"]:
        return []
    run_id = job["run_id"]
    recs = {(r["step"], r["split"]): r["metrics"] for r in store.step_records(run_id)}
    out = []
    for c in store.checkpoints(run_id):
        if not c["kept"] or not c["path"] or not Path(c["path"]).is_dir():
            continue
        step = c["step"]
        train = recs.get((step, "train"), {})
        cm = c["metrics"] or {}
        metrics = {"step": float(step),
                   "train_loss": _num(train.get("loss")), "train_mean_token_accuracy": None,
                   "valid_loss": None, "valid_mean_token_accuracy": None,
                   "full_valid_loss": None, "full_valid_mean_token_accuracy": None,
                   "train_mean_reward": _num(train.get("reward_mean")) if job["method_type"] == "reinforcement"
                   else None,
                   "full_valid_mean_reward": _num(c["val_reward"]),
                   "full_valid_mean_parse_error": _num(cm.get("grader_errors_mean/sample_parse_error", 0.0))
                   if c["val_reward"] is not None else None}
        created = _created(c)
        out.append({"id": f"ftckpt-{run_id}-{step}", "object": "fine_tuning.job.checkpoint",
                    "created_at": int(created), "fine_tuned_model_checkpoint": checkpoint_model_id(job, step),
                    "fine_tuning_job_id": job["id"], "step_number": step, "metrics": metrics,
                    "agentrft": {"checkpoint_id": c["id"], "path": c["path"], "valid": cm or None}})
    out.sort(key=lambda o: -o["step_number"])
    return out


def metrics_csv(store: Any, run_id: str) -> bytes:
    """The run's per-step metrics (train and valid rows, every metric a column) as CSV."""
    rows = store.step_metrics(run_id)
    cols = ["step", "split"] + sorted({k for r in rows for k in r} - {"step", "split"})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue().encode()


def page(items: list[dict], after: str | None, limit: int) -> dict[str, Any]:
    if after:
        ids = [i["id"] for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    chunk = items[:limit]
    return {"object": "list", "data": chunk, "has_more": len(items) > limit,
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}
