"""``agentrft grade`` (validate / run / batch) as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

from agentrft.graders.base import ERROR_FLAGS

MULTI = {"type": "multi", "name": "m", "calculate_output": "0.5 * exact + 0.5 * fuzzy",
         "graders": {"exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                               "reference": "{{item.ref}}", "operation": "eq"},
                     "fuzzy": {"type": "text_similarity", "name": "fuzzy", "input": "{{sample.output_text}}",
                               "reference": "{{item.ref}}", "evaluation_metric": "fuzzy_match"}}}


def cli(*args, cwd):
    p = subprocess.run([sys.executable, "-m", "agentrft.graders.cli", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return p


def test_validate(tmp_path):
    rc, out, _ = cli("validate", write(tmp_path, "g.json", MULTI), cwd=tmp_path)
    res = json.loads(out)
    assert rc == 0 and res["valid"] and res["type"] == "multi" and len(res["version"]) == 16
    bad = {**MULTI, "calculate_output": "exact +"}
    rc, out, _ = cli("validate", write(tmp_path, "b.json", bad), cwd=tmp_path)
    assert rc == 1 and json.loads(out)["valid"] is False and "calculate_output" in json.loads(out)["error"]
    rc, _, err = cli("validate", write(tmp_path, "broken.json", "{\n  \"type\": }"), cwd=tmp_path)
    assert rc == 2 and "broken.json:2:" in err


def test_run_text_and_object_samples(tmp_path):
    g = write(tmp_path, "g.json", MULTI)
    i = write(tmp_path, "i.json", {"ref": "Paris"})
    rc, out, _ = cli("run", "--grader", g, "--item", i, "--sample", write(tmp_path, "s.txt", "Paris\n"), cwd=tmp_path)
    res = json.loads(out)
    assert rc == 0 and res["reward"] == 1.0 and res["sub_rewards"] == {"exact": 1.0, "fuzzy": 1.0}
    md = res["metadata"]
    assert md["name"] == "m" and md["type"] == "multi" and md["execution_time"] > 0
    assert set(ERROR_FLAGS) <= set(md["errors"]) and not any(md["errors"].values())
    assert md["scores"] == {"exact": 1.0, "fuzzy": 1.0}
    s = write(tmp_path, "s.json", {"output_text": "Pariss", "output_tools": []})
    res = json.loads(cli("run", "-g", g, "-i", i, "-s", s, cwd=tmp_path)[1])
    assert res["sub_rewards"]["exact"] == 0.0 and 0.9 < res["sub_rewards"]["fuzzy"] < 1.0


def test_run_flags(tmp_path):
    g = write(tmp_path, "g.json", MULTI)
    rc, out, _ = cli("run", "-g", g, "-i", write(tmp_path, "i.json", {}), "-s", write(tmp_path, "s.txt", "x"),
                     cwd=tmp_path)
    res = json.loads(out)
    assert rc == 0 and res["metadata"]["errors"]["invalid_variable_error"] is True
    bad = write(tmp_path, "bad.json", {**MULTI, "calculate_output": "exact / / fuzzy"})
    rc, out, _ = cli("run", "-g", bad, "-s", write(tmp_path, "s2.txt", "x"), cwd=tmp_path)
    res = json.loads(out)
    assert rc == 1 and res["reward"] == 0.0 and res["metadata"]["errors"]["formula_parse_error"] is True


def test_batch(tmp_path):
    g = write(tmp_path, "g.json", MULTI)
    rows = [json.dumps({"item": {"ref": "a"}, "sample": "a"}), "{not json", "",
            json.dumps({"item": {"ref": "abcd"}, "sample": {"output_text": "abce"}}), json.dumps({"item": {}})]
    inp = write(tmp_path, "rows.jsonl", "\n".join(rows) + "\n")
    rc, _, err = cli("batch", "-g", g, "-i", inp, "-o", tmp_path / "out.jsonl", cwd=tmp_path)
    assert rc == 1  # bad rows are reported by the exit code, after everything else was graded
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["line"] for o in out] == [1, 2, 4, 5]
    assert out[0]["reward"] == 1.0 and out[2]["reward"] == 0.5 * 0 + 0.5 * 0.75
    assert out[1]["error"].endswith("rows.jsonl:2: not valid JSON: Expecting property name enclosed in double quotes") and "rows.jsonl:5:" in out[3]["error"]
    assert '"bad_rows": 2' in err and '"graded": 2' in err
