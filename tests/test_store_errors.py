"""Store errors are answers, and read-only commands write nothing (issue 14, classes 1 and 3).

Every store that cannot be opened — garbage, truncated, a directory, a missing file, an unknown URL scheme, an
unreachable server, a file locked by another process past the busy timeout — gives ``error: …`` naming the store,
exit 2 and no traceback. ``runs``/``show`` open the store read-only: they read a store in a read-only directory and
create nothing; ``--resume`` of an unknown run creates no store; a run whose model does not load is ``failed`` and
leaves no run directory. SQLite here, and the live PostgreSQL at 127.0.0.1:5432 when it answers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

import lookup_task
from agentrft.store import RunStore, StoreError

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
         "COLUMNS": "250", **(env or {})}
    return subprocess.run([sys.executable, "-m", "agentrft.cli", *args], env=e, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def assert_user_error(res: subprocess.CompletedProcess, *names: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out, out
    assert "error:" in res.stderr, out
    for n in names:
        assert n in res.stderr, (n, out)


def make_store(path: Path, n: int = 2) -> list[str]:
    st = RunStore("sqlite:///" + str(path))
    ids = [st.create_run(f"r{i}", {"pad": "x" * 3000}) for i in range(n)]
    st.close()
    return ids


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# SQLite: files that are not a store
# ---------------------------------------------------------------------------------------------------------------


def _garbage(tmp: Path) -> tuple[str, str]:
    p = tmp / "garbage.db"
    p.write_bytes(bytes(range(256)) * 40)
    return "sqlite:///" + str(p), str(p)


def _truncated(tmp: Path) -> tuple[str, str]:
    p = tmp / "trunc.db"
    make_store(p, 3)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    return "sqlite:///" + str(p), str(p)


def _text(tmp: Path) -> tuple[str, str]:
    p = tmp / "notes.txt"
    p.write_text("these are notes, not a database\n" * 10)
    return str(p), str(p)  # a plain path is taken as a SQLite file


def _directory(tmp: Path) -> tuple[str, str]:
    p = tmp / "adir.db"
    p.mkdir()
    return "sqlite:///" + str(p), str(p)


def _missing(tmp: Path) -> tuple[str, str]:
    return "sqlite:///" + str(tmp / "typo" / "dir" / "x.db"), str(tmp / "typo" / "dir" / "x.db")


def _scheme(tmp: Path) -> tuple[str, str]:
    return "mysqlx://db.example/x", "mysqlx"


def _not_a_url(tmp: Path) -> tuple[str, str]:
    return "postgresql+psycopg://user@host:notaport/db", "notaport"


BAD = {"garbage": _garbage, "truncated": _truncated, "text file": _text, "directory": _directory,
       "missing": _missing, "unknown scheme": _scheme, "malformed url": _not_a_url}


@pytest.mark.parametrize("case", list(BAD))
def test_a_store_that_cannot_be_opened_is_a_store_error_naming_it(tmp_path, case):
    url, name = BAD[case](tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for mode in ("read", "existing", "create"):
        if case == "missing" and mode == "create":
            continue  # creating it is what create mode is for
        with pytest.raises(StoreError, match=name.replace("+", r"\+")):
            RunStore(url, mode=mode, busy_timeout_s=1).list_runs()
    # nothing created beside it (SQLite's own -wal/-shm index files of an existing file aside)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == before


@pytest.mark.parametrize("case", ["garbage", "truncated", "directory", "missing", "unknown scheme"])
@pytest.mark.parametrize("command", ["runs", "show"])
def test_runs_and_show_on_a_bad_store_say_so_without_a_traceback(tmp_path, case, command):
    url, name = BAD[case](tmp_path)
    args = ["runs", "--store", url] if command == "runs" else ["show", "run-x", "--store", url]
    res = cli(*args)
    assert_user_error(res, name)
    assert not (tmp_path / "typo").exists()  # `runs --store sqlite:///typo/dir/x.db` creates no directories


def test_a_run_id_prefix_matching_two_runs_is_an_error_listing_them(tmp_path):
    ids = make_store(tmp_path / "s.db", 2)
    res = cli("show", "run-", "--store", "sqlite:///" + str(tmp_path / "s.db"))
    assert_user_error(res, "'run-'", *ids)


# ---------------------------------------------------------------------------------------------------------------
# SQLite: read-only commands read, and write nothing
# ---------------------------------------------------------------------------------------------------------------


def _make_read_only(paths: list[Path]) -> list[Path]:
    """Make ``paths`` unwritable — for root too (``chattr +i``), else by mode bits; returns what to undo."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return paths
    if not shutil.which("chattr"):
        pytest.skip("running as root without chattr: cannot make a directory read-only")
    done = []
    for p in paths:
        if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode != 0:
            _undo_read_only(done)
            pytest.skip("this filesystem does not support chattr +i")
        done.append(p)
    return done


