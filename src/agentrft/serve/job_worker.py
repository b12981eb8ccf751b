"""Job workers: processes that take queued fine-tuning jobs from the store and run them (issue 16).

A worker (``agentrft worker --config serve.yaml``, or one of the processes ``agentrft serve`` spawns) loops:
take a job with a lease (:meth:`RunStore.claim_job`), run it, release it. A heartbeat thread renews the leases of
the jobs it runs every ``lease_s / 3``; a worker that dies stops renewing, and once its lease has expired the
next worker takes the job and resumes it:

* reinforcement: the job's run was created when the job was (so its id is known from the start); every run of the
  job is ``Trainer(cfg, resume=run_id)``, which starts fresh when the run has no ``latest`` checkpoint and otherwise
  deletes the records written after that checkpoint and continues — no step, trajectory or metrics event twice;
* supervised: the warm-start has no resumable state, so it starts over (its step records are replaced).

Pause and cancel are asked of the worker through the job row (``control``); the trainer checks it after every
step (the hook monitors use), saves ``latest`` and stops. ``concurrency`` jobs run at once in one worker process,
each on its own thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("agentrft.worker")


class LeaseLost(RuntimeError):
    """Another worker holds the job now: stop without touching it."""


class JobStopped(RuntimeError):
    """Pause or cancel asked for (supervised jobs stop by exception)."""


class Control:
    """What the trainer asks between steps: go on, or stop because of pause / cancel / a lost lease."""

    def __init__(self, store: Any, job_id: str, owner: str):
        self.store, self.job_id, self.owner = store, job_id, owner
        self.lost = threading.Event()

    def check(self) -> str | None:
        if self.lost.is_set():
            return "lost"
        j = self.store.get_job(self.job_id)
        if j is None or j["lease_owner"] != self.owner:
            self.lost.set()
            return "lost"
        if j["control"] == "cancel" or j["status"] == "cancelled":
            return "cancel"
        if j["control"] == "pause" or j["status"] == "pausing":
            return "pause"
        return None


def _job_trainer_class() -> type:
    from agentrft.rl.trainer import Trainer

    class JobTrainer(Trainer):
        """The trainer, stopping between steps when the job's worker is asked to (pause, cancel, lost lease)."""

        ctl: Control
        stop_reason: str | None = None

        def _pause_if_alerted(self, step: int) -> bool:
            if super()._pause_if_alerted(step):
                self.stop_reason = "monitor"
                return True
            action = self.ctl.check()
            if action is None:
                return False
            if action == "lost":
                raise LeaseLost(f"job {self.ctl.job_id}: another worker holds the lease")
            if step >= self.total_steps:
                return False  # the last step is done: finish rather than stop
            if self._saved_step != step:
                self._save_latest(step)
            self.paused = True
            self.stop_reason = action
            return True

    return JobTrainer


