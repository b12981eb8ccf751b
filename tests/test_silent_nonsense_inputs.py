"""Silent nonsense at load (issue 14, class 2): non-finite numbers and absurd bounds in the hyperparameters, and
NaN/Infinity in dataset rows, are rejected naming the field or file:line."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from agentrft.config import ConfigError, Hyperparameters, load_config
from agentrft.data import DatasetError, load_dataset

FLOAT_FIELDS = sorted(n for n, f in Hyperparameters.model_fields.items() if f.annotation in (float, float | None))


def write_config(tmp_path, hp_yaml: str):
    (tmp_path / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    p = tmp_path / "config.yaml"
    p.write_text("model: m\ntraining_file: train.jsonl\ngrader: {type: string_check, name: g, operation: eq, "
                 "input: a, reference: b}\nhyperparameters:\n" + hp_yaml)
    return p


def test_every_float_hyperparameter_is_covered():
    assert {"temperature", "learning_rate", "top_p", "kl_coef", "tool_timeout_s"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_hyperparameters_are_rejected_naming_the_field(tmp_path, field, value):
    p = write_config(tmp_path, f"  {field}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"config.yaml: hyperparameters.{field}: " in str(e.value)
    assert "finite" in str(e.value) or "greater" in str(e.value) or "less" in str(e.value)


def test_non_finite_lora_alpha_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"hyperparameters\.lora\.alpha: Input should be a finite number"):
        load_config(write_config(tmp_path, "  lora: {alpha: .inf}\n"))


@pytest.mark.parametrize("field,value", [("max_steps", "1.0e+30"), ("max_steps", "1.0e+15"), ("max_steps", "100000000000"),
                                         ("max_context_tokens", "1.0e+12"), ("group_size", "1.0e+9"),
                                         ("max_new_tokens", "1.0e+30"), ("eval_samples", "1000000")])
def test_absurd_bounds_are_rejected(tmp_path, field, value):
    # a YAML float beyond int range is refused by the parser; any other is over the field's upper bound
    with pytest.raises(ConfigError, match=rf"config\.yaml: hyperparameters\.{field}: (Input should be less than or "
                                          rf"equal to \d|Unable to parse input string as an integer, exceeded)"):
        load_config(write_config(tmp_path, f"  {field}: {value}\n"))


def test_sane_values_still_load(tmp_path):
    c = load_config(write_config(tmp_path, "  temperature: 0.7\n  max_steps: 1000\n  max_signal_free_steps: 5\n"))
    assert c.hyperparameters.temperature == 0.7 and c.hyperparameters.max_steps == 1000
    assert c.hyperparameters.max_signal_free_steps == 5


@settings(max_examples=40, deadline=None)
@given(const=st.sampled_from(["NaN", "Infinity", "-Infinity"]),
       where=st.sampled_from(["top", "reference", "nested", "message_extra"]))
def test_nan_infinity_in_rows_are_rejected_with_file_line(tmp_path_factory, const, where):
    d = tmp_path_factory.mktemp("rows")
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
    bad = {"top": '{"messages": [{"role": "user", "content": "hi"}], "score": %s}',
           "reference": '{"messages": [{"role": "user", "content": "hi"}], "reference_answer": [1, %s]}',
           "nested": '{"messages": [{"role": "user", "content": "hi"}], "meta": {"a": {"b": %s}}}',
           "message_extra": '{"messages": [{"role": "user", "content": "hi", "weight": %s}]}'}[where] % const
    p = d / "t.jsonl"
    p.write_text(good + "\n" + bad + "\n" + good + "\n")
    with pytest.raises(DatasetError) as e:
        load_dataset(p)
    assert e.value.problems == [f"{p}:2: {const} is not JSON (strict JSON has no NaN or Infinity)"]


@pytest.mark.parametrize("hp", ["learning_rate: .inf", "until_loss: .nan", "lora: {alpha: .inf}"])
def test_sft_config_rejects_non_finite_values(tmp_path, hp):
    from agentrft.rl.sft import load_sft_config

    p = tmp_path / "sft.yaml"
    p.write_text(f"model: m\ndemos_file: d.jsonl\noutput_dir: out\nhyperparameters: {{{hp}}}\n")
    field = hp.split(":")[0] + (".alpha" if hp.startswith("lora") else "")
    with pytest.raises(ConfigError, match=rf"sft\.yaml: hyperparameters\.{field}: Input should be a finite number"):
        load_sft_config(p)
