"""Property-based fuzzing of what users and adversaries hand us (issue 14): config YAML, dataset JSONL lines,
grader JSON and tool-server HTTP bodies. The properties: nothing but the documented error type ever comes out (so
the CLI prints ``error: …`` and never a traceback), and every error names its place (the file, the file:line, or
the field). The default suite runs a bounded number of examples per input class; ``-m slow`` runs many more.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LONG = settings(max_examples=1500, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ---- strategies -----------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
json_values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                           max_leaves=20)
CONFIG_KEYS = ["name", "validation_file", "tools", "holdout_graders", "output_dir", "store", "approval", "monitors",
               "seed", "typo_key"]
HP_KEYS = ["n_epochs", "batch_size", "group_size", "learning_rate", "temperature", "max_steps", "lora", "eval_interval",
           "max_new_tokens", "save_interval_s", "kl_coef"]
configs = st.fixed_dictionaries(
    {"model": st.one_of(st.just("m"), scalars), "training_file": st.one_of(st.just("train.jsonl"), scalars),
     "grader": st.one_of(st.just({"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                                  "reference": "x", "operation": "eq"}), json_values)},
    optional={k: json_values for k in CONFIG_KEYS} | {
        "hyperparameters": st.dictionaries(st.sampled_from(HP_KEYS), scalars, max_size=5)})
yaml_noise = st.text(alphabet=string.printable + "&*[]{}:-!|>%@`'\"\u00e9\u2603", max_size=300)
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]\n" for p, c in zip("abcdefgh", "bcdefghi"))
yaml_texts = st.one_of(configs.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), yaml_noise,
                       st.sampled_from([ALIAS_BOMB, "a: &a [1, *a]\n", "[" * 5000, "x: " + "{a: " * 3000]))

messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool", "bot"]),
                                           "content": st.one_of(st.text(max_size=30), json_values)},
                                          optional={"tool_calls": json_values, "tool_call_id": scalars}),
                    max_size=4)
rows = st.one_of(st.fixed_dictionaries({"messages": messages}, optional={"tools": json_values, "answer": scalars}),
                 json_values)
jsonl_lines = st.one_of(rows.map(lambda r: json.dumps(r)), st.text(max_size=60).filter(lambda s: "\n" not in s),
                        st.sampled_from(['{"messages": ' + "[" * 20_000 + "]" * 20_000 + "}", "{", "\ufeff{}"]))

GRADER_TYPES = ["string_check", "text_similarity", "score_model", "label_model", "multi", "endpoint",
                "python_function", "trajectory", "nope"]
graders = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(GRADER_TYPES)},
                          optional={k: json_values for k in ("name", "input", "reference", "operation", "graders",
                                                             "calculate_output", "url", "headers", "model", "labels",
                                                             "passing_labels", "pass_threshold", "range", "function",
                                                             "evaluation_metric", "rules")}),
    json_values)


# ---- properties ------------------------------------------------------------------------------------------------


def check_config_text(tmp: Path, text: str | bytes) -> None:
    from agentrft.config import ConfigError, load_config

    p = tmp / "config.yaml"
    (p.write_bytes if isinstance(text, bytes) else lambda t: p.write_text(t, encoding="utf-8"))(text)
    try:
        load_config(p)
    except ConfigError as e:
        assert str(e).startswith(str(p)), str(e)  # every line of the message names the file
        assert all(line.startswith(str(p)) for line in str(e).splitlines() if line.strip()), str(e)


def check_dataset_lines(tmp: Path, lines: list[str | bytes]) -> None:
    from agentrft.data import DatasetError, load_dataset

    p = tmp / "train.jsonl"
    p.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines))
    try:
        load_dataset(p)
    except DatasetError as e:
        assert e.problems
        assert all(str(p) in prob for prob in e.problems), e.problems  # file:line on every problem


def check_grader_spec(spec: object) -> None:
    from agentrft.graders.base import GraderSpecError, build_grader

    try:
        g = build_grader(spec)  # type: ignore[arg-type]
    except GraderSpecError as e:
        assert str(e).strip()
        return
    g.close()


def check_grader_file(tmp: Path, runner, text: str) -> None:  # noqa: ANN001
    """`agentrft grade validate FILE` on any text: exit 0 (valid), 1 (invalid grader) or 2 (unreadable file),
    never an exception; 2 names the file."""
    from agentrft.graders.cli import app

    p = tmp / "g.json"
    p.write_text(text, encoding="utf-8")
    res = runner.invoke(app, ["validate", str(p)])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code in (0, 1, 2), res.output
    if res.exit_code == 2:
        assert str(p) in " ".join(res.output.split()), res.output


def check_body(client, body: bytes, path: str) -> None:  # noqa: ANN001
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    r.json()  # always a JSON answer
    assert "Traceback" not in r.text


# ---- the default (bounded) suite, and the long one -------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from agentrft.tools.registry import resolve_python_tool
    from agentrft.tools.server import make_tool_server

    with TestClient(make_tool_server(resolve_python_tool("lookup_task:lookup"))) as c:
        yield c


@pytest.fixture(scope="module")
def runner():
    from typer.testing import CliRunner

    return CliRunner()


bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": scalars, "trace_id": scalars,
                           "name": st.sampled_from(["lookup", "nope", ""]),
                           "arguments": st.one_of(st.text(max_size=40), json_values.map(json.dumps), json_values)},
                          optional={"item": json_values}).map(lambda d: json.dumps(d).encode()),
    st.integers(10, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(10, 20_000).map(lambda n: json.dumps({"type": "function_call", "call_id": "c", "trace_id": "t",
                                                      "name": "lookup", "arguments": "[" * n + "]" * n}).encode()),
)


@FAST
@given(text=st.one_of(yaml_texts, st.binary(max_size=200)))
# what earlier runs found (each was a message split over lines, or not starting with the file)
@example(text="\x0c")
@example(text='model: m\ntraining_file: t\ngrader: {type: string_check}\nholdout_graders: {"\\r": null}\n')
@example(text='model: m\ntraining_file: t\ngrader: {type: string_check}\nmonitors: {" \\x85": null}\n')
@example(text='grader: "\\x1E"\nmodel: m\ntraining_file: train.jsonl\n')  # a grader path with a record separator
def test_fuzz_config_yaml(tmp_dir, text):
    check_config_text(tmp_dir, text)


@FAST
@given(lines=st.lists(st.one_of(jsonl_lines, st.binary(max_size=40).filter(lambda b: b"\n" not in b)),
                      min_size=1, max_size=6))
def test_fuzz_dataset_lines(tmp_dir, lines):
    check_dataset_lines(tmp_dir, lines)


@FAST
@given(spec=graders)
def test_fuzz_grader_spec(spec):
    check_grader_spec(spec)


@settings(FAST, max_examples=25)
@given(text=st.one_of(graders.map(json.dumps), st.text(max_size=80),
                      st.integers(10, 100_000).map(lambda n: "[" * n + "]" * n)))
def test_fuzz_grader_file_through_the_cli(tmp_dir, runner, text):
    check_grader_file(tmp_dir, runner, text)


@FAST
@given(body=bodies, path=st.sampled_from(["/", "/tools/lookup", "/tools/nope"]))
@example(body=b'{"":"","call_id":Infinity,"":null}', path="/")  # once a 500: the error echoed an unencodable id
def test_fuzz_tool_server_bodies(client, body, path):
    check_body(client, body, path)


@pytest.mark.slow
@LONG
@given(text=st.one_of(yaml_texts, st.binary(max_size=400)))
def test_fuzz_config_yaml_long(tmp_dir, text):
    check_config_text(tmp_dir, text)


@pytest.mark.slow
@LONG
@given(lines=st.lists(st.one_of(jsonl_lines, st.binary(max_size=80).filter(lambda b: b"\n" not in b)),
                      min_size=1, max_size=10))
def test_fuzz_dataset_lines_long(tmp_dir, lines):
    check_dataset_lines(tmp_dir, lines)


@pytest.mark.slow
@LONG
@given(spec=graders)
def test_fuzz_grader_spec_long(spec):
    check_grader_spec(spec)


@pytest.mark.slow
@LONG
@given(body=bodies, path=st.sampled_from(["/", "/tools/lookup", "/tools/nope"]))
def test_fuzz_tool_server_bodies_long(client, body, path):
    check_body(client, body, path)
