"""The training loop: rollouts → grades → group advantages → update → evals → checkpoints, all recorded.

One step:

1. take ``batch_size`` rows from the epoch's shuffled order (the *data cursor*, saved in checkpoints), or the
   curriculum pool's draw (``curriculum``: agentrft.rl.curriculum, its state saved beside the cursor);
2. roll out ``group_size`` trajectories per row with the current policy (one group per row);
3. grade them (reward = the configured grader's score; holdout graders are recorded beside it); with
   ``dynamic_sampling``, roll out and grade new rows in place of zero-variance groups, within its budget;
4. compute group advantages, skip zero-variance groups and dropped rollouts, turn them into per-token
   advantages (process credit, GiGPO step credit, segment-DPO preferences: agentrft.rl.step_advantages), and take
   ``mini_batches`` optimizer steps of the clipped policy loss;
5. record the step — metrics and every trajectory with its tool calls and grades — in one store transaction,
   written by a background thread while the next step rolls out (evals and checkpoints wait for it);
6. every ``eval_interval`` steps (and at the end): evaluate on the validation set, save an eval checkpoint,
   keep the best ``keep_checkpoints`` by validation reward;
7. save the resume checkpoint (``latest``) atomically — after an eval, at the end, on pause, and otherwise once
   ``save_interval_s`` has passed since the last save (writing weights and optimizer state every step was a
   sizeable share of a small model's step: docs/spine.md).

Resume: ``latest`` holds weights, optimizer, RNG, data cursor and step s; the store's records after s (written
by steps whose checkpoint never landed, at most ``save_interval_s`` of work) are deleted, and training
continues at s + 1 — no duplicated or missing trajectories.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrft.config import ConfigError, RunConfig
from agentrft.data import Row, load_datasets
from agentrft.evals.evaluate import evaluate
from agentrft.evals.metrics import agent_metrics
from agentrft.graders.batch import grade_trajectories
from agentrft.heap import long_lived_objects_frozen
from agentrft.policy.checkpoint_io import recover as recover_checkpoint
from agentrft.policy.learner import Learner
from agentrft.rl.advantages import assign_advantages, estimator
from agentrft.redact import redact_config
from agentrft.rl.loss import build_loss
from agentrft.rl.run_lifecycle import Heartbeat, abort_start, set_status_quietly
from agentrft.rl.sampling_levers import SamplingLevers
from agentrft.rl.step_advantages import step_token_advantages
from agentrft.rl.signal import SignalWatch, budget_message, prompts_over_budget
from agentrft.rollout.agent import RolloutTask
from agentrft.rollout.stack import ModelLoadError, RolloutStack, load_policy
from agentrft.store import RunStore


class TrainingError(RuntimeError):
    """A problem that stops a run before or during training, with a message for the user. ``field``: the config
    field at fault when there is one (``model``, ``tools``, ``hyperparameters``), for callers that report it apart
    (the fine-tuning jobs API's ``error.param``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class Cursor:
    """Position in the training data: epoch and offset into that epoch's shuffled order."""

    epoch: int = 0
    offset: int = 0

    def take(self, n_rows: int, batch: int, seed: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch:
            order = list(range(n_rows))
            random.Random(seed * 7_919 + self.epoch).shuffle(order)
            need = batch - len(out)
            chunk = order[self.offset : self.offset + need]
            out += chunk
            self.offset += len(chunk)
            if self.offset >= n_rows:
                self.epoch, self.offset = self.epoch + 1, 0
        return out


def rollout_seed(seed: int, step: int, row: int, k: int) -> int:
    return (seed * 2_654_435_761 + step * 1_000_003 + row * 7_919 + k * 104_729) % (2**62)


class Trainer:
    def __init__(self, cfg: RunConfig, *, resume: str | None = None, progress: bool = True, console: Any = None):
        self.cfg = cfg
        self.hp = cfg.hyperparameters
        self.progress = progress
        self.console = console
        self.resume_id = resume
        self.timings: dict[str, float] = {}
        self._remote: Any = None  # agentrft.rl.remote_training.RemoteTraining (sampler: {type: remote})
        self._async: Any = None  # agentrft.rl.async_rollouts.AsyncRollouts (rollout.max_staleness > 0)

    # ---- setup -------------------------------------------------------------------------------------
    def _setup(self) -> None:
        self._check_inputs()  # everything that can be wrong with the inputs, before the model loads
        model_path = self._open_run()
        self._load_learner(model_path)
        if self.resume_id:
            self._restore()
        if self._remote:
            self._remote.start(self.learner, self.start_step)
        from agentrft.loggers import open_loggers  # last: a start that fails before here leaves no tracker run open

        self.loggers = open_loggers(self.cfg.loggers, self.run_dir, self.run_id, self.cfg.model_dump(),
                                    name=self.cfg.name or Path(self.cfg.training_file).stem, say=self._say)
        self.store.set_status(self.run_id, "running")

    def _check_inputs(self) -> None:
        """Loss, advantage estimator, tools, graders and datasets; the store and its writer thread."""
        cfg, hp = self.cfg, self.hp
        try:
            self.loss_fn, self.advantage_fn = build_loss(hp), estimator(hp.advantage)
        except ValueError as e:
            raise TrainingError(str(e), field="hyperparameters") from None
        try:
            self.stack = RolloutStack(cfg)
        except ConfigError as e:
            raise TrainingError(str(e), field="tools") from None
        self.router, self.grader, self.holdouts = self.stack.router, self.stack.grader, self.stack.holdouts
        train_path, valid_path = cfg.path(cfg.training_file), cfg.path(cfg.validation_file)
        self.train_rows, self.valid_rows = load_datasets(train_path, valid_path, known_tools=self.router.names or None)
        if hp.eval_rows is not None and self.valid_rows:
            self.valid_rows = self.valid_rows[: hp.eval_rows]  # the same rows at every eval: paired
        if not self.train_rows:
            raise TrainingError(f"{train_path}: no training rows")
        try:  # curriculum and dynamic sampling (agentrft.rl.sampling_levers)
            self.levers = SamplingLevers(cfg, self.train_rows)
        except ValueError as e:
            raise TrainingError(str(e), field="curriculum") from None
        self.data_dir = str(Path(train_path).parent)
        self.valid_dir = str(Path(valid_path).parent) if valid_path else self.data_dir
        self.store = RunStore(cfg.store_url, mode="existing" if self.resume_id else "create")  # --resume creates nothing
        # a train step's record (one transaction) is written by this thread while the next step rolls out; at most one is in flight, and evals, checkpoints and the end of
        # the run wait for it, so a `latest` checkpoint at step s always comes after the records up to s
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="agentrft-store")
        self._write: Future | None = None
        from agentrft.evals.monitors import Monitor

        self.monitor = Monitor(cfg.monitors, holdout_names=[g.name for g in self.holdouts.values()])
        from agentrft.loggers import LoggerConfigError, check_loggers  # tensorboard/mlflow/wandb/trackio sinks

        try:
            check_loggers(cfg.loggers)
        except LoggerConfigError as e:
            raise TrainingError(f"config: {e}") from None
        self.paused = False
        steps_per_epoch = math.ceil(len(self.train_rows) / hp.batch_size)
        self.total_steps = hp.max_steps or hp.n_epochs * steps_per_epoch
        self._signal = SignalWatch(hp.max_signal_free_steps, TrainingError)  # stops a run that cannot learn

    def _open_run(self) -> str:
        """The run record (new, or the one being resumed) and its directory; returns the model to load (the
        resumed run's ``latest`` when it has one)."""
        cfg = self.cfg
        self.start_step = 1
        self.cursor = Cursor()
        model_path = cfg.model_path
        if self.resume_id:
            run = self.store.get_run(self.resume_id)
            if run is None:
                raise TrainingError(f"--resume: no run {self.resume_id!r} in {cfg.store_url}")
            self.run_id = run["id"]
            self.run_dir = cfg.output_path / self.run_id
            latest = self.run_dir / "latest"
            recover_checkpoint(latest)  # a kill mid-swap left latest.tmp/.old: the newest complete one is `latest`
            if latest.exists():
                model_path = str(latest)
        else:
            self.run_id = self.store.create_run(cfg.name or Path(cfg.training_file).stem, redact_config(cfg.model_dump()),
                                                base_model=cfg.model, output_dir=str(cfg.output_path))
            self.run_dir = cfg.output_path / self.run_id
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(redact_config(cfg.model_dump()), indent=2, default=str))
        return model_path

    def _load_learner(self, model_path: str) -> None:
        """The policy, the learner around it (LoRA or full), and the sampler and agent loop over the learner's
        model."""
        hp = self.hp
        torch.manual_seed(hp.seed)
        random.seed(hp.seed)
        try:
            policy = load_policy(model_path)
        except ModelLoadError as e:
            raise TrainingError(str(e), field="model") from None
        self.tokenizer, self.renderer = policy.tokenizer, policy.renderer
        try:
            self.learner = Learner(
                policy.model, lora=hp.lora, learning_rate=hp.learning_rate, weight_decay=hp.weight_decay,
                grad_clip=hp.grad_clip, temperature=hp.temperature, kl_coef=hp.kl_coef,
                micro_batch_size=hp.micro_batch_size, pad_id=policy.pad_id, compile=hp.compile_learner,
            )
        except ValueError as e:  # a setting this machine cannot honour (compile_learner without a compiler)
            raise TrainingError(f"hyperparameters: {e}") from None
        # sampler: {type: remote}: a server samples, the learner's weights are pushed to it after each update
        self._remote = self._remote_training(policy)
        self.stack.attach(policy, model=self.learner.model,  # else: the learner's own (LoRA-wrapped) model
                          sampler=self._remote.sampler if self._remote else None)
        # on-policy distillation (distill.on_policy): per-token teacher advantages, agentrft.rl.distill.onpolicy
        from agentrft.rl.distill.onpolicy import build_distiller

        try:
            self.distiller = build_distiller(self.cfg, self.tokenizer)
        except Exception as e:  # a teacher key that is not set
            raise TrainingError(f"distill.teacher: {e}", field="distill") from None
        self.sampler, self.loop = self.stack.sampler, self.stack.loop
        if self._remote and self._remote.pool:  # rollout.backend: ray — the same run() over Ray actors
            self.loop = self._remote.pool
        self._check_prompt_budget()
        self.train_params, self.eval_params = self.stack.train_params, self.stack.eval_params
        self.best: list[tuple[float, int, str]] = []  # (val reward, step, checkpoint dir)

    def _remote_training(self, policy: Any) -> Any:
        """The remote sampler's engine, client, weight sync and async-safety monitor (agentrft.rl.remote_training),
        or None for the in-process sampler."""
        if self.cfg.sampler.type != "remote":
            return None
        from agentrft.policy.engine_process import EngineStartError
        from agentrft.policy.remote_sampler import RemoteSamplerError
        from agentrft.rl.remote_training import RemoteTraining

        try:
            rt = RemoteTraining.build(self.cfg, self.run_dir, self.run_id, policy.renderer.stop_ids)
        except (EngineStartError, RemoteSamplerError, ValueError) as e:
            raise TrainingError(str(e), field="sampler") from None
        try:
            rt.start_pool(self.cfg, policy.ref)
        except Exception as e:
            rt.close()
            raise TrainingError(f"rollout: {e}", field="rollout") from None
        return rt

    def _check_prompt_budget(self) -> None:
        """Rows whose prompt alone fills the context: warned about with their count before training; a run where
        every training row is over stops here (each rollout would end at context_limit with reward 0)."""
        schemas = self.router.schemas() or None

        def prompt_len(r: Row) -> int:
            return len(self.renderer.prompt_ids(r.messages, r.tools if r.tools else schemas))

        limit = self.hp.max_context_tokens
        for rows, name in ((self.train_rows, self.cfg.training_file), (self.valid_rows, self.cfg.validation_file)):
            over = prompts_over_budget(rows, prompt_len, limit) if rows else []
            if not over:
                continue
            msg = budget_message(str(self.cfg.path(name)), over, len(rows), limit)
            if rows is self.train_rows and len(over) == len(rows):
                raise TrainingError(msg)
            self._warn(f"warning: {msg}")

    def _warn(self, msg: str) -> None:
        """A loud line: on the console, else as a Python warning (library use without a console)."""
        if self.console is not None:
            from rich.markup import escape

            self.console.print(f"[bold yellow]{escape(msg)}[/]", markup=True, highlight=False)
        else:
            warnings.warn(msg, stacklevel=2)

    def _restore(self) -> None:
        """Optimizer, RNG, data cursor and best checkpoints from ``latest``; the store's records written after it
        are deleted (those steps run again), and the monitors replay the history up to it."""
        from agentrft.evals.monitors import replay_state

        latest = self.run_dir / "latest"
        if latest.exists():
            state = self.learner.load_state(latest)
            self.start_step = int(state["step"]) + 1
            self.cursor = Cursor(**state["cursor"])
            self.best = [tuple(b) for b in state.get("best", [])]  # type: ignore[misc]
            self.levers.load_state_dict(state.get("levers") or {})
            removed = self.store.delete_after(self.run_id, int(state["step"]))
            replay_state(self.store, self.run_id, self.monitor, int(state["step"]))
        else:
            removed = self.store.delete_after(self.run_id, -1)
        self._say(f"resuming {self.run_id} at step {self.start_step} (removed {removed} records written after "
                  "the last checkpoint)")

    def _say(self, msg: str) -> None:
        if self.console is not None:  # plain text: a '[store]' prefix or a '[/x]' in an error is not markup
            self.console.print(msg, markup=False, highlight=False)

    # ---- main loop ---------------------------------------------------------------------------------
    def run(self) -> str:
        try:
            self._setup()
        except BaseException:
            abort_start(self)  # recorded as failed, not queued forever; the new run's directory removed
            if getattr(self, "_remote", None):
                self._remote.close()  # stops the engine it started
            raise
        beat = Heartbeat(self.store, self.run_id).start()  # a killed run shows as interrupted once it stops
        try:
            self._train()
            last = None if self.paused else self._signal.final_warning()
            if last:
                self._warn(last)
        except KeyboardInterrupt:
            set_status_quietly(self.store, self.run_id, "cancelled")
            raise
        except Exception:
            set_status_quietly(self.store, self.run_id, "failed")
            raise
        finally:
            beat.stop()
            self.router.close()
            if getattr(self, "_remote", None):
                self._remote.close()
            if getattr(self, "distiller", None) is not None:
                self.distiller.close()
            self._writer.shutdown(wait=True)
            self.loggers.close()
        self.store.set_status(self.run_id, "paused" if self.paused else "succeeded")
        return self.run_id

    def _train(self) -> None:
        from agentrft.progress import TrainProgress

        if self.cfg.rollout.max_staleness:
            from agentrft.rl.async_rollouts import producer

            self._async = producer(self)

        self._last_save = time.monotonic()
        self._saved_step = self.start_step - 1 if self.start_step > 1 else None  # the step `latest` holds
        with long_lived_objects_frozen(), \
                TrainProgress(self.total_steps, enabled=self.progress, console=self.console) as prog:
            try:
                self._loop(prog)
            except BaseException:
                self._flush_writes(raise_errors=False)  # the step that failed is not recorded; the one before is
                raise
            finally:
                if self._async:
                    self._async.close()
            self._flush_writes()

    def _loop(self, prog: Any) -> None:
        prog.advance_to(self.start_step - 1)
        if self.start_step == 1 and self.valid_rows:
            self._eval(0, prog)
            if self._pause_if_alerted(0):
                return
        for step in range(self.start_step, self.total_steps + 1):
            metrics = self._train_step(step, prog)
            evaluated = bool(self.valid_rows) and (step % self.hp.eval_interval == 0 or step == self.total_steps)
            if evaluated:
                self._eval(step, prog)  # its wall time is recorded as time/eval on the valid row
            if (evaluated or step == self.total_steps
                    or time.monotonic() - self._last_save >= self.hp.save_interval_s):
                self._save_latest(step)
            prog.step_done(step, metrics)
            if self._pause_if_alerted(step):
                return

    def _flush_writes(self, raise_errors: bool = True) -> None:
        """Wait for the train-step record being written in the background; its error is raised here."""
        w, self._write = self._write, None
        if w is None:
            return
        try:
            w.result()
        except Exception as e:
            if raise_errors:
                raise
            self._say(f"[store] the last step's record was not written: {type(e).__name__}: {e}")

    def _pause_if_alerted(self, step: int) -> bool:
        """Monitors (agentrft.evals.monitors): with ``monitors.pause_on_alert``, an alert at this step pauses the
        run — ``latest`` is saved, the status becomes "paused", and ``--resume`` continues at step + 1."""
        alerts = [a for a in self.monitor.history if a.step == step]
        for a in alerts:
            self._say(f"[monitor] step {step} {a.split}: {a.signal}: {a.message}")
        if not self.monitor.should_pause(alerts) or step >= self.total_steps:
            return False
        if self._saved_step != step:
            self._save_latest(step)
        self.paused = True
        self._say(f"run paused at step {step} on monitor alerts (resume with --resume {self.run_id})")
        return True

    def _train_step(self, step: int, prog: Any) -> dict[str, Any]:
        hp = self.hp
        t_iter = time.perf_counter()
        batch = self._async.take(step) if self._async else None  # rollout.max_staleness: sampled in the background
        self._step_timing = {"sampling": 0.0, "grading": 0.0}
        lever_metrics: dict[str, Any] = {}
        if batch is None:
            row_ids = self.levers.take(step, self.cursor, hp.batch_size, hp.seed)
            rows: list[Row] = [self.train_rows[i] for i in row_ids]
            self.sampler.version = f"{self.run_id}:policy-{step - 1}"  # the weights that sample this step
            trajs = self._rollout_groups(step, rows, prog, 0)
            trajs, lever_metrics = self.levers.after_rollouts(  # dynamic sampling's refills; the pool's update
                step, trajs, lambda n, rnd: self._rollout_groups(
                    step, [self.train_rows[i] for i in self.levers.more_rows(step, self.cursor, n, hp.seed)],
                    prog, (rnd + 1) * 100_000))
            t_sample, t_grade = self._step_timing["sampling"], self._step_timing["grading"]
        else:  # async (the config refuses curriculum / dynamic sampling with it: the producer takes rows in order)
            rows, (trajs, self.cursor) = batch.rows, (batch.trajs, Cursor(*batch.cursor))
            t_sample = self._async.waited_s  # the time this step waited (its own sampling: time/batch_sampling)
            t0 = time.perf_counter()
            grade_trajectories(trajs, {r.index: r.item for r in rows}, self.grader, holdouts=self.holdouts,
                               response_format=self.cfg.response_format)
            t_grade = time.perf_counter() - t0
        counts = assign_advantages(trajs, self.advantage_fn)
        trained, advs, adv_metrics = step_token_advantages(trajs, hp)  # gigpo / segment DPO when configured
        lever_metrics.update(adv_metrics)
        if self._remote:
            self._remote.measure(step, trajs, self.learner)  # before the update: lag + sampler-vs-learner KL
        t0 = time.perf_counter()
        upd: dict[str, float] = {}
        distilled: dict[str, float] = {}
        if self.distiller is not None:  # on-policy distillation: every rollout trains on the teacher's log-probs
            from agentrft.rl.distill.teacher import TeacherError

            try:
                trained, advs, distilled = self.distiller.advantages(trajs)
            except TeacherError as e:  # the teacher stopped answering, or its tokenizer is not the student's
                raise TrainingError(f"distill.teacher: {e}", field="distill") from None
        if trained:
            if self._remote:  # rollout.tis_cap: decoupled ratio with truncated importance weights
                trained, advs = self._remote.importance(step, trained, advs)
            order = list(trained)
            random.Random(hp.seed + step).shuffle(order)
            n = hp.mini_batches
            chunks = [order[i::n] for i in range(n) if order[i::n]]
            stats = [self.learner.rl_step(c, [advs[t.trace_id] for t in c], self.loss_fn) for c in chunks]
            upd = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
            if hp.kl_coef == 0 and self.learner.is_lora:
                upd["kl"] = self.learner.kl_to_reference(trained)
        t_train = time.perf_counter() - t0
        if self._remote:
            self._remote.sync(step, self.learner)  # the engine samples policy-<step> from now on
        if self._async:
            self._async.updated(step)  # lets the batches that were waiting for policy-<step> start
        m = agent_metrics(trajs)
        m.update({
            "step": step,
            "zero_variance_fraction": counts["zero_variance_groups"] / max(1, counts["groups"]),
            "trained_trajectories": counts["trained_trajectories"],
            "kl": upd.get("kl", 0.0), "entropy": upd.get("entropy", 0.0),
            "clip_fraction": upd.get("clip_fraction", 0.0), "loss": upd.get("loss", 0.0),
            "grad_norm": upd.get("grad_norm", 0.0), "ratio_mean": upd.get("ratio_mean", 1.0),
            "time/sampling": t_sample, "time/grading": t_grade, "time/training": t_train,
            "epoch": self.cursor.epoch,
        })
        m.update(lever_metrics)
        m["train_reward_mean"] = m["reward_mean"]
        m.update(distilled)
        self.monitor.observe_train(step, m, trajs)
        if self._remote:
            self._remote.report(step, m, self.monitor)
        if batch is not None:
            m["time/batch_sampling"] = batch.sample_s
        # rollouts + grading + update + bookkeeping; evals are timed on their own (valid) row
        m["time/full_iteration"] = time.perf_counter() - t_iter
        self._flush_writes()  # the previous step's record: records land in step order, one in flight
        self._write = self._writer.submit(self.store.record_step, self.run_id, step, "train", m, trajs)
        self.loggers.log_step(step, "train", m, trajs)
        line = self._signal.observe(step, trajs)  # raises TrainingError after max_signal_free_steps in a row
        if line:
            self._warn(line)
        return m

    def _rollout_groups(self, step: int, rows: list[Row], prog: Any, first: int) -> list[Any]:
        """Roll out and grade one group per row (group ids numbered from ``first``); time added to the step's."""
        hp = self.hp
        tasks = [
            RolloutTask(row=r, seed=rollout_seed(hp.seed, step, r.index, k), split="train",
                        group_id=f"s{step}-r{r.index}-{first + j}", sample_index=k, data_dir=self.data_dir)
            for j, r in enumerate(rows)
            for k in range(hp.group_size)
        ]
        t0 = time.perf_counter()
        prog.start_rollouts(len(tasks), "rollouts")
        trajs = self.loop.run(tasks, self.train_params, on_done=prog.rollout_done)
        self._step_timing["sampling"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        grade_trajectories(trajs, {r.index: r.item for r in rows}, self.grader, holdouts=self.holdouts,
                           response_format=self.cfg.response_format)
        self._step_timing["grading"] += time.perf_counter() - t0
        return trajs

    def _eval(self, step: int, prog: Any) -> dict[str, Any]:
        hp = self.hp
        prog.start_rollouts(len(self.valid_rows) * hp.eval_samples, f"eval @ step {step}")
        t0 = time.perf_counter()
        trajs, m = evaluate(
            self.loop, list(self.valid_rows), self.grader, samples=hp.eval_samples, params=self.eval_params,
            seed=hp.seed, split="valid", holdouts=self.holdouts, response_format=self.cfg.response_format,
            data_dir=self.valid_dir, on_done=prog.rollout_done,
        )
        ckpt_id = f"{self.run_id}:step-{step}"
        for t in trajs:
            t.checkpoint_id = ckpt_id
        m["step"] = step
        m["valid_reward_mean"] = m["reward_mean"]
        m["time/eval"] = time.perf_counter() - t0
        self.levers.observe_eval(self.valid_rows, trajs)  # the curriculum's weaknesses
        self.monitor.observe_eval(step, m, trajs)
        self._flush_writes()
        self.store.record_step(self.run_id, step, "valid", m, trajs)
        self.loggers.log_step(step, "valid", m, trajs)
        self._save_eval_checkpoint(step, ckpt_id, m)
        prog.eval_done(step, m)
        return m

    # ---- checkpoints -------------------------------------------------------------------------------
    def _state(self, step: int) -> dict[str, Any]:
        return {"step": step, "cursor": {"epoch": self.cursor.epoch, "offset": self.cursor.offset},
                "best": [list(b) for b in self.best], "run_id": self.run_id, "base_model": self.cfg.model_path,
                "levers": self.levers.state_dict()}

    def _save_latest(self, step: int) -> None:
        self._flush_writes()  # the checkpoint at `step` must not get ahead of the records up to `step`
        self.learner.save(self.run_dir / "latest", self.tokenizer, self._state(step))
        self._saved_step, self._last_save = step, time.monotonic()

    def _save_eval_checkpoint(self, step: int, ckpt_id: str, m: dict[str, Any]) -> None:
        path = self.run_dir / "checkpoints" / f"step-{step:06d}"
        reward = float(m["reward_mean"])
        self.best.append((reward, step, str(path)))
        # best first; ties broken by the earlier step (fewer updates for the same reward)
        self.best.sort(key=lambda b: (-b[0], b[1]))
        kept = self.best[: self.hp.keep_checkpoints]
        dropped = self.best[self.hp.keep_checkpoints :]
        self.best = kept
        is_kept = any(b[1] == step for b in kept)
        if is_kept:
            self.learner.save(path, self.tokenizer, self._state(step))
        self.store.record_checkpoint(self.run_id, ckpt_id, step, str(path), m, reward, kept=is_kept)
        for _, s, p in dropped:
            if s != step:
                shutil.rmtree(p, ignore_errors=True)
                self.store.set_checkpoint_kept(f"{self.run_id}:step-{s}", False)


def train(cfg: RunConfig, *, resume: str | None = None, progress: bool = True, console: Any = None) -> str:
    return Trainer(cfg, resume=resume, progress=progress, console=console).run()
