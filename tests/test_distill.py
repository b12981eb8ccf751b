"""``agentrft distill``: a real ``agentrft serve`` on loopback (a subprocess in the slow variant, uvicorn on a thread
in the default suite) is the teacher (a tiny model that has
memorised the correct solutions of four lookup rows), the real lookup tool runs its calls, the real grader keeps the
passing trajectories, the store records them with the server's billed tokens, and the untrained student learns them
by SFT until it solves the rows itself."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

import distill_helpers as dh
from proc_helpers import free_port
import lookup_task


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with dh.one_thread():
        yield


def _config(tmp_path, tiny_model, rows_file, **distill):
    cfg = {
        "model": str(tiny_model), "training_file": str(rows_file), "validation_file": str(rows_file),
        "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER, "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_new_tokens": 40, "max_turns": 4, "max_episode_steps": 4, "max_context_tokens": 512,
                            "lora": None, "eval_samples": 1, "temperature": 1.0, "eval_temperature": 0.05,
                            "micro_batch_size": 4},
        "distill": {"temperature": 0, "sft_epochs": 60, "sft_batch_size": 4, "sft_learning_rate": 3e-3,
                    "teacher": {"base_url": "http://127.0.0.1:9/v1", "model": "placeholder",
                                "price_prompt_per_million": 2.0, "price_completion_per_million": 8.0}, **distill},
    }
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def teacher(tiny_model, tmp_path_factory):
    rows = dh.teacher_rows()
    model = dh.build_teacher(tiny_model, tmp_path_factory.getbasetemp() / "distill-teacher", rows)
    return model, rows


@pytest.mark.parametrize("server", [
    "in_process",
    # the brief's setting: `agentrft serve` as a subprocess (heavy: a second process loading the model)
    pytest.param("subprocess", marks=pytest.mark.slow),
])
def test_distill_from_a_served_teacher_warm_starts_the_student(server, teacher, tiny_model, tmp_path):
    from agentrft.cli import app
    from agentrft.store import RunStore

    model, rows = teacher
    rows_file = dh.write_rows(rows, tmp_path / "train.jsonl")
    cfg = _config(tmp_path, tiny_model, rows_file)
    serve = dh.served if server == "subprocess" else dh.served_in_process
    with serve(model, tmp_path / "teacher-store.db") as base_url:
        res = CliRunner().invoke(app, ["distill", "--config", str(cfg), "--teacher", base_url, "--teacher-model",
                                       model.name, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    t = out["teacher"]
    # the teacher solved its memorised rows with one call each, through the real tool
    assert t["trajectories"] == 4 and t["pass_rate"] == 1.0 and t["kept_trajectories"] == 4
    store = RunStore(f"sqlite:///{tmp_path / 'runs' / 'agentrft.db'}")
    trajs = store.trajectories(out["run_id"], split="eval:teacher")
    assert len(trajs) == 4
    for tr in trajs:
        assert tr["reward"] == 1.0 and tr["outcome"] == "completed" and tr["checkpoint_id"] == f"teacher:{model.name}"
        calls = store.tool_calls(trace_id=tr["trace_id"])
        assert [(c["name"], c["status"]) for c in calls] == [("lookup", "ok")]
        row = rows[tr["row_index"]]
        assert calls[0]["output"] == f"{row['keys'][0]} is {row['table'][row['keys'][0]]}"
    # token usage: what the teacher's own server billed (its request log), per trajectory in the store, priced
    served_log = RunStore(f"sqlite:///{tmp_path / 'teacher-store.db'}").traces()
    assert len(served_log) == 8  # a tool call turn and an answer turn per row
    billed_prompt = sum(x["prompt_tokens"] for x in served_log)
    billed_completion = sum(x["completion_tokens"] for x in served_log)
    assert sum(tr["prompt_tokens"] for tr in trajs) == billed_prompt == t["teacher_prompt_tokens"]
    assert sum(tr["completion_tokens"] for tr in trajs) == billed_completion == t["teacher_completion_tokens"]
    assert sum(tr["cost"] for tr in trajs) == pytest.approx((2.0 * billed_prompt + 8.0 * billed_completion) / 1e6)
    # the demonstrations are the teacher's conversations; the student, untrained before, now solves the rows
    demos = [json.loads(x) for x in open(out["demos"])]
    assert len(demos) == 4 and all(d["messages"][-1]["content"] == d["answer"] for d in demos)
    assert out["sft"]["last_loss"] < out["sft"]["first_loss"] / 10
    assert out["student_eval"]["reward_mean"] >= 0.75, out
    ck = store.checkpoints(out["run_id"])
    assert [c["path"] for c in ck] == [out["student_dir"]]
    assert store.get_run(out["run_id"])["status"] == "succeeded"


def test_a_student_that_has_not_learned_scores_zero_on_the_same_rows(teacher, tiny_model, tmp_path):
    """The comparison the test above relies on: the untrained student does not solve the rows by itself."""
    from agentrft.config import load_config
    from agentrft.evals.evaluate import evaluate
    from agentrft.data import load_dataset
    from agentrft.rollout.stack import RolloutStack

    _, rows = teacher
    rows_file = dh.write_rows(rows, tmp_path / "train.jsonl")
    cfg = load_config(_config(tmp_path, tiny_model, rows_file))
    stack = RolloutStack.for_model(cfg, str(tiny_model))
    try:
        _, m = evaluate(stack.loop, list(load_dataset(rows_file)), stack.grader, samples=1, params=stack.eval_params,
                        seed=0)
    finally:
        stack.close()
    assert m["reward_mean"] == 0.0


def test_nothing_passed_is_an_error_naming_the_run(teacher, tiny_model, tmp_path):
    """Served by the untrained model, no teacher rollout passes: a clear error, the rollouts still in the store."""
    from agentrft.cli import app

    _, rows = teacher
    rows_file = dh.write_rows(rows[:2], tmp_path / "train.jsonl")
    cfg = _config(tmp_path, tiny_model, rows_file)
    with dh.served_in_process(tiny_model, tmp_path / "teacher-store.db", slots=2) as base_url:
        res = CliRunner().invoke(app, ["distill", "--config", str(cfg), "--teacher", base_url, "--teacher-model",
                                       tiny_model.name])
    assert res.exit_code == 2
    said = " ".join(res.output.split())  # (rich wraps long lines)
    assert "none of the 2 teacher trajectories passed the grader" in said
    assert "split eval:teacher" in said


def test_teacher_errors_are_answers(tiny_model, tmp_path):
    from agentrft.cli import app

    rows_file = dh.write_rows(dh.teacher_rows(2), tmp_path / "train.jsonl")
    cfg = _config(tmp_path, tiny_model, rows_file)
    # nothing listens on the port: every rollout is dropped with the connection error, and the run says so
    port = free_port()
    res = CliRunner().invoke(app, ["distill", "--config", str(cfg), "--teacher", f"http://127.0.0.1:{port}/v1",
                                   "--teacher-model", "m"])
    assert res.exit_code == 2
    said = " ".join(res.output.split())  # (rich wraps long lines)
    assert "every teacher rollout was dropped (2)" in said and "unreachable after 3 retries" in said
    # no tools/grader without --config or --env
    res = CliRunner().invoke(app, ["distill", "--teacher", "http://x/v1", "--teacher-model", "m"])
    assert res.exit_code == 2 and "--config run.yaml, or --env NAME" in " ".join(res.output.split())
    # a teacher URL that is not http(s) names the field
    res = CliRunner().invoke(app, ["distill", "--config", str(cfg), "--teacher", "ftp://x", "--teacher-model", "m"])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "distill.teacher" in said and "base_url" in said
    # on-policy distillation without a teacher is a config error naming the field
    from agentrft.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match="distill.teacher is required when distill.on_policy"):
        parse_config({"model": "m", "training_file": "t.jsonl", "grader": lookup_task.GRADER,
                      "distill": {"on_policy": True}})