# ---------------------------------------------------------------------------------------------------------------
class JobWorker:
    def __init__(self, store_url: str, *, jobs_cfg: Any, owner: str | None = None):
        from agentrft.store import RunStore

        self.store = RunStore(store_url)
        self.jobs_cfg = jobs_cfg
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.active: dict[str, Control] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # ---- heartbeat ---------------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        period = self.jobs_cfg.lease_s / 3
        while not self.stop.wait(period):
            with self.lock:
                active = dict(self.active)
            for job_id, ctl in active.items():
                try:
                    if not self.store.renew_lease(job_id, self.owner, self.jobs_cfg.lease_s):
                        ctl.lost.set()
                except Exception:  # noqa: BLE001 - a store hiccup: the next beat tries again
                    log.exception("heartbeat for %s failed", job_id)

    # ---- main loop ---------------------------------------------------------------------------------------
    def serve(self, *, concurrency: int = 1, once: bool = False) -> None:
        """Take and run jobs until stopped (``once``: until no job is waiting)."""
        hb = threading.Thread(target=self._heartbeat, daemon=True, name="agentrft-heartbeat")
        hb.start()
        if concurrency > 1:
            _warm_imports()
        threads = [threading.Thread(target=self._slot, args=(once,), daemon=True, name=f"agentrft-job-{i}")
                   for i in range(concurrency)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        finally:
            self.stop.set()

    def _orphaned(self) -> bool:
        """A worker the server spawned stops taking jobs once that server is gone (its job, if any, finishes)."""
        parent = os.environ.get("AGENTRFT_WORKER_PARENT")
        return bool(parent) and os.getppid() != int(parent)

    def _slot(self, once: bool) -> None:
        while not self.stop.is_set():
            if self._orphaned():
                log.info("the server that started this worker is gone; exiting")
                return
            job = self.store.claim_job(self.owner, self.jobs_cfg.lease_s)
            if job is None:
                if once:
                    return
                self.stop.wait(self.jobs_cfg.poll_s)
                continue
            ctl = Control(self.store, job["id"], self.owner)
            with self.lock:
                self.active[job["id"]] = ctl
            try:
                self.run_job(job, ctl)
            except Exception:  # noqa: BLE001 - a job's failure is recorded on the job, never the worker's end
                log.exception("job %s", job["id"])
            finally:
                with self.lock:
                    self.active.pop(job["id"], None)
                self.store.release_lease(job["id"], self.owner)

    # ---- one job -----------------------------------------------------------------------------------------
    def run_job(self, job: dict, ctl: Control) -> None:
        st, jid = self.store, job["id"]
        if job["status"] == "pausing":  # the previous worker died while pausing: the run's `latest` is the pause
            self._finish_pause(job)
            return
        resumed = job["status"] == "running" or job["attempts"] > 1
        now = time.time()
        if not st.update_job(jid, owner=self.owner, expect_status=("queued", "running"), status="running",
                             started_at=job["started_at"] or now):
            return
        if resumed:
            st.add_job_event(jid, f"Job resumed by worker {self.owner} (attempt {job['attempts']})",
                             data={"worker": self.owner, "attempt": job["attempts"]})
        else:
            st.add_job_event(jid, "Fine-tuning job started", data={"worker": self.owner})
        try:
            if job["method_type"] == "supervised":
                outcome = self._run_supervised(job, ctl)
            else:
                outcome = self._run_reinforcement(job, ctl)
        except LeaseLost:
            log.warning("job %s: lease lost; leaving it to its new worker", jid)
            return
        except Exception as e:  # noqa: BLE001 - every failure becomes the job's error object
            if ctl.lost.is_set():
                return
            code, param = _error_code(e)
            msg = f"{type(e).__name__}: {e}" if code == "internal_error" else str(e)
            if code == "internal_error" and _raised_in(e, "load_model_and_tokenizer"):
                code, param, msg = "training_error", "model", f"model: cannot load {job['model']!r}: {e}"
            log.error("job %s failed: %s\n%s", jid, msg, traceback.format_exc())
            st.update_job(jid, owner=self.owner, status="failed", finished_at=time.time(), control=None,
                          error={"code": code, "message": msg[:2000], "param": param})
            st.add_job_event(jid, f"Job failed: {msg[:500]}", level="error")
            _set_run_status(st, job["run_id"], "failed")
            send_webhook(self.jobs_cfg, st, jid)
            return
        self._conclude(job, outcome)

    def _conclude(self, job: dict, outcome: str) -> None:
        st, jid = self.store, job["id"]
        now = time.time()
        if outcome == "cancel":
            st.update_job(jid, owner=self.owner, status="cancelled", control=None,
                          finished_at=st.get_job(jid)["finished_at"] or now)
            st.add_job_event(jid, "Job cancelled; the worker stopped after its current step")
            _set_run_status(st, job["run_id"], "cancelled")
            send_webhook(self.jobs_cfg, st, jid)
        elif outcome in ("pause", "monitor"):
            self._finish_pause(job, monitor=outcome == "monitor")
        else:
            self._succeed(job)

    def _finish_pause(self, job: dict, monitor: bool = False) -> None:
        st, jid = self.store, job["id"]
        if st.get_job(jid)["status"] == "cancelled":
            self._conclude(job, "cancel")
            return
        st.update_job(jid, owner=self.owner, status="paused", control=None)
        st.add_job_event(jid, "Job paused by a monitor alert (see the run's metrics); resume it to continue"
                         if monitor else "Job paused; its checkpoint is saved — resume it to continue",
                         level="warn" if monitor else "info")

    def _succeed(self, job: dict) -> None:
        from agentrft.serve.files import file_object  # noqa: F401  (the file's shape is the files API's)
        from agentrft.serve.job_views import fine_tuned_model, metrics_csv
        st, jid, run_id = self.store, job["id"], job["run_id"]
        ckpts = st.checkpoints(run_id)
        model = fine_tuned_model(job, ckpts)
        data = metrics_csv(st, run_id)
        c = job["config"]
        files_dir = Path(c.get("output_dir") or c["run_config"]["output_dir"]).parent / "files"
        files_dir.mkdir(parents=True, exist_ok=True)
        fid = f"file-{uuid.uuid4().hex[:24]}"
        path = files_dir / fid
        tmp = files_dir / f".{fid}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)
        st.add_file(fid, filename="step_metrics.csv", purpose="fine-tune-results", nbytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(), path=str(path))
        tokens = st.trained_tokens(run_id) if job["method_type"] == "reinforcement" else \
            int(sum(r["metrics"].get("tokens", 0) for r in st.step_records(run_id) if r["split"] == "train"))
        # a pause that arrived during the last step is moot: the job is done
        if not st.update_job(jid, owner=self.owner, expect_status=("running", "pausing"), status="succeeded",
                             finished_at=time.time(), fine_tuned_model=model, result_files=[fid],
                             trained_tokens=tokens, control=None):
            cur = st.get_job(jid)
            if cur is not None and cur["status"] == "cancelled":  # cancelled during the last step: it stays so
                st.add_job_event(jid, "Job cancelled; the worker stopped after its current step")
                _set_run_status(st, run_id, "cancelled")
                send_webhook(self.jobs_cfg, st, jid)
            return
        st.add_job_event(jid, f"The job has successfully completed; fine-tuned model: {model}",
                         data={"fine_tuned_model": model, "result_files": [fid]})
        send_webhook(self.jobs_cfg, st, jid)

    # ---- reinforcement -------------------------------------------------------------------------------------
    def _run_reinforcement(self, job: dict, ctl: Control) -> str:
        from agentrft.config import RunConfig

        raw = dict(job["config"]["run_config"])
        raw["store"] = self.store.url
        cfg = RunConfig.model_validate(raw)
        trainer = _job_trainer_class()(cfg, resume=job["run_id"], progress=False)
        trainer.ctl = ctl
        trainer.run()
        if trainer.stop_reason:
            return trainer.stop_reason
        # a run without evaluations has no eval checkpoint: its final weights become the job's checkpoint
        if not any(c["kept"] for c in self.store.checkpoints(job["run_id"])):
            step = trainer.total_steps
            dst = trainer.run_dir / "checkpoints" / f"step-{step:06d}"
            if not dst.exists():
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(trainer.run_dir / "latest", tmp)
                os.replace(tmp, dst)
            last = (self.store.step_metrics(job["run_id"], split="train") or [{}])[-1]
            self.store.record_checkpoint(job["run_id"], f"{job['run_id']}:step-{step}", step, str(dst), last, None)
        return "done"

    # ---- supervised ----------------------------------------------------------------------------------------
    def _run_supervised(self, job: dict, ctl: Control) -> str:
        from agentrft.rl.sft import run_sft

        st, run_id, c = self.store, job["run_id"], job["config"]
        p = dict(c["params"])
        removed = st.delete_after(run_id, -1)
        if removed:
            st.add_job_event(job["id"], f"Supervised training restarts from the beginning (removed {removed} records "
                             "of the interrupted attempt)")
        st.set_status(run_id, "running")
        out = Path(c["output_dir"]) / run_id / "model"

        def on_step(i: int, n: int, s: dict) -> None:
            st.record_step(run_id, i, "train", {"loss": s["loss"], "train_loss": s["loss"], "grad_norm":
                                                s.get("grad_norm"), "tokens": s.get("tokens"), "total_steps": n}, [])
            action = ctl.check()
            if action == "lost":
                raise LeaseLost(job["id"])
            if action == "cancel":
                raise JobStopped("cancel")

        try:
            res = run_sft(c["model_path"], c["demos_file"], out, epochs=p.get("n_epochs", p.get("epochs")), batch_size=p["batch_size"],
                          learning_rate=p["learning_rate"], lora=None, micro_batch_size=p["micro_batch_size"],
                          seed=p["seed"], max_tokens=p["max_tokens"], until_loss=p.get("until_loss"), on_step=on_step)
        except JobStopped as e:
            return str(e)
        ckpt = Path(c["output_dir"]) / run_id / "checkpoints" / f"step-{res.steps:06d}"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        os.replace(out, ckpt)
        st.record_checkpoint(run_id, f"{run_id}:step-{res.steps}", res.steps, str(ckpt),
                             {"train_loss": res.last_loss, "first_loss": res.first_loss, "examples": res.examples,
                              "tokens": res.tokens}, None)
        st.set_status(run_id, "succeeded")
        return "done"


def _set_run_status(st: Any, run_id: str | None, status: str) -> None:
    if run_id:
        try:
            st.set_status(run_id, status)
        except Exception:  # noqa: BLE001
            pass


def _raised_in(e: BaseException, function: str) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == function:
            return True
        tb = tb.tb_next
    return False


def _error_code(e: Exception) -> tuple[str, str | None]:
    from agentrft.data import DatasetError
    from agentrft.rl.trainer import TrainingError

    if isinstance(e, DatasetError):
        return "invalid_training_file", "training_file"
    if isinstance(e, TrainingError):  # the job's field for the run config's field at fault
        return "training_error", {"model": "model", "tools": "method", "hyperparameters": "method"}.get(e.field)
    return "internal_error", None


# ---------------------------------------------------------------------------------------------------------------
# webhooks (Standard Webhooks: HMAC-SHA256 over "id.timestamp.body", base64, header "v1,<sig>")
# ---------------------------------------------------------------------------------------------------------------
def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def send_webhook(jobs_cfg: Any, store: Any, job_id: str) -> None:
    """POST ``fine_tuning.job.<status>`` for a job in a terminal state (when ``jobs.webhook_url`` is set); a failed
    delivery is logged as a ``warn`` event on the job, never an error of the job."""
    url = getattr(jobs_cfg, "webhook_url", None)
    if not url:
        return
    import httpx

    job = store.get_job(job_id)
    if job is None or job["status"] not in ("succeeded", "failed", "cancelled"):
        return
    ts = int(time.time())
    msg_id = f"wh_{uuid.uuid4().hex}"
    body = json.dumps({"id": msg_id, "object": "event", "type": f"fine_tuning.job.{job['status']}",
                       "created_at": ts, "data": {"id": job_id}}).encode()
    headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts)}
    if jobs_cfg.webhook_secret:
        headers["webhook-signature"] = sign_webhook(jobs_cfg.webhook_secret, msg_id, ts, body)
    try:
        r = httpx.post(url, content=body, headers=headers, timeout=10)
        r.raise_for_status()
    except Exception as e:  # noqa: BLE001
        store.add_job_event(job_id, f"webhook to {url} failed: {e}", level="warn")


