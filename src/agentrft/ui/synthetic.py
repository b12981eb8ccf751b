"""A synthetic run for the dashboard's tests and page-load benchmark: steps with metrics (and a monitor alert),
trajectories with tool calls and grades, eval checkpoints. Not a training run; the shapes are the trainer's."""

from __future__ import annotations

import json
import random

from agentrft.store import RunStore
from agentrft.types import Grade, ToolCall, Trajectory, Turn

TOOLS = ("search", "read_file", "answer_check")


def synthetic_trajectory(rng: random.Random, run_tag: str, step: int, row: int, sample: int, split: str) -> Trajectory:
    n_calls = rng.randint(0, 3)
    calls, turns = [], []
    for k in range(n_calls):
        status = "ok" if rng.random() > 0.1 else "error"
        c = ToolCall(call_id=f"call_{run_tag}_{step}_{split}_{row}_{sample}_{k}", name=TOOLS[rng.randrange(len(TOOLS))],
                     arguments=json.dumps({"query": f"item {row}", "k": k}), turn_index=k,
                     output=f"result {k} for row {row}" if status == "ok" else "", status=status,
                     error=None if status == "ok" else "backend said no", latency_s=round(rng.uniform(0.001, 0.2), 4))
        calls.append(c)
        turns.append(Turn(index=k, start=10 + 8 * k, end=16 + 8 * k, text=f'<tool_call>{{"name": "{c.name}"}}</tool_call>',
                          tool_calls=[c], gen_latency_s=0.01))
    turns.append(Turn(index=n_calls, start=100, end=104, text=f"answer {row % 7}", gen_latency_s=0.01))
    reward = round(rng.random(), 3)
    err = {"other_error": True} if rng.random() < 0.03 else {}
    messages = [{"role": "system", "content": "find the answer"}, {"role": "user", "content": f"task {row}"}]
    for c in calls:
        messages.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}]})
        messages.append({"role": "tool", "tool_call_id": c.call_id, "content": c.output})
    messages.append({"role": "assistant", "content": f"answer {row % 7}"})
    return Trajectory(
        trace_id=f"tr-{run_tag}-{split[:1]}{step}-{row}-{sample}", row_index=row, group_id=f"g{step}-{row}",
        sample_index=sample, split=split, messages=messages, prompt_len=40, turns=turns, reward=reward,
        advantage=reward - 0.5, latency_s=round(rng.uniform(0.05, 2.0), 3), tool_time_s=0.05,
        checkpoint_id=f"{run_tag}:step-{step}" if split == "valid" else None,
        grades=[Grade("correct", "string_check", "v1-3f9a2c", 0.0 if err else reward, passed=reward > 0.5, errors=err),
                Grade("process", "score_model", "v2-77be01", round(rng.random(), 3),
                      sub_rewards={"plan": 0.5, "tools": round(rng.random(), 2)},
                      turn_scores=[round(rng.random(), 2) for _ in turns], metadata={"holdout": True})],
    )


def fill_run(store: RunStore, *, steps: int = 10, rows_per_step: int = 8, group: int = 4, valid_rows: int = 6,
             eval_every: int = 5, seed: int = 0, name: str = "synthetic", status: str = "succeeded") -> str:
    """One run of ``steps`` train steps (``rows_per_step × group`` trajectories each) with validation evals at step 0
    and every ``eval_every``; returns its id. Step 3 carries a monitor alert."""
    rng = random.Random(seed)
    run_id = store.create_run(name, {"model": "tiny", "hyperparameters": {"batch_size": rows_per_step,
                                                                          "group_size": group}},
                              base_model="models/tiny")
    tag = run_id[-4:] + str(seed)
    for step in range(0, steps + 1):
        if step % eval_every == 0 or step == steps:
            trajs = [synthetic_trajectory(rng, tag, step, r, 0, "valid") for r in range(valid_rows)]
            m = _metrics(trajs, step, rng)
            m["valid_reward_mean"] = m["reward_mean"]
            store.record_step(run_id, step, "valid", m, trajs)
            store.record_checkpoint(run_id, f"{run_id}:step-{step}", step, f"/ckpt/step-{step}", m, m["reward_mean"])
        if step == 0:
            continue
        trajs = [synthetic_trajectory(rng, tag, step, r, s, "train") for r in range(rows_per_step) for s in range(group)]
        m = _metrics(trajs, step, rng)
        if step == 3:
            m["alerts"] = [{"signal": "entropy_collapse", "step": 3, "split": "train", "value": 0.1, "threshold": 0.2,
                            "message": "entropy fell below 20% of its first value"}]
            m["alert/entropy_collapse"] = 1.0
        store.record_step(run_id, step, "train", m, trajs)
    store.set_status(run_id, status)
    return run_id


def _metrics(trajs: list[Trajectory], step: int, rng: random.Random) -> dict:
    n = max(1, len(trajs))
    return {
        "reward_mean": sum(t.reward or 0 for t in trajs) / n,
        "grader/correct": sum(t.grades[0].score for t in trajs) / n,
        "grader/process": sum(t.grades[1].score for t in trajs) / n,
        "pass_rate": sum(1 for t in trajs if t.grades[0].passed) / n,
        "tool_calls_per_traj": sum(t.num_tool_calls for t in trajs) / n,
        "tool_errors_per_traj": sum(t.tool_errors for t in trajs) / n,
        "latency_s_mean": sum(t.latency_s for t in trajs) / n, "tool_time_s_mean": 0.05,
        "kl": 0.001 * step, "entropy": 2.0 / (1 + step), "clip_fraction": rng.random() * 0.1,
        "zero_variance_fraction": rng.random() * 0.3, "dropped_fraction": 0.0,
        "time/sampling": 0.5, "time/grading": 0.05, "time/training": 0.2, "time/full_iteration": 0.8,
    }
