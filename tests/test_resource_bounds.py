"""Resource abuse is bounded (issue 14, class 5): YAML alias bombs and deep nesting are refused at load with the
file named; the run store refuses a config that expands past its cap; the tool server streams and caps request
bodies and answers deep nesting with a 4xx JSON error; a killed or interrupted `agentrft grade` leaves no sandboxed
grader worker running and no temp directory behind. Peak memory is measured where the bound is about memory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import lookup_task
from agentrft.config import ConfigError, load_config, read_yaml

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")]),
            "COLUMNS": "200", **extra}


def bomb_yaml(levels: int, width: int = 10, key: str = "lol") -> str:
    """A billion-laughs document: level k is a list of `width` aliases to level k-1 (width**levels leaves)."""
    lines = [f'l0: &l0 ["{key}"]']
    for k in range(1, levels + 1):
        lines.append(f"l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * width) + "]")
    return "\n".join(lines)


def _config_with_grader_extra(tmp: Path, extra_yaml: str) -> Path:
    files = lookup_task.write_task(tmp / "data", n_train=4, n_valid=1, n_demos=1)
    base = {"name": "bomb", "model": "no-such-model", "training_file": str(files["train"]),
            "validation_file": str(files["valid"]), "tools": ["lookup_task:lookup"], "output_dir": str(tmp / "runs"),
            "hyperparameters": {"max_steps": 1}}
    grader = yaml.safe_dump({"grader": lookup_task.GRADER}).rstrip()
    p = tmp / "config.yaml"
    # the bomb rides in the grader's extra keys, as in the issue
    p.write_text(yaml.safe_dump(base) + grader + "\n" + textwrap.indent(extra_yaml, "  ") + "\n")
    return p


# ---------------------------------------------------------------------------------------------------------------
# YAML and JSON files
# ---------------------------------------------------------------------------------------------------------------


def test_an_alias_bomb_in_a_grader_is_refused_naming_the_file(tmp_path):
    cfg = _config_with_grader_extra(tmp_path, bomb_yaml(9))  # 10**9 leaves in ~600 bytes
    assert cfg.stat().st_size < 4000
    with pytest.raises(ConfigError, match=r"config\.yaml: expands to more than"):
        load_config(cfg)


def test_an_alias_bomb_costs_no_memory_and_no_store(tmp_path):
    """The CLI refuses the bomb before anything is built or stored, and its peak memory while doing so stays
    that of a small config (measured in the process that loads it: ru_maxrss before and after)."""
    cfg = _config_with_grader_extra(tmp_path, bomb_yaml(9))
    small = _config_with_grader_extra(tmp_path / "small", "note: [1, 2, 3]")
    script = textwrap.dedent("""
        import resource, sys
        from agentrft.config import ConfigError, load_config
        load_config(sys.argv[2])                      # warm up imports on a small config
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_config(sys.argv[1])
            print("loaded")
        except ConfigError as e:
            print("refused:", e)
        print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    res = subprocess.run([sys.executable, "-c", script, str(cfg), str(small)], env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "refused:" in res.stdout and "config.yaml" in res.stdout, res.stdout
    grew_kb = int(res.stdout.split("grew_kb")[1])
    assert grew_kb < 32 * 1024, f"peak memory grew by {grew_kb} kB loading a {cfg.stat().st_size}-byte config"

    out = subprocess.run([sys.executable, "-m", "agentrft.cli", "train", str(cfg), "--no-progress"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert str(cfg) in out.stderr and "expands to more than" in out.stderr
    assert not (tmp_path / "runs").exists()  # no store, no run directory


@pytest.mark.parametrize("case", ["recursive alias", "deep nesting", "deep flow nesting", "not utf-8",
                                  "merge-key bomb"])
def test_hostile_yaml_is_a_config_error_naming_the_file(tmp_path, case):
    p = tmp_path / "c.yaml"
    if case == "recursive alias":
        p.write_text("a: &a [1, *a]\n")
    elif case == "deep nesting":
        p.write_text("".join("  " * i + f"k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n")
    elif case == "deep flow nesting":
        p.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    elif case == "not utf-8":
        p.write_bytes(b"name: ok\nmodel: caf\xe9\n")
    else:
        lines = ["b0: &b0 {x: 1}"]
        for k in range(1, 10):
            lines.append(f"b{k}: &b{k} " + "{" + ", ".join(f"k{j}: *b{k - 1}" for j in range(10)) + "}")
        p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(p)
    assert str(p) in str(e.value)
    if case == "not utf-8":
        assert "line 2" in str(e.value) and "UTF-8" in str(e.value)


def test_ordinary_configs_still_load(tmp_path):
    big = {"rows": [{"i": i, "tags": ["a", "b"]} for i in range(20_000)]}  # 80k values: under the bound
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump(big))
    assert read_yaml(p) == big
    shared = tmp_path / "anchors.yaml"
    shared.write_text("base: &b {lr: 0.1, seed: 1}\nrun1: {<<: *b, seed: 2}\nrun2: *b\n")
    assert read_yaml(shared) == {"base": {"lr": 0.1, "seed": 1}, "run1": {"lr": 0.1, "seed": 2},
                                 "run2": {"lr": 0.1, "seed": 1}}


@pytest.mark.parametrize("where", ["grader file", "grade run", "dataset line"])
def test_pathologically_nested_json_is_named_not_a_traceback(tmp_path, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "grader file":
        (tmp_path / "g.json").write_text(deep)
        files = lookup_task.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(yaml.safe_dump({"model": "m", "training_file": str(files["train"]), "grader": "g.json"}))
        with pytest.raises(ConfigError, match=r"g\.json: nested more than"):
            load_config(cfg)
        return
    if where == "grade run":
        (tmp_path / "g.json").write_text(deep)
        (tmp_path / "s.json").write_text('"x"')
        res = subprocess.run([sys.executable, "-m", "agentrft.cli", "grade", "run", "-g", str(tmp_path / "g.json"),
                              "-s", str(tmp_path / "s.json")], env=_env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert "g.json" in res.stderr and "nested" in res.stderr
        return
    from agentrft.data import DatasetError, load_dataset

    f = tmp_path / "train.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n' + '{"messages": ' + deep + "}\n")
    with pytest.raises(DatasetError, match=r"train\.jsonl:2: nested more than"):
        load_dataset(f)


def test_the_store_refuses_a_config_that_expands_past_its_cap(tmp_path):
    """A config built in Python (no YAML) whose shared references expand enormously: refused while encoding,
    with bounded memory (tracemalloc's peak)."""
    import tracemalloc

    from agentrft.store import RunStore, StoreError

    leaf: object = ["lol"] * 10
    for _ in range(8):
        leaf = [leaf] * 10  # 10**9 strings when written out
    st = RunStore("sqlite:///" + str(tmp_path / "s.db"))
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match="over 8 MB"):
            st.create_run("bomb", {"grader": {"extra": leaf}})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024, peak
    assert st.list_runs() == []
    st.close()
    assert (tmp_path / "s.db").stat().st_size < 1024 * 1024


# ---------------------------------------------------------------------------------------------------------------
# the tool server
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from agentrft.tools.registry import resolve_python_tool
    from agentrft.tools.server import make_tool_server

    with TestClient(make_tool_server(resolve_python_tool("lookup_task:lookup"))) as c:
        yield c


def _call(**kw: object) -> dict:
    return {"type": "function_call", "call_id": "c1", "trace_id": "t1", "name": "lookup", "arguments": "{}", **kw}


@pytest.mark.parametrize("case", ["declared too large", "streamed too large", "nested body", "nested arguments",
                                  "nested item", "bad content-length"])
def test_hostile_bodies_get_a_4xx_json_answer(client, case):
    from agentrft.tools.server import MAX_REQUEST_BYTES

    headers = {"content-type": "application/json"}
    if case == "declared too large":
        r = client.post("/", content=b" " * (MAX_REQUEST_BYTES + 1), headers=headers)
        want = 413
    elif case == "streamed too large":
        def chunks():
            for _ in range(40):
                yield b" " * 65536  # 2.6 MB, no Content-Length: chunked
        r = client.post("/", content=chunks(), headers=headers)
        want = 413
    elif case == "nested body":
        r = client.post("/", content=b"[" * 400_000 + b"]" * 400_000, headers=headers)  # 800 kB
        want = 400
    elif case == "nested arguments":
        r = client.post("/", json=_call(arguments="[" * 5000 + "]" * 5000))
        want = 400
    elif case == "nested item":
        nested: object = {}
        for _ in range(70):
            nested = {"a": nested}
        r = client.post("/", content=json.dumps(_call(item=nested)).encode(), headers=headers)
        want = 400
    else:
        r = client.post("/", content=b"{}", headers={**headers, "content-length": "lots"})
        want = 400
    assert r.status_code == want, r.text
    body = r.json()
    assert body["type"] == "function_call_output" and body["output"].startswith("Error:")
    if case.startswith("nested"):
        assert "nested" in body["output"], body
    assert "Traceback" not in r.text
    assert client.get("/health").status_code == 200


SERVER = textwrap.dedent("""
    import socket, sys, uvicorn
    from agentrft.tools.registry import resolve_python_tool
    from agentrft.tools.server import make_tool_server
    sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    app = make_tool_server(resolve_python_tool("lookup_task:lookup"))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
""")


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_a_huge_streamed_body_never_sits_in_the_servers_memory():
    """64 MB sent chunked (no Content-Length) to a real uvicorn server: the answer is a 413 (or the connection is
    closed once the cap is passed) and the server's peak memory (VmHWM) grows by far less than the body."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "server did not start"
                time.sleep(0.1)
        before = _vm_hwm_kb(proc.pid)
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sent = 0
        try:
            for _ in range(1024):  # 64 MB
                s.sendall(frame)
                sent += len(chunk)
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading after the cap: expected
        try:
            reply = s.recv(65536)
        except OSError:
            reply = b""
        s.close()
        assert reply == b"" or reply.startswith(b"HTTP/1.1 413"), reply[:200]
        grew = _vm_hwm_kb(proc.pid) - before
        assert grew < 16 * 1024, f"server peak memory grew {grew} kB for a {sent}-byte body"
        r = socket.create_connection(("127.0.0.1", port), timeout=10)
        r.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert r.recv(100).startswith(b"HTTP/1.1 200")
        r.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------------------------
# sandboxed grader workers die with their parent
# ---------------------------------------------------------------------------------------------------------------

SPIN = {"type": "python", "name": "spin", "source": "def grade(sample, item):\n    while True:\n        pass\n"}


def _workers(tmpdir: Path) -> list[int]:
    """Pids of sandbox workers whose scratch lies under ``tmpdir``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"sandbox_worker.py" in cmd and str(tmpdir).encode() in cmd:
            out.append(int(d.name))
    return out


def _wait_until(cond, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(what)
        time.sleep(0.1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux process model")
@pytest.mark.parametrize("how", ["SIGKILL grade run", "SIGINT grade batch"])
def test_sandbox_workers_and_temp_dirs_go_with_the_cli(tmp_path, how):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmp_path / "g.json").write_text(json.dumps(SPIN))
    (tmp_path / "s.json").write_text('"x"')
    (tmp_path / "in.jsonl").write_text('{"item": {}, "sample": "a"}\n{"item": {}, "sample": "b"}\n')
    if how == "SIGKILL grade run":
        args = ["grade", "run", "-g", str(tmp_path / "g.json"), "-s", str(tmp_path / "s.json")]
    else:
        args = ["grade", "batch", "-g", str(tmp_path / "g.json"), "-i", str(tmp_path / "in.jsonl"), "-w", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "agentrft.cli", *args], env=_env(TMPDIR=str(tmpdir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        want = 1 if how.endswith("run") else 2
        _wait_until(lambda: len(_workers(tmpdir)) >= want or proc.poll() is not None, "no worker started")
        assert proc.poll() is None, proc.communicate()
        workers = _workers(tmpdir)
        time.sleep(0.5)  # let the graders get into their loop
        proc.send_signal(signal.SIGKILL if how.startswith("SIGKILL") else signal.SIGINT)
        rc = proc.wait(timeout=60)  # Ctrl-C stops the CLI (it used to wait for the never-ending graders)
        if how.startswith("SIGINT"):
            assert rc == 130, proc.stderr.read()
        _wait_until(lambda: not any(Path(f"/proc/{p}").exists() and b"sandbox_worker" in
                                    Path(f"/proc/{p}/cmdline").read_bytes() for p in workers if
                                    Path(f"/proc/{p}/cmdline").exists()),
                    f"sandbox workers {workers} outlived their parent")
        _wait_until(lambda: not list(tmpdir.glob("agentrft-sandbox-*")), "the sandbox temp dir was left behind")
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _workers(tmpdir):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
