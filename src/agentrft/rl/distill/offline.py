"""``agentrft distill``: the teacher's passing trajectories on our own tools, as the student's warm-start.

1. the teacher (``distill.teacher``: any OpenAI-compatible chat endpoint) runs as the agent on every training row,
   ``samples_per_row`` times, with the run's tool router and limits (:mod:`agentrft.rl.distill.teacher`);
2. the run's reward grader and holdout graders grade every rollout (:func:`agentrft.graders.batch.grade_trajectories`,
   the path training uses); all of it — messages, tool calls, grades, the teacher's billed tokens and cost — is
   recorded in the store as a run's ``eval:teacher`` split at step 0;
3. the rollouts that pass (``distill.min_reward``, or the grader's pass flag) and fit the student's context become
   demonstrations (the row with the teacher's conversation, OpenAI chat JSONL), written atomically to the run's
   directory;
4. the student (the config's ``model``) is fine-tuned on them with the project's SFT path (:func:`agentrft.rl.sft.run_sft`,
   loss on assistant tokens only) and, unless ``evaluate=False``, evaluated on the validation rows like a checkpoint
   (recorded as ``valid`` at step 1 with the student as a checkpoint of the run).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agentrft.config import ConfigError, DistillConfig, RunConfig, TeacherConfig
from agentrft.data import load_datasets, write_jsonl
from agentrft.evals.metrics import agent_metrics, passed
from agentrft.graders.batch import grade_trajectories
from agentrft.redact import redact_config
from agentrft.rl.distill.teacher import TeacherClient, TeacherError, TeacherTask, TeacherTrajectory, run_teacher
from agentrft.rollout.stack import RolloutStack
from agentrft.store.heartbeat import Heartbeat
from agentrft.store import RunStore


class DistillError(RuntimeError):
    """Distillation cannot go on (no teacher configured, nothing passed); the message says why."""


@dataclass
class DistillResult:
    run_id: str
    student_dir: Path | None
    demos_path: Path
    teacher: dict[str, Any]  # teacher rollouts' metrics: reward, pass rate, tokens, cost, kept
    sft: dict[str, Any] = field(default_factory=dict)
    student_eval: dict[str, Any] | None = None
    wall_s: float = 0.0


def distill_settings(cfg: RunConfig, *, teacher_url: str | None = None, teacher_model: str | None = None
                     ) -> DistillConfig:
    """The config's ``distill`` section with the command line's teacher over it; errors name the field."""
    d = cfg.distill or DistillConfig()
    t = d.teacher
    if teacher_url or teacher_model:
        if t is None and not (teacher_url and teacher_model):
            raise ConfigError("distill.teacher: give both --teacher BASE_URL and --teacher-model M (the config has "
                              "no distill.teacher)")
        data = t.model_dump() if t is not None else {}
        data.update({k: v for k, v in (("base_url", teacher_url), ("model", teacher_model)) if v})
        try:
            t = TeacherConfig.model_validate(data)
        except ValueError as e:
            raise ConfigError(f"distill.teacher: {e}") from None
    if t is None:
        raise ConfigError("distill.teacher: no teacher — pass --teacher BASE_URL --teacher-model M or set "
                          "distill.teacher: {base_url, model} in the config")
    return d.model_copy(update={"teacher": t})


def keeps(traj: TeacherTrajectory, min_reward: float | None) -> bool:
    """Whether a graded teacher rollout becomes a demonstration: not dropped, ended with an answer, and passing."""
    if traj.dropped or traj.outcome != "completed" or traj.reward is None:
        return False
    return traj.reward >= min_reward if min_reward is not None else passed(traj)


def run_distill(cfg: RunConfig, *, teacher_url: str | None = None, teacher_model: str | None = None,
                max_rows: int | None = None, evaluate_student: bool = True, train: bool = True,
                say: Callable[[str], None] = lambda s: None) -> DistillResult:
    t_start = time.perf_counter()
    d = distill_settings(cfg, teacher_url=teacher_url, teacher_model=teacher_model)
    assert d.teacher is not None
    hp = cfg.hyperparameters
    stack = RolloutStack(cfg)  # router + graders; config errors surface before any request
    try:
        client = TeacherClient.from_config(d.teacher)
    except TeacherError as e:
        stack.close()
        raise ConfigError(str(e)) from None
    try:
        train_path, valid_path = cfg.path(cfg.training_file), cfg.path(cfg.validation_file)
        train_rows, valid_rows = load_datasets(train_path, valid_path, known_tools=stack.router.names or None)
        if max_rows is not None:
            train_rows = train_rows[:max_rows]
        if hp.eval_rows is not None and valid_rows:
            valid_rows = valid_rows[: hp.eval_rows]
        if not train_rows:
            raise DistillError(f"{train_path}: no training rows")
        store = RunStore(cfg.store_url)
        run_id = store.create_run(cfg.name or f"distill-{Path(cfg.training_file).stem}",
                                  redact_config({**cfg.model_dump(), "distill": d.model_dump()}),
                                  base_model=cfg.model, output_dir=str(cfg.output_path))
        run_dir = cfg.output_path / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        store.set_status(run_id, "running")
        beat = Heartbeat(store, run_id).start()  # a SIGKILLed distillation shows as interrupted, not running
        try:
            result = _distill(cfg, d, stack, client, store, run_id, run_dir, train_rows, valid_rows,
                              str(Path(train_path).parent), str(Path(valid_path).parent) if valid_path else None,
                              evaluate_student=evaluate_student, train=train, say=say)
        except BaseException:
            try:
                store.set_status(run_id, "failed")
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
            raise
        finally:
            beat.stop()
        store.set_status(run_id, "succeeded")
        result.wall_s = time.perf_counter() - t_start
        return result
    finally:
        client.close()
        stack.close()


def _distill(cfg: RunConfig, d: DistillConfig, stack: RolloutStack, client: TeacherClient, store: RunStore,
             run_id: str, run_dir: Path, train_rows: list[Any], valid_rows: list[Any], data_dir: str,
             valid_dir: str | None, *, evaluate_student: bool, train: bool, say: Callable[[str], None]
             ) -> DistillResult:
    from agentrft.rl.trainer import rollout_seed

    hp = cfg.hyperparameters
    tasks = [TeacherTask(row=r, seed=rollout_seed(hp.seed, 0, r.index, k), sample_index=k, data_dir=data_dir)
             for r in train_rows for k in range(d.samples_per_row)]
    say(f"teacher {d.teacher.model} at {d.teacher.base_url}: {len(tasks)} rollouts "  # type: ignore[union-attr]
        f"({len(train_rows)} rows x {d.samples_per_row})")
    t0 = time.perf_counter()
    trajs = run_teacher(client, stack.router, tasks, stack.limits, temperature=d.temperature,
                        max_tokens=hp.max_new_tokens, workers=d.workers)
    t_teacher = time.perf_counter() - t0
    live = [t for t in trajs if not t.dropped]
    if not live:
        reasons = sorted({t.drop_reason or "" for t in trajs})
        raise DistillError(f"every teacher rollout was dropped ({len(trajs)}): {'; '.join(reasons)[:600]}")
    grade_trajectories(trajs, {r.index: r.item for r in train_rows}, stack.grader, holdouts=stack.holdouts,
                       response_format=cfg.response_format)
    kept = [t for t in trajs if keeps(t, d.min_reward)]
    prompt_tok = sum(t.prompt_len for t in trajs)
    completion_tok = sum(t.usage_completion_tokens for t in trajs)
    costs = [t.cost for t in trajs if t.cost is not None]
    m = agent_metrics(trajs)
    m.update({"step": 0, "kept_trajectories": len(kept), "kept_fraction": len(kept) / len(trajs),
              "teacher_prompt_tokens": prompt_tok, "teacher_completion_tokens": completion_tok,
              "teacher_requests": sum(t.requests for t in trajs), "time/teacher": t_teacher})
    if costs:
        m["teacher_cost"] = sum(costs)
    store.record_step(run_id, 0, "eval:teacher", m, trajs)
    say(f"teacher: reward {m['reward_mean']:.3f}, pass rate {m['pass_rate']:.2f}, kept {len(kept)}/{len(trajs)}, "
        f"{prompt_tok} prompt + {completion_tok} completion tokens in {t_teacher:.1f}s")

    demos_path = run_dir / "teacher_demos.jsonl"
    rows_by_index = {r.index: r for r in train_rows}
    demos = []
    for t in kept:
        row = rows_by_index[t.row_index]
        demo = dict(row.item)
        demo["messages"] = t.messages
        if row.tools:
            demo["tools"] = row.tools
        elif stack.router.schemas():
            demo["tools"] = stack.router.schemas()
        demos.append(demo)
    write_jsonl(demos_path, demos, dumps=json.dumps)
    teacher = {k: m[k] for k in ("reward_mean", "pass_rate", "kept_trajectories", "kept_fraction",
                                 "teacher_prompt_tokens", "teacher_completion_tokens", "teacher_requests",
                                 "time/teacher", "trajectories", "dropped_fraction")}
    if costs:
        teacher["teacher_cost"] = sum(costs)
    result = DistillResult(run_id, None, demos_path, teacher)
    if not train:
        return result
    if not kept:
        raise DistillError(f"none of the {len(trajs)} teacher trajectories passed the grader (reward mean "
                           f"{m['reward_mean']:.3f}; distill.min_reward={d.min_reward}) — nothing to warm-start on; "
                           f"they are in the store under run {run_id}, split eval:teacher")
    from agentrft.rl.sft import run_sft

    say(f"SFT of {cfg.model} on {len(kept)} teacher trajectories ({d.sft_epochs} epochs)")
    sft = run_sft(cfg.model_path, demos_path, run_dir / "student", epochs=d.sft_epochs,
                  batch_size=d.sft_batch_size, learning_rate=d.sft_learning_rate, seed=hp.seed,
                  micro_batch_size=hp.micro_batch_size, max_tokens=hp.max_context_tokens)
    result.student_dir = sft.out_dir
    result.sft = {"steps": sft.steps, "examples": sft.examples, "tokens": sft.tokens, "first_loss": sft.first_loss,
                  "last_loss": sft.last_loss, "wall_s": sft.wall_s}
    say(f"SFT: {sft.steps} steps, loss {sft.first_loss:.3f} -> {sft.last_loss:.3f} in {sft.wall_s:.1f}s")
    ckpt_id = f"{run_id}:student"
    metrics: dict[str, Any] = {"sft_" + k: v for k, v in result.sft.items()}
    reward = None
    if evaluate_student and valid_rows:
        from agentrft.evals.evaluate import evaluate
        from agentrft.rollout.stack import load_policy

        stack.attach(load_policy(sft.out_dir), version=ckpt_id)
        assert stack.loop is not None
        vt, vm = evaluate(stack.loop, list(valid_rows), stack.grader, samples=hp.eval_samples,
                          params=stack.eval_params, seed=hp.seed, split="valid", holdouts=stack.holdouts,
                          response_format=cfg.response_format, data_dir=valid_dir)
        for t in vt:
            t.checkpoint_id = ckpt_id
        vm.update({"step": 1, "valid_reward_mean": vm["reward_mean"]})
        store.record_step(run_id, 1, "valid", vm, vt)
        result.student_eval = vm
        metrics.update(vm)
        reward = float(vm["reward_mean"])
        say(f"student: validation reward {vm['reward_mean']:.3f}, pass rate {vm['pass_rate']:.2f}")
    store.record_checkpoint(run_id, ckpt_id, 1, str(sft.out_dir), metrics, reward, kept=True)
    return result
