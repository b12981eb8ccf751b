"""Issue 14's probes run again with new cases (the close14 re-probe): each test is one class a new case broke.

* corrupt model weights (garbage, truncated safetensors, a config whose shapes do not match) — a traceback;
* a key written twice in a YAML mapping — silently the last one;
* secrets in a URL's query string (``?api_key=``) — stored in plain text, and echoed by ``validate``;
* user text read as Rich markup (a run named ``[/bold]``, an error with ``[/x]`` in it) — a MarkupError traceback;
* an output path that is a directory — a traceback after the whole evaluation; nonsense option values (``--samples
  0``, ``--min-score nan``, ``-n 0``) — an empty result with exit 0;
* a store path that is a FIFO — the open blocked forever; a read-only command on a WAL store — ``-wal``/``-shm``
  files left beside it;
* a run shorter than ``max_signal_free_steps`` with no signal in any step — no end-of-run word about it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from agentrft import bounded  # noqa: E402
from agentrft.config import ConfigError, read_yaml  # noqa: E402
from agentrft.redact import redact_config, redact_text, redact_url  # noqa: E402
from agentrft.store import RunStore, StoreError  # noqa: E402

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def invoke(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command in this process (no interpreter start: a fraction of a second), shaped like ``cli``'s result."""
    from typer.testing import CliRunner

    from agentrft.cli import app

    old = Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        r = CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})
    finally:
        os.chdir(old)
    out = r.stdout + r.stderr
    if r.exception is not None and not isinstance(r.exception, SystemExit):  # what a user would see as a traceback
        import traceback

        out += "Traceback\n" + "".join(traceback.format_exception(r.exception))
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, out)


def assert_user_error(res: subprocess.CompletedProcess, *names: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out, out
    for n in names:
        assert n in out, (n, out)


# ---- class 1: a model whose weights do not load --------------------------------------------------------------

def _corrupt(kind: str, src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    w = dst / "model.safetensors"
    if kind == "garbage":
        w.write_bytes(b"not a safetensors file\n")
    elif kind == "truncated":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    else:  # shapes: the config says twice the hidden size the weights have
        cfg = json.loads((dst / "config.json").read_text())
        cfg["hidden_size"] *= 2
        (dst / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "shapes"])
def test_corrupt_weights_are_a_model_load_error_naming_the_model(tiny_model, tmp_path, kind):
    from agentrft.rollout.stack import ModelLoadError, load_policy

    bad = tmp_path / f"model-{kind}"
    _corrupt(kind, tiny_model, bad)
    with pytest.raises(ModelLoadError) as e:
        load_policy(bad)
    assert str(bad) in str(e.value) and "cannot load" in str(e.value)


def test_train_on_corrupt_weights_exits_2_and_records_the_run_failed(tiny_model, tmp_path, lookup_files):
    bad = tmp_path / "badw"
    _corrupt("garbage", tiny_model, bad)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(bad), "training_file": str(lookup_files["train"]),
                                   "tools": ["lookup_task:lookup"], "output_dir": str(tmp_path / "runs"),
                                   "grader": {"type": "string_check", "name": "a", "input": "{{ sample.output_text }}",
                                              "reference": "x", "operation": "eq"}}))
    res = cli("train", str(cfg), "--no-progress")
    assert_user_error(res, "error: model", "badw", "cannot load")
    (run,) = RunStore(str(tmp_path / "runs" / "agentrft.db"), mode="read").list_runs()
    assert run["status"] == "failed"
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()] == []  # no run directory left


# ---- class 2: a YAML key written twice -----------------------------------------------------------------------

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@FAST
@given(names=st.lists(keys, min_size=1, max_size=6, unique=True), dup=st.integers(0, 5), where=st.integers(0, 6),
       nested=st.booleans())
