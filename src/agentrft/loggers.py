"""Logging sinks: the run's metrics (and trajectories, as tables where the sink has them) sent to the trackers teams
already use, beside the run store — ``loggers: [tensorboard, mlflow, wandb, trackio]`` in the run config.

Names. Every metric keeps its store name under its split: the train step's ``reward_mean`` is ``train/reward_mean``,
an eval's ``grader/answer`` is ``valid/grader/answer``; the step is the RL step. Only finite numbers are sent (the
``alerts`` list stays in the store; each alert is its ``alert/<signal>`` = 1 metric).

Offline by default, under the run's directory (``runs/<run>/``), unless the sink's own settings say otherwise:

* ``tensorboard``: event files in ``runs/<run>/tensorboard`` (``tensorboard --logdir runs/<run>/tensorboard``);
  trajectories as a markdown table in the text tab (the first 20 of each step);
* ``mlflow``: ``MLFLOW_TRACKING_URI`` if set, else a ``file:`` store in ``runs/<run>/mlruns`` (MLflow 3 keeps that
  backend in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is then set); experiment = the run name,
  MLflow run name = our run id; trajectories as ``trajectories/<split>-step-NNNNNN.json`` tables;
* ``wandb``: ``mode="offline"`` (files in ``runs/<run>/wandb``) unless ``WANDB_API_KEY`` or ``WANDB_MODE`` is set;
  project = ``WANDB_PROJECT`` or the run name, W&B run id = our run id (a resumed run continues it); trajectories
  as a ``wandb.Table`` per step (``<split>/trajectories``);
* ``trackio``: its local store — ``TRACKIO_DIR`` if set, else ``runs/<run>/trackio`` (set before trackio is first
  imported in the process); project = the run name; trajectories as a ``trackio.Table``.

A sink whose package is missing is a config error naming ``loggers[i]`` and the extra to install
(``pip install 'agentrft[wandb]'``); :func:`check_loggers` says so before the run starts. A sink that fails while
the run goes on is reported once and switched off: the store is the record, a tracker is a view.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable

SINKS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}  # name -> module
TABLE_COLUMNS = ["trace_id", "step", "split", "row_index", "sample_index", "reward", "outcome", "num_turns",
                 "num_tool_calls", "tool_errors", "tools", "latency_s", "final_text"]
TB_TABLE_ROWS = 20


class LoggerConfigError(ValueError):
    """A ``loggers`` entry that cannot be used (unknown sink, package not installed)."""


def check_loggers(names: Iterable[str]) -> None:
    """Raise :class:`LoggerConfigError` naming ``loggers[i]`` for an unknown sink or one whose package is missing."""
    for i, name in enumerate(names):
        if name not in SINKS:
            raise LoggerConfigError(f"loggers[{i}]: unknown logger {name!r} (known: {', '.join(SINKS)})")
        if importlib.util.find_spec(SINKS[name]) is None:
            raise LoggerConfigError(f"loggers[{i}]: {name} is not installed: pip install 'agentrft[{name}]'")


def scalars(metrics: dict[str, Any], split: str) -> dict[str, float]:
    """``{split/name: value}`` for the finite numbers of a step's metrics (bools as 0/1)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(float(v)) and k != "step":
            out[f"{split}/{k}"] = float(v)
    return out


def table_rows(trajs: Iterable[Any], step: int, split: str) -> list[list[Any]]:
    """One row per trajectory (live :class:`~agentrft.types.Trajectory` objects), in :data:`TABLE_COLUMNS` order."""
    rows = []
    for t in trajs:
        calls = t.tool_calls
        last = t.turns[-1].text if t.turns else ""
        rows.append([t.trace_id, step, split, int(t.row_index), int(t.sample_index),
                     None if t.reward is None else float(t.reward), t.outcome, t.num_turns, len(calls),
                     t.tool_errors, ", ".join(dict.fromkeys(c.name for c in calls)), float(t.latency_s), last[:500]])
    return rows