# ---------------------------------------------------------------------------------------------------------------
# worker processes spawned by the server
# ---------------------------------------------------------------------------------------------------------------
class WorkerPool:
    """``jobs.workers`` processes of ``agentrft worker``, started with the server and restarted if one dies."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.procs: list[subprocess.Popen | None] = [None] * cfg.jobs.workers
        self.stop_ev = threading.Event()
        self.thread: threading.Thread | None = None
        self.config_path: Path | None = None

    def _spawn(self) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "agentrft.serve.job_worker", "--config", str(self.config_path)]
        return subprocess.Popen(cmd, env={**os.environ, "AGENTRFT_WORKER_PARENT": str(os.getpid())})

    def start(self) -> None:
        d = _worker_config_dir(self.cfg)
        d.mkdir(parents=True, exist_ok=True)
        self.config_path = d / f"worker-{os.getpid()}.json"
        self.config_path.write_text(json.dumps({"store": self.cfg.store, "jobs": self.cfg.jobs.model_dump()}))
        for i in range(len(self.procs)):
            self.procs[i] = self._spawn()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="agentrft-worker-pool")
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop_ev.wait(1.0):
            for i, p in enumerate(self.procs):
                if p is not None and p.poll() is not None:
                    log.warning("job worker %s exited (%s); starting another", p.pid, p.returncode)
                    self.procs[i] = self._spawn()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def stop(self) -> None:
        self.stop_ev.set()
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def _warm_imports() -> None:
    """Resolve transformers' lazy attributes (and import peft) once, before job threads start: two threads importing
    ``AutoModelForCausalLM`` from a fresh ``transformers`` at the same moment race in its lazy module, and one of them
    gets "cannot import name 'AutoModelForCausalLM'" — every job of ``--concurrency 2`` but one failed that way."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def _worker_config_dir(cfg: Any) -> Path:
    from agentrft.serve.jobs_config import data_dir

    return data_dir(cfg.jobs, cfg.store) / "workers"


