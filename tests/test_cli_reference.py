"""The config reference is generated from the schemas and docs/config.md is that output; defaults are printable;
unknown keys name the nearest known key; SFT and train share key names; runs list as JSON and wrap, never cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from agentrft.cli import app

ROOT = Path(__file__).resolve().parents[1]


def test_docs_config_md_is_the_generated_reference():
    from agentrft.config_reference import reference_markdown

    assert (ROOT / "docs" / "config.md").read_text() == reference_markdown() + "\n", \
        "docs/config.md is stale: agentrft config reference > docs/config.md"
    text = reference_markdown()
    for key in ("`hyperparameters.max_signal_free_steps`", "`hyperparameters.lora.r`", "`environment`",
                "`monitors.pause_on_alert`", "`hyperparameters.n_epochs`"):
        assert key in text
    assert "(also read as epochs)" in text  # the SFT alias is documented


def test_show_defaults_is_a_config_that_loads_with_the_defaults(tmp_path):
    from agentrft.config import Hyperparameters, load_config
    from agentrft.rl.sft import SFTConfig

    res = CliRunner().invoke(app, ["config", "show-defaults"])
    assert res.exit_code == 0
    data = yaml.safe_load(res.output)
    data.update(model="m", training_file="t.jsonl", grader={"type": "string_check", "name": "x", "input": "a",
                                                             "reference": "b", "operation": "eq"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert load_config(tmp_path / "c.yaml").hyperparameters == Hyperparameters()
    res = CliRunner().invoke(app, ["config", "show-defaults", "--sft"])
    sft = yaml.safe_load(res.output)
    assert SFTConfig.model_validate({**sft, "model": "m", "demos_file": "d", "output_dir": "o"}).hyperparameters.n_epochs == 3


@pytest.mark.parametrize("bad, hint", [
    ({"hyperparameters": {"n_epoch": 2}}, "hyperparameters.n_epoch: Extra inputs are not permitted (did you mean 'n_epochs'? allowed: "),
    ({"hyperparameters": {"lora": {"rank": 8}}}, "hyperparameters.lora.rank: Extra inputs are not permitted (allowed: alpha, dropout, r, target_modules)"),
    ({"validaton_file": "v.jsonl"}, "validaton_file: Extra inputs are not permitted (did you mean 'validation_file'?"),
])
def test_unknown_keys_name_the_nearest_key_and_the_allowed_ones(bad, hint):
    from agentrft.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"model": "m", "training_file": "t", "grader": {"type": "x"}, **bad}, source="c.yaml")
    assert f"c.yaml: {hint}" in str(e.value)


def test_sft_reads_n_epochs_like_train_and_still_reads_epochs(tmp_path):
    from agentrft.config import ConfigError
    from agentrft.rl.sft import load_sft_config

    for key in ("n_epochs", "epochs"):
        (tmp_path / "s.yaml").write_text(f"model: m\ndemos_file: d\noutput_dir: o\nhyperparameters: {{{key}: 5}}\n")
        assert load_sft_config(tmp_path / "s.yaml")[0].hyperparameters.n_epochs == 5
    (tmp_path / "s.yaml").write_text("model: m\ndemos_file: d\noutput_dir: o\nhyperparameters: {n_epoch: 5}\n")
    with pytest.raises(ConfigError, match="did you mean 'n_epochs'"):
        load_sft_config(tmp_path / "s.yaml")


def test_runs_as_json_and_long_ids_wrap_instead_of_being_cut(tmp_path):
    from agentrft.store import RunStore

    url = f"sqlite:///{tmp_path / 's.db'}"
    st = RunStore(url)
    name = "a-run-with-a-rather-long-descriptive-name-that-will-not-fit"
    run_id = st.create_run(name, {"model": "m"}, base_model="/some/very/long/path/to/a/base/model/directory/here")
    st.close()
    res = CliRunner().invoke(app, ["runs", "--store", url, "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert [r["id"] for r in rows] == [run_id] and rows[0]["name"] == name
    res = CliRunner(env={"COLUMNS": "80"}).invoke(app, ["runs", "--store", url])
    assert res.exit_code == 0 and "…" not in res.output
    assert run_id in "".join(line.strip("│ ").split("│")[0].strip() for line in res.output.splitlines())