def _undo_read_only(paths: list[Path]) -> None:
    for p in paths:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(p)], capture_output=True)
        else:
            p.chmod(0o755 if p.is_dir() else 0o644)


@pytest.mark.parametrize("what", ["directory", "directory and file"])
def test_runs_and_show_read_a_store_in_a_read_only_directory(tmp_path, what):
    d = tmp_path / "ro"
    d.mkdir()
    ids = make_store(d / "s.db", 2)
    assert sorted(p.name for p in d.iterdir()) == ["s.db"]  # the writer checkpointed and removed its WAL files
    ro = _make_read_only([d] if what == "directory" else [d / "s.db", d])
    try:
        with pytest.raises(OSError):  # it really is read-only, for this user too
            (d / "probe").write_text("x")
        url = "sqlite:///" + str(d / "s.db")
        res = cli("runs", "--store", url)
        assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
        assert all(i in res.stdout for i in ids)
        res = cli("show", ids[0], "--store", url)
        assert res.returncode == 0 and ids[0] in res.stdout, res.stdout + res.stderr
        # a writer on it fails with a message, not a traceback
        with pytest.raises(StoreError, match="s.db"):
            RunStore(url, busy_timeout_s=1).create_run("x", {})
    finally:
        _undo_read_only(ro)


def test_read_only_commands_leave_the_store_file_as_it_was(tmp_path):
    ids = make_store(tmp_path / "s.db", 2)
    before = digest(tmp_path / "s.db")
    for args in (["runs"], ["show", ids[1]]):
        res = cli(*args, "--store", "sqlite:///" + str(tmp_path / "s.db"))
        assert res.returncode == 0, res.stderr
    assert digest(tmp_path / "s.db") == before
    # only SQLite's own WAL index files may appear beside it (a reader of a WAL database needs them)
    assert {p.name for p in tmp_path.iterdir()} <= {"s.db", "s.db-wal", "s.db-shm"}
    st = RunStore("sqlite:///" + str(tmp_path / "s.db"), mode="read")
    with pytest.raises(StoreError, match="read-only"):
        st.create_run("x", {})
    st.close()


def test_a_store_locked_by_another_process_past_the_busy_timeout_is_an_error(tmp_path):
    path = tmp_path / "s.db"
    ids = make_store(path, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match=r"s\.db is locked by another process"):
            RunStore("sqlite:///" + str(path), busy_timeout_s=0.3)
        with pytest.raises(StoreError, match="locked by another process"):
            RunStore("sqlite:///" + str(path), mode="existing", busy_timeout_s=0.3).set_status(ids[0], "running")
        # readers of a WAL store are not blocked by a writer: `runs` still reads it
        res = cli("runs", "--store", "sqlite:///" + str(path), env={"AGENTRFT_STORE_BUSY_TIMEOUT_S": "0.3"})
        assert res.returncode == 0 and ids[0] in res.stdout, res.stderr
        # a training run on it stops before the model loads, with the store named
        files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
        cfg = _config(tmp_path, "no-such-model", files, store="sqlite:///" + str(path))
        res = cli("train", str(cfg), "--no-progress", env={"AGENTRFT_STORE_BUSY_TIMEOUT_S": "0.3"})
        assert_user_error(res, "s.db", "locked")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# failed or mistaken training commands
# ---------------------------------------------------------------------------------------------------------------


def _config(tmp: Path, model: str, files: dict[str, Path], **extra: object) -> Path:
    cfg = {"name": "errs", "model": model, "training_file": str(files["train"]),
           "validation_file": str(files["valid"]), "tools": ["lookup_task:lookup"], "grader": lookup_task.GRADER,
           "output_dir": str(tmp / "runs"),
           "hyperparameters": {"max_steps": 1, "batch_size": 2, "group_size": 2, "max_new_tokens": 8, "max_turns": 2},
           **extra}
    p = tmp / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_resume_of_an_unknown_run_creates_no_store(tmp_path):
    files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    cfg = _config(tmp_path, "no-such-model", files)
    res = cli("train", str(cfg), "--resume", "run-nope", "--no-progress")
    assert_user_error(res, "agentrft.db", "nothing there to open or resume")
    assert not (tmp_path / "runs").exists()
    # with a store there, an unknown run id is named and nothing is added to the store
    ids = make_store(tmp_path / "runs" / "agentrft.db", 1)
    before = digest(tmp_path / "runs" / "agentrft.db")
    res = cli("train", str(cfg), "--resume", "run-nope", "--no-progress")
    assert_user_error(res, "run-nope")
    st = RunStore("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"), mode="read")
    assert [r["id"] for r in st.list_runs()] == ids
    st.close()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("agentrft.db")) == []
    del before