def test_a_key_written_twice_is_an_error_at_the_second_ones_line(tmp_path, names, dup, where, nested):
    key = names[dup % len(names)]
    lines = [f"{n}: {i}" for i, n in enumerate(names)]
    at = min(where, len(lines))
    lines.insert(at, f"{key}: again")
    second = max(at, names.index(key) + (1 if names.index(key) >= at else 0))  # 0-based line of the later one
    text = "\n".join(("  " + ln) for ln in lines) if nested else "\n".join(lines)
    if nested:
        text, second = "outer:\n" + text, second + 1
    f = tmp_path / "dup.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(f)
    assert f"{f}:{second + 1}:" in str(e.value) and repr(key) in str(e.value) and "twice" in str(e.value)


def test_merge_keys_and_distinct_keys_still_load(tmp_path):
    f = tmp_path / "ok.yaml"
    f.write_text("base: &b {a: 1, b: 2}\nover:\n  <<: *b\n  b: 3\nlist: [{a: 1}, {a: 2}]\n")
    assert read_yaml(f) == {"base": {"a": 1, "b": 2}, "over": {"a": 1, "b": 3}, "list": [{"a": 1}, {"a": 2}]}
    assert bounded.load_yaml("1: x\n'1': y\n") == {1: "x", "1": "y"}  # an int and a string are two keys


# ---- class 6: secrets in URL query strings -------------------------------------------------------------------

secret_values = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~%", min_size=6, max_size=30).map(
    lambda s: "S3CR" + s)
secret_names = st.sampled_from(["api_key", "apikey", "API-KEY", "token", "access_token", "refresh_token",
                                "client_secret", "password", "key", "sig", "signature", "auth", "x-api-key"])
plain_names = st.sampled_from(["q", "page", "lang", "format", "user", "model", "v"])


@FAST
@given(secret=secret_values, name=secret_names, other=plain_names, first=st.booleans(), password=st.booleans())
def test_query_secrets_never_survive_redaction(secret, name, other, first, password):
    query = f"{name}={secret}&{other}=1" if first else f"{other}=1&{name}={secret}"
    auth = f"user:{secret}PW@" if password else ""
    url = f"https://{auth}tools.example:8443/rft/v1?{query}#frag"
    for out in (redact_url(url), redact_text(f"server_url {url}: unreachable"),
                json.dumps(redact_config({"tools": [{"name": "t", "server_url": url}],
                                          "grader": {"type": "endpoint", "url": url}}))):
        assert secret not in out, out
        assert f"{other}=1" in out and "tools.example:8443/rft/v1" in out  # the rest of the URL is kept


def test_env_references_and_plain_urls_are_kept():
    assert redact_url("http://h/?api_key=${KEY}&x=1") == "http://h/?api_key=${KEY}&x=1"
    assert redact_url("http://h/p?q=a&page=2") == "http://h/p?q=a&page=2"
    assert redact_url("postgresql+psycopg://u@h/db?options=-csearch_path%3Dx") == \
        "postgresql+psycopg://u@h/db?options=-csearch_path%3Dx"


def test_a_query_secret_reaches_neither_the_store_nor_validates_output(tiny_model, tmp_path, lookup_files):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(lookup_files["train"]), "output_dir": str(tmp_path / "runs"),
        "tools": [{"name": "lookup", "server_url": "http://127.0.0.1:9/?api_key=QSECRET1&x=1"}],
        "grader": {"type": "endpoint", "name": "e", "url": "http://u:PWSECRET2@127.0.0.1:9/g?token=QSECRET3"}}))
    res = cli("validate", str(cfg), "--timeout", "0.5")
    assert res.returncode == 2 and "unreachable" in res.stderr, res.stdout + res.stderr
    assert "SECRET" not in res.stdout + res.stderr
    from agentrft.config import load_config

    st_ = RunStore(str(tmp_path / "s.db"))
    rid = st_.create_run("r", load_config(cfg).model_dump())
    assert "SECRET" not in json.dumps(st_.get_run(rid), default=str)


# ---- class 1: user text is not markup ------------------------------------------------------------------------

bracketed = st.text(alphabet="[]/ab x=#@", min_size=1, max_size=16).filter(lambda s: s.strip())