def load_worker_settings(path: str | Path) -> tuple[str, Any]:
    """``(store URL, JobsConfig)`` from a serve config YAML or the JSON the server writes for its workers."""
    from agentrft.config import ConfigError
    from agentrft.serve.jobs_config import JobsConfig

    p = Path(path)
    if p.suffix == ".json":
        d = json.loads(p.read_text())
        return d["store"], JobsConfig.model_validate(d["jobs"])
    from agentrft.serve.config import load_serve_config

    cfg = load_serve_config(p, {})
    if not cfg.store:
        raise ConfigError(f"{p}: a worker needs the server's store (store: URL)")
    return cfg.store, cfg.jobs


def main(argv: list[str] | None = None) -> None:
    """``python -m agentrft.serve.job_worker --config FILE [--concurrency N] [--once]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="agentrft worker")
    ap.add_argument("--config", required=True)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--once", action="store_true")
    a = ap.parse_args(argv)
    run_worker(a.config, concurrency=a.concurrency, once=a.once)


def run_worker(config: str | Path, *, concurrency: int | None = None, once: bool = False,
               store: str | None = None) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(process)d %(levelname)s %(message)s")
    store_url, jobs = load_worker_settings(config)
    w = JobWorker(store or store_url, jobs_cfg=jobs)
    log.info("worker %s taking jobs from %s", w.owner, w.store.url)
    w.serve(concurrency=concurrency or jobs.concurrency, once=once)


if __name__ == "__main__":
    main()