@pytest.mark.parametrize("model", ["empty dir", "dir without config.json", "missing path"])
def test_a_model_that_does_not_load_fails_the_run_and_leaves_no_run_directory(tmp_path, model):
    files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    m = tmp_path / "model"
    if model != "missing path":
        m.mkdir()
    if model == "dir without config.json":
        (m / "tokenizer.json").write_text("{}")
    cfg = _config(tmp_path, str(m), files)
    res = cli("train", str(cfg), "--no-progress")
    assert_user_error(res, "model")
    st = RunStore("sqlite:///" + str(tmp_path / "runs" / "agentrft.db"), mode="read")
    runs = st.list_runs()
    st.close()
    assert [r["status"] for r in runs] == ["failed"]  # not `queued` forever
    assert not (tmp_path / "runs" / runs[0]["id"]).exists()


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL (the live server at 127.0.0.1:5432, database `test`; each test gets its own schema, dropped after)
# ---------------------------------------------------------------------------------------------------------------

PG = os.environ.get("AGENTRFT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def pg_url():
    psycopg = pytest.importorskip("psycopg")
    try:
        con = psycopg.connect(PG, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"no PostgreSQL at {PG}: {e}")
    schema = "agentrft_t_" + uuid.uuid4().hex[:12]
    con.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield PG.replace("postgresql://", "postgresql+psycopg://", 1) + f"?options=-csearch_path%3D{schema}", schema, con
    finally:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        con.close()


def _tables(con, schema: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                                      (schema,)).fetchall()]


def test_postgres_read_only_open_creates_no_tables_and_takes_no_writes(pg_url):
    url, schema, con = pg_url
    with pytest.raises(StoreError, match="not an agentrft store"):
        RunStore(url, mode="read")
    with pytest.raises(StoreError, match="not an agentrft store"):
        RunStore(url, mode="existing")
    assert _tables(con, schema) == []
    res = cli("runs", "--store", url)
    assert_user_error(res, "not an agentrft store")
    assert _tables(con, schema) == []

    st = RunStore(url)
    ids = [st.create_run("a", {}), st.create_run("b", {})]
    st.close()
    ro = RunStore(url, mode="read")
    assert sorted(r["id"] for r in ro.list_runs()) == sorted(ids)
    with pytest.raises(StoreError, match="read-only"):
        ro.set_status(ids[0], "running")
    from sqlalchemy import text

    with pytest.raises(Exception, match="read-only transaction"):  # the session itself refuses writes
        with ro.engine.begin() as c:
            c.execute(text("UPDATE runs SET name = 'x'"))
    ro.close()
    res = cli("runs", "--store", url)
    assert res.returncode == 0 and all(i in res.stdout for i in ids), res.stderr
    res = cli("show", "run-", "--store", url)
    assert_user_error(res, "'run-'", *ids)


def test_postgres_unreachable_or_missing_database_is_named(pg_url):
    url, _schema, _con = pg_url
    missing = url.replace("/test?", f"/no_such_db_{uuid.uuid4().hex[:6]}?")
    for bad in (missing, "postgresql+psycopg://postgres@127.0.0.1:1/test"):
        with pytest.raises(StoreError, match="cannot connect"):
            RunStore(bad)
        res = cli("runs", "--store", bad)
        assert_user_error(res, "cannot connect")


def test_postgres_heartbeat_column_is_added_to_an_old_store(pg_url):
    url, schema, con = pg_url
    st = RunStore(url)
    rid = st.create_run("a", {})
    st.close()
    con.execute(f'ALTER TABLE "{schema}".runs DROP COLUMN heartbeat_at')
    ro = RunStore(url, mode="read")  # an old store reads without the column
    assert ro.get_run(rid)["heartbeat_at"] is None
    ro.close()
    st = RunStore(url, mode="existing")
    st.set_status(rid, "running")
    assert st.get_run(rid)["heartbeat_at"] is not None
    st.close()