@settings(FAST, max_examples=15)
@given(name=bracketed)
def test_runs_and_show_print_any_run_name_literally(tmp_path_factory, name):
    from typer.testing import CliRunner

    from agentrft.cli import app

    db = tmp_path_factory.mktemp("mk") / "s.db"
    st_ = RunStore(str(db))
    rid = st_.create_run(name, {"model": name}, base_model=name)
    st_.close()
    runner = CliRunner()
    res = runner.invoke(app, ["runs", "--store", str(db)], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and res.exception is None, res.output
    assert name.strip() in res.output
    res = runner.invoke(app, ["show", "[/bold]" + name, "--store", str(db)], env={"COLUMNS": "250"})
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), (res.exception, res.output)
    assert "no run" in res.output
    res = runner.invoke(app, ["show", rid, "--store", str(db)], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output


def test_an_error_with_markup_in_it_is_printed_not_raised(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('model: m\ntraining_file: t.jsonl\ngrader: {type: string_check}\n"[/bold] x [red]": 1\n')
    res = invoke("train", str(cfg))
    assert_user_error(res, "[/bold] x [red]")


def test_a_grader_error_with_markup_in_it_does_not_stop_grade_batch(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"type": "string_check", "name": "a", "input": "{{ sample.output_text }}",
                             "reference": "x", "operation": "eq"}))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"item": {}, "sample": "x"}\n[/bold] not json\n')
    res = invoke("grade", "batch", "-g", str(g), "-i", str(rows))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "[/bold] not json" not in res.stderr or ":2: not valid JSON" in res.stderr


def test_trainer_lines_are_plain_text():
    import io

    from rich.console import Console

    from agentrft.rl.trainer import Trainer

    buf = io.StringIO()
    t = Trainer.__new__(Trainer)
    t.console = Console(file=buf, width=200)
    t._say("[store] the last step's record was not written: ValueError: bad [/x] value")
    assert buf.getvalue().strip() == "[store] the last step's record was not written: ValueError: bad [/x] value"


# ---- classes 1 and 2: output paths and option values ---------------------------------------------------------

def test_eval_out_that_is_a_directory_fails_before_any_work(tmp_path):
    # the config does not even exist: the --out check comes first, so nothing was loaded or evaluated
    res = invoke("eval", "--model", "baseline", "--data", str(tmp_path / "d.jsonl"), "--config",
              str(tmp_path / "none.yaml"), "--out", str(tmp_path))
    assert_user_error(res, "--out", "is a directory")


@pytest.mark.parametrize("args, names", [
    (["eval", "--model", "m", "--data", "d", "--config", "c", "--samples", "0"], ["--samples"]),
    (["eval", "--model", "m", "--data", "d", "--config", "c", "--samples", "-3"], ["--samples"]),
    (["audit", "export", "r", "--store", "s.db", "-n", "0"], ["-n"]),
    (["audit", "export", "r", "--store", "s.db", "-n", "-1"], ["-n"]),
])
def test_nonsense_counts_are_usage_errors(tmp_path, args, names):
    res = invoke(*args, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in out and all(n in out for n in names), out


def test_grade_batch_output_directory_and_audit_out_file_are_named(tmp_path):
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"type": "string_check", "name": "a", "input": "x", "reference": "x", "operation": "eq"}))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"item": {}, "sample": "x"}\n')
    assert_user_error(invoke("grade", "batch", "-g", str(g), "-i", str(rows), "-o", str(tmp_path)), "--output",
                      "is a directory")
    res = invoke("grade", "batch", "-g", str(g), "-i", str(rows), "-o", str(tmp_path / "new" / "out.jsonl"))
    assert res.returncode == 0 and (tmp_path / "new" / "out.jsonl").exists(), res.stderr
    st_ = RunStore(str(tmp_path / "s.db"))
    rid = st_.create_run("r", {})
    st_.close()
    (tmp_path / "afile").write_text("x")
    assert_user_error(invoke("audit", "export", rid, "--store", str(tmp_path / "s.db"), "--out", str(tmp_path / "afile")),
                      "afile")