class Sink:
    name = "sink"

    def log(self, step: int, split: str, values: dict[str, float], rows: list[list[Any]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardSink(Sink):
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_id: str, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / "tensorboard"
        self.w = SummaryWriter(log_dir=str(self.dir))
        self.w.add_text("config", "```\n" + json.dumps(config, indent=2, default=str)[:20000] + "\n```", 0)

    def log(self, step, split, values, rows):
        for k, v in values.items():
            self.w.add_scalar(k, v, step)
        if rows:
            head = "| " + " | ".join(TABLE_COLUMNS) + " |\n|" + "---|" * len(TABLE_COLUMNS) + "\n"
            body = "".join("| " + " | ".join(_cell(x) for x in r) + " |\n" for r in rows[:TB_TABLE_ROWS])
            self.w.add_text(f"{split}/trajectories", head + body, step)
        self.w.flush()

    def close(self):
        self.w.close()


class MlflowSink(Sink):
    name = "mlflow"

    def __init__(self, run_dir: Path, run_id: str, config: dict, experiment: str):
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not self.uri:
            self.uri = (run_dir / "mlruns").resolve().as_uri()
            # MLflow ≥ 3.x keeps its file store in maintenance mode behind this opt-in; a local directory per run
            # needs no server and no database migrations (set MLFLOW_TRACKING_URI=sqlite:///… to use SQLite)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
        found = self.client.search_runs([exp_id], filter_string=f"tags.agentrft_run_id = '{run_id}'", max_results=1)
        if found:  # a resumed run continues its MLflow run
            self.run_id = found[0].info.run_id
        else:
            self.run_id = self.client.create_run(exp_id, run_name=run_id, tags={"agentrft_run_id": run_id}).info.run_id
            flat = _flatten(config)
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k[:250], str(v)[:6000]) for k, v in list(flat.items())[:100]])

    def log(self, step, split, values, rows):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(_mlflow_key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(ms), 900):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 900])
        if rows:
            data = {c: [r[j] for r in rows] for j, c in enumerate(TABLE_COLUMNS)}
            self.client.log_table(self.run_id, data=data, artifact_file=f"trajectories/{split}-step-{step:06d}.json")

    def close(self):
        self.client.set_terminated(self.run_id)


class WandbSink(Sink):
    name = "wandb"

    def __init__(self, run_dir: Path, run_id: str, config: dict, project: str):
        import wandb

        mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or project, id=run_id, name=run_id,
                              config=config, dir=str(run_dir), mode=mode, resume="allow", reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))

    def log(self, step, split, values, rows):
        data: dict[str, Any] = dict(values)
        if rows:
            data[f"{split}/trajectories"] = self.wandb.Table(columns=TABLE_COLUMNS, data=rows)
        self.run.log(data, step=step)

    def close(self):
        self.run.finish()
        # finish() can return before wandb's service process has written the run's records to the offline file;
        # teardown waits for it (and frees the service; a later wandb.init starts a new one)
        self.wandb.teardown()


class TrackioSink(Sink):
    name = "trackio"

    def __init__(self, run_dir: Path, run_id: str, config: dict, project: str):
        if "trackio" not in sys.modules and not os.environ.get("TRACKIO_DIR"):
            os.environ["TRACKIO_DIR"] = str((run_dir / "trackio").resolve())
        import trackio

        self.trackio = trackio
        self.dir = os.environ.get("TRACKIO_DIR")
        self.project = project
        self.run = trackio.init(project=project, name=run_id, config=config, resume="allow", embed=False,
                                auto_log_cpu=False, auto_log_gpu=False)

    def log(self, step, split, values, rows):
        data: dict[str, Any] = dict(values)
        if rows:
            data[f"{split}/trajectories"] = self.trackio.Table(columns=TABLE_COLUMNS, data=rows)
        self.run.log(data, step=step)

    def close(self):
        self.run.finish()


class Loggers:
    """The run's sinks. ``log_step(step, split, metrics, trajectories)`` once per recorded step or eval."""

    def __init__(self, sinks: list[Sink], say: Any = None):
        self.sinks = sinks
        self.say = say or (lambda msg: print(msg, file=sys.stderr))

    def log_step(self, step: int, split: str, metrics: dict[str, Any], trajectories: Iterable[Any] = ()) -> None:
        if not self.sinks:
            return
        values = scalars(metrics, split)
        rows = table_rows(trajectories, step, split)
        for s in list(self.sinks):
            try:
                s.log(step, split, values, rows)
            except Exception as e:  # noqa: BLE001 — a tracker failing must not fail the run; the store has it all
                self.say(f"[loggers] {s.name} failed and is switched off for this run: {type(e).__name__}: {e}")
                self.sinks.remove(s)

    def close(self) -> None:
        for s in self.sinks:
            try:
                s.close()
            except Exception as e:  # noqa: BLE001
                self.say(f"[loggers] {s.name} did not close cleanly: {type(e).__name__}: {e}")
        self.sinks = []


def open_loggers(names: list[str], run_dir: str | Path, run_id: str, config: dict, *, name: str | None = None,
                 say: Any = None) -> Loggers:
    """The sinks ``names`` for one run (``name``: the run's name, used as project/experiment)."""
    check_loggers(names)
    run_dir = Path(run_dir)
    project = name or "agentrft"
    sinks: list[Sink] = []
    for n in dict.fromkeys(names):
        if n == "tensorboard":
            sinks.append(TensorBoardSink(run_dir, run_id, config))
        elif n == "mlflow":
            sinks.append(MlflowSink(run_dir, run_id, config, project))
        elif n == "wandb":
            sinks.append(WandbSink(run_dir, run_id, config, project))
        elif n == "trackio":
            sinks.append(TrackioSink(run_dir, run_id, config, project))
    return Loggers(sinks, say)


def _cell(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x).replace("|", "\\|").replace("\n", " ")[:120]


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _mlflow_key(k: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / space``; anything else becomes ``_``."""
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in k)
