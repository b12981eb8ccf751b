"""Logging sinks (agentrft.loggers): each sink's offline output read back with the sink's own reader — TensorBoard
event files (EventAccumulator), the MLflow run (MlflowClient), the W&B offline run file (its records parsed with
wandb's protobufs) and table files, trackio's local SQLite store — plus the trainer sending the store's metrics.

A sink whose package is not installed here is skipped with the reason; none of them is in the `dev` extra."""

from __future__ import annotations

import importlib.util
import json
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agentrft.loggers import SINKS, LoggerConfigError, Loggers, Sink, check_loggers, open_loggers, scalars
from agentrft.ui.synthetic import synthetic_trajectory

RUN = "run-20261129-120000-beef"


def _needs(pkg: str):
    return pytest.mark.skipif(importlib.util.find_spec(pkg) is None,
                              reason=f"{pkg} is not installed (pip install 'agentrft[{pkg}]')")


def _log_two_steps(sinks: list[str], run_dir: Path) -> dict:
    """Two train steps and one eval through the sinks; returns what was sent."""
    rng = random.Random(0)
    L = open_loggers(sinks, run_dir, RUN, {"model": "tiny", "hyperparameters": {"group_size": 2}}, name="proj")
    sent = {}
    for step, split in ((1, "train"), (2, "train"), (2, "valid")):
        trajs = [synthetic_trajectory(rng, "lg", step, r, 0, split) for r in range(3)]
        m = {"reward_mean": 0.25 * step + (0.1 if split == "valid" else 0), "grader/answer": 0.5 / step,
             "alerts": [{"signal": "x"}], "alert/x": 1.0, "nan_metric": float("nan"), "step": step}
        L.log_step(step, split, m, trajs)
        sent[(step, split)] = (m, [t.trace_id for t in trajs])
    L.close()
    return sent


def test_scalars_keep_store_names_under_the_split_and_drop_non_numbers():
    m = {"reward_mean": 0.5, "grader/answer": 1, "alerts": [], "flag": True, "nan": float("nan"), "step": 3}
    assert scalars(m, "valid") == {"valid/reward_mean": 0.5, "valid/grader/answer": 1.0, "valid/flag": 1.0}