@pytest.mark.parametrize("extra, names", [
    (["--rows", "{dir}"], ["--rows", "is a directory"]),
    (["--rows", "x.jsonl", "--min-score", "nan"], ["--min-score", "finite"]),
    (["--rows", "x.jsonl", "--max-score", "inf"], ["--max-score", "finite"]),
    (["--rows", "x.jsonl", "--since", "99999999999d"], ["99999999999d"]),
])
def test_traces_export_refuses_nonsense_naming_the_option(tmp_path, extra, names):
    st_ = RunStore(str(tmp_path / "s.db"))
    st_.close()
    res = invoke("traces", "export", "--store", str(tmp_path / "s.db"), *[a.format(dir=tmp_path) for a in extra],
              cwd=tmp_path)
    assert_user_error(res, *names)
    assert not any(p.name.startswith(".") and p.is_file() for p in tmp_path.iterdir())  # no temp file left


# ---- classes 1 and 3: store files ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["read", "existing", "create"])
def test_a_store_path_that_is_a_fifo_or_device_is_refused_at_once(tmp_path, mode):
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    null = tmp_path / "null.db"
    null.symlink_to(os.devnull)
    for p in (fifo, null):
        with pytest.raises(StoreError, match="not a regular file"):
            RunStore(str(p), mode=mode)


def test_runs_on_a_fifo_answers_instead_of_hanging(tmp_path):
    os.mkfifo(tmp_path / "fifo.db")
    assert_user_error(invoke("runs", "--store", str(tmp_path / "fifo.db")), "not a regular file")


def _sides(db: Path) -> list[str]:
    return sorted(p.name for p in db.parent.iterdir() if p.name != db.name)


def test_read_only_commands_leave_no_wal_files_beside_the_store(tmp_path):
    db = tmp_path / "s.db"
    st_ = RunStore(str(db))
    rid = st_.create_run("r", {})
    st_.close()
    assert _sides(db) == []  # a writer's close removes them: the baseline a reader must keep
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    res = cli("runs", "--store", str(db))  # a process of its own: tidied at its exit
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert _sides(db) == []
    import gc

    for args in (["show", rid, "--store", str(db)], ["monitor", rid, "--store", str(db)],
                 ["audit", "summary", rid, "--store", str(db)], ["registry", "--store", str(db)]):
        res = invoke(*args)
        gc.collect()  # in this process: tidied when the command's store is collected
        assert res.returncode == 0 and "Traceback" not in res.stderr, (args, res.stderr)
        assert _sides(db) == [], args
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    ro = RunStore(str(db), mode="read")  # in process: closing (or collecting) the store tidies too
    assert ro.list_runs()
    ro.close()
    del ro
    gc.collect()
    assert _sides(db) == []


def test_a_reader_does_not_remove_wal_files_a_writer_is_using(tmp_path):
    db = tmp_path / "s.db"
    writer = RunStore(str(db))
    writer.create_run("r", {})
    sides = _sides(db)
    assert sides  # the writer holds them
    reader = RunStore(str(db), mode="read")
    assert reader.list_runs()
    reader.close()
    del reader
    import gc

    gc.collect()
    assert _sides(db) == sides
    writer.create_run("r2", {})  # and the writer goes on
    assert len(writer.list_runs()) == 2
    writer.close()


# ---- class 2: a run that never had signal --------------------------------------------------------------------

def test_a_short_run_without_signal_in_any_step_ends_with_a_warning():
    from agentrft.rl.signal import SignalWatch
    from agentrft.types import Trajectory

    def traj(adv):
        t = Trajectory.__new__(Trajectory)
        t.__dict__.update(advantage=adv, dropped=False, reward=0.0, outcome="completed", turns=[],
                          drop_reason=None)
        return t

    w = SignalWatch(3, RuntimeError)
    assert w.final_warning() is None  # no step ran: nothing to say
    for step in (1, 2):
        w.observe(step, [traj(None), traj(None)])
    assert "none of the 2 train steps" in w.final_warning()
    w2 = SignalWatch(3, RuntimeError)
    w2.observe(1, [traj(None)])
    w2.observe(2, [traj(0.5), traj(-0.5)])
    w2.observe(3, [traj(None)])
    assert w2.final_warning() is None  # one step learned something


# ---- class 1: SFT demonstrations with nothing to imitate -----------------------------------------------------

def test_sft_demos_without_an_assistant_turn_are_named_by_line_before_the_model_loads(tmp_path, lookup_files):
    cfg = tmp_path / "sft.yaml"
    # the model does not exist: the demos are checked first, so the answer is about them, not the model
    cfg.write_text(yaml.safe_dump({"model": str(tmp_path / "no-model"), "demos_file": str(lookup_files["train"]),
                                   "output_dir": str(tmp_path / "out")}))
    res = invoke("sft", "--config", str(cfg))
    assert_user_error(res, f"{lookup_files['train']}:1: a demonstration needs at least one assistant message")
    assert not (tmp_path / "out").exists()


# ---- class 4: long commands other than train keep a heartbeat and record Ctrl-C ------------------------------

@pytest.mark.slow  # a real compare in a subprocess (~12 s on 2 shared cores)
def test_compare_interrupted_by_ctrl_c_is_recorded_cancelled_not_running(tmp_path, tiny_model):
    import signal
    import time

    import lookup_task as lt

    files = lt.write_task(tmp_path / "data", seed=3, n_train=2, n_valid=200, n_demos=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(files["train"]), "validation_file": str(files["valid"]),
        "tools": ["lookup_task:lookup"], "output_dir": str(tmp_path / "runs"),
        "grader": {"type": "string_check", "name": "a", "input": "{{ sample.output_text }}", "reference": "x",
                   "operation": "eq"},
        "hyperparameters": {"max_new_tokens": 8, "max_turns": 2}}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", "compare", "--config", str(cfg), "--model",
                             "baseline", "--model", str(tiny_model), "--no-progress"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = tmp_path / "runs" / "agentrft.db"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # wait until the compare has recorded its first model's evaluation
            if db.exists():
                try:
                    with RunStore(str(db), mode="read") as st_:
                        runs = st_.list_runs()
                        if runs and runs[0]["status"] == "running" and st_.step_metrics(runs[0]["id"]):
                            break
                except StoreError:
                    pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    (run,) = RunStore(str(db), mode="read").list_runs()
    assert run["status"] == "cancelled", (run["status"], out[-2000:])


# ---- class 2: deploy options that were silently ignored ------------------------------------------------------

@pytest.mark.parametrize("mode, weight", [("shadow", "nan"), ("shadow", "0.3"), ("full", "0.5")])
def test_a_weight_outside_canary_mode_is_refused_not_ignored(tmp_path, mode, weight):
    example = TESTS.parent / "examples" / "rollout.yaml"
    url = f"sqlite:///{tmp_path / 's.db'}"
    RunStore(url).close()
    args = ["deploy", "create", "svc", "--production", "base", "--mode", mode, "--weight", weight,
            "--policy", str(example), "--store", url] + (["--candidate", "cand"] if mode != "full" else [])
    res = invoke(*args)
    assert_user_error(res, f"weight {weight}", "only mode canary")
    assert "svc" not in invoke("deploy", "list", "--store", url).stdout


def test_deploy_status_prints_markup_in_actor_and_reason_literally(tmp_path):
    example = TESTS.parent / "examples" / "rollout.yaml"
    url = f"sqlite:///{tmp_path / 's.db'}"
    RunStore(url).close()
    res = invoke("deploy", "create", "svc", "--production", "base", "--candidate", "cand", "--mode", "canary",
                 "--policy", str(example), "--actor", "[/bold]erin", "--store", url)
    assert res.returncode == 0, res.stderr
    res = invoke("deploy", "advance", "svc", "--reason", "looks [red]fine[/x]", "--store", url)
    assert res.returncode == 0, res.stderr
    res = invoke("deploy", "status", "svc", "--store", url)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "[/bold]erin" in res.stdout and "looks [red]fine[/x]" in res.stdout


def test_registry_without_config_is_read_only(tmp_path):
    res = invoke("registry", "--store", str(tmp_path / "typo" / "x.db"))
    assert_user_error(res, "no store at", "nothing was created")
    assert list(tmp_path.iterdir()) == []