def test_unknown_or_missing_sinks_are_errors_naming_the_entry_and_extra(monkeypatch):
    real = importlib.util.find_spec
    # CI installs no sink extras: make tensorboard look installed so the unknown entry is the one reported
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == SINKS["tensorboard"] else real(name, *a))
    with pytest.raises(LoggerConfigError, match=r"loggers\[1\]: unknown logger 'neptune'"):
        check_loggers(["tensorboard", "neptune"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(LoggerConfigError, match=r"loggers\[0\]: wandb is not installed: pip install 'agentrft\[wandb\]'"):
        check_loggers(["wandb"])


def test_config_names_a_bad_logger_with_its_path(tmp_path):
    from agentrft.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("model: m\ntraining_file: t.jsonl\ngrader: {type: string_check, name: g, input: a, reference: b, "
                 "operation: eq}\nloggers: [tensorboard, neptune]\n")
    with pytest.raises(ConfigError, match=r"loggers\.1: Input should be 'tensorboard', 'mlflow', 'wandb' or 'trackio'"):
        load_config(p)


def test_a_failing_sink_is_switched_off_and_the_others_go_on():
    class Boom(Sink):
        name = "boom"

        def log(self, *a):
            raise RuntimeError("tracker down")

    class Keep(Sink):
        name = "keep"
        seen: list = []

        def log(self, step, split, values, rows):
            self.seen.append((step, split, values))

    said = []
    L = Loggers([Boom(), Keep()], say=said.append)
    L.log_step(1, "train", {"reward_mean": 1.0})
    L.log_step(2, "train", {"reward_mean": 2.0})
    assert [s.name for s in L.sinks] == ["keep"] and len(Keep.seen) == 2
    assert len(said) == 1 and "boom failed and is switched off" in said[0] and "tracker down" in said[0]


@_needs("tensorboard")
def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sent = _log_two_steps(["tensorboard"], tmp_path / RUN)
    ea = EventAccumulator(str(tmp_path / RUN / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    got = sorted((e.step, round(e.value, 6)) for e in ea.Scalars("train/reward_mean"))
    assert got == [(1, 0.25), (2, 0.5)]
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("valid/grader/answer")] == [(2, 0.25)]
    tags = ea.Tags()["scalars"]
    assert "train/alert/x" in tags and not any("nan_metric" in t or "alerts" == t.split("/")[-1] for t in tags)
    text = [t for t in ea.Tags()["tensors"] if t.startswith("train/trajectories")]
    assert text
    body = ea.Tensors(text[0])[0].tensor_proto.string_val[0].decode()
    assert all(tid in body for tid in sent[(1, "train")][1])


@_needs("mlflow")
def test_mlflow_run_in_a_local_file_store(tmp_path):
    from mlflow.tracking import MlflowClient

    sent = _log_two_steps(["mlflow"], tmp_path / RUN)
    client = MlflowClient(tracking_uri=(tmp_path / RUN / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name("proj")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == RUN and run.data.tags["agentrft_run_id"] == RUN and run.info.status == "FINISHED"
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/reward_mean"))
    assert hist == [(1, 0.25), (2, 0.5)]
    assert run.data.params["hyperparameters.group_size"] == "2"
    art = Path(client.download_artifacts(run.info.run_id, "trajectories/valid-step-000002.json", str(tmp_path / "dl")))
    table = json.loads(art.read_text())
    ids = [row[table["columns"].index("trace_id")] for row in table["data"]]
    assert ids == sent[(2, "valid")][1]


def _wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (``.wandb``): a 7-byte header, then LevelDB-log framing — 32 KiB blocks
    of records [crc32c:4][length:2 LE][type:1][data], type 1 full, 2/3/4 first/middle/last fragment."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, buf, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding to the end of the block
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
            buf = b""
    return out


@_needs("wandb")
def test_wandb_offline_directory(tmp_path, monkeypatch):
    from wandb.proto import wandb_internal_pb2 as pb

    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(k, raising=False)
    sent = _log_two_steps(["wandb"], tmp_path / RUN)
    (run_dir,) = (tmp_path / RUN / "wandb").glob(f"offline-run-*-{RUN}")
    history = []
    for raw in _wandb_records(run_dir / f"run-{RUN}.wandb"):
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "history":
            history.append({(i.key or "/".join(i.nested_key)): i.value_json for i in r.history.item})
    train = sorted((int(h["_step"]), float(h["train/reward_mean"])) for h in history if "train/reward_mean" in h)
    assert train == [(1, 0.25), (2, 0.5)]
    assert any(float(h.get("valid/grader/answer", "nan")) == 0.25 for h in history)
    tables = sorted((run_dir / "files" / "media" / "table" / "valid").glob("trajectories_*.table.json"))
    assert len(tables) == 1
    t = json.loads(tables[0].read_text())
    assert [row[t["columns"].index("trace_id")] for row in t["data"]] == sent[(2, "valid")][1]


@_needs("trackio")
def test_trackio_local_store(tmp_path):
    # trackio fixes its directory when first imported, so the run is logged from a fresh interpreter
    script = (f"import sys; sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[1] / 'src')]!r}\n"
              "from pathlib import Path\nfrom test_loggers import _log_two_steps\n"
              f"_log_two_steps(['trackio'], Path({str(tmp_path / RUN)!r}))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRACKIO_DIR"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    db = tmp_path / RUN / "trackio" / "proj.db"  # the default: under the run's directory
    con = sqlite3.connect(db)
    rows = con.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
    con.close()
    assert {r[0] for r in rows} == {RUN}
    logged = [(step, json.loads(m)) for _, step, m in rows]
    assert sorted((s, m["train/reward_mean"]) for s, m in logged if "train/reward_mean" in m) == [(1, 0.25), (2, 0.5)]
    (valid,) = [m for s, m in logged if "valid/reward_mean" in m]
    assert valid["valid/trajectories"]["_type"] == "trackio.table"
    assert [row["trace_id"] for row in valid["valid/trajectories"]["_value"]] == [f"tr-lg-v2-{i}-0" for i in range(3)]


def test_the_trainer_sends_the_store_metrics_to_its_loggers(tiny_model, tmp_path, monkeypatch):
    """A real short run with ``loggers`` set: every recorded step and eval reaches the sinks with the store's metric
    values (a recording sink beside the real ones installed here; tensorboard's event files are read back too)."""
    import lookup_task
    import yaml

    import agentrft.loggers as lg
    from agentrft.config import load_config
    from agentrft.rl.trainer import train
    from agentrft.store import RunStore

    seen: list = []

    class Recorder(Sink):
        name = "recorder"

        def log(self, step, split, values, rows):
            seen.append((step, split, values, [r[0] for r in rows]))

    real_open = lg.open_loggers

    def open_with_recorder(names, *a, **kw):
        got = real_open(names, *a, **kw)
        got.sinks.append(Recorder())
        return got

    monkeypatch.setattr(lg, "open_loggers", open_with_recorder)
    tb = importlib.util.find_spec("tensorboard") is not None
    files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=2, n_demos=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(files["train"]), "validation_file": str(files["valid"]),
        "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER, "output_dir": str(tmp_path / "runs"),
        "loggers": ["tensorboard"] if tb else [],
        "hyperparameters": {"max_steps": 2, "batch_size": 2, "group_size": 2, "eval_interval": 2, "eval_samples": 1,
                            "max_new_tokens": 8, "max_turns": 2, "seed": 1}}))
    cfg = load_config(tmp_path / "c.yaml")
    run_id = train(cfg, progress=False)
    st = RunStore(cfg.store_url)
    rows = st.step_metrics(run_id)
    assert [(s, sp) for s, sp, _, _ in seen] == [(0, "valid"), (1, "train"), (2, "train"), (2, "valid")]
    in_order = sorted(rows, key=lambda r: (r["step"], r["split"] == "valid"))  # each step's train, then its eval
    for (step, split, values, traces), r in zip(seen, in_order):
        assert (step, split) == (r["step"], r["split"])
        assert values[f"{split}/reward_mean"] == pytest.approx(r["reward_mean"])
        assert values[f"{split}/tool_calls_per_traj"] == pytest.approx(r["tool_calls_per_traj"])
        assert sorted(traces) == sorted(t["trace_id"] for t in st.trajectories(run_id, step=step, split=split))
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(tmp_path / "runs" / run_id / "tensorboard"))
        ea.Reload()
        want = {r["step"]: r["entropy"] for r in rows if r["split"] == "train"}
        got = {e.step: e.value for e in ea.Scalars("train/entropy")}  # float32 in the event file
        assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7) for k in want)
    st.close()


def test_a_missing_sink_package_fails_the_run_before_it_starts(tmp_path, monkeypatch):
    import lookup_task
    import yaml

    from agentrft.config import load_config
    from agentrft.rl.trainer import TrainingError, train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    files = lookup_task.write_task(tmp_path / "data", n_train=2, n_valid=1, n_demos=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({
        "model": str(tmp_path / "no-model"), "training_file": str(files["train"]), "tools": ["lookup_task:lookup"],
        "grader": lookup_task.GRADER, "output_dir": str(tmp_path / "runs"), "loggers": ["mlflow"]}))
    with pytest.raises(TrainingError, match=r"config: loggers\[0\]: mlflow is not installed: pip install 'agentrft\[mlflow\]'"):
        train(load_config(tmp_path / "c.yaml"), progress=False)
