"""The levers inside a real training run: a tiny model trained in-process (real rollouts with the real lookup tool,
a real python grader, real forward/backward passes, a real SQLite store) with the curriculum, dynamic sampling,
GiGPO step credit and the mixed GRPO + segment-DPO loss all on; the run records the levers' metrics, every
refill's trajectories, and the pool in its resume checkpoint — and a config error is named by its field."""

from __future__ import annotations

import json

import lookup_task as lt
import pytest

from agentrft.config import ConfigError, RunConfig, parse_config
from agentrft.rl.trainer import TrainingError, train
from agentrft.store import RunStore

# an untrained model's outputs differ in length, so this grader gives groups a spread of rewards (0, 0.5, 1)
SPREAD = {"type": "python", "name": "spread",
          "source": "def grade(sample, item):\n    return (len(sample['output_text']) % 3) / 2\n"}


def _cfg(tmp_path, tiny_model, files, **extra) -> RunConfig:
    data = {
        "name": "levers", "model": str(tiny_model), "training_file": str(files["train"]),
        "validation_file": str(files["valid"]), "tools": ["lookup_task:lookup"], "grader": SPREAD,
        "output_dir": str(tmp_path / "runs"),
        "hyperparameters": {"max_steps": 3, "batch_size": 2, "group_size": 4, "max_new_tokens": 10, "max_turns": 2,
                            "max_episode_steps": 2, "eval_interval": 2, "eval_samples": 2, "lora": None, "seed": 1,
                            "max_signal_free_steps": 0, "advantage": "gigpo", "loss": "mixed",
                            "segment_dpo": {"beta": 0.1, "min_reward_gap": 0.5}, "save_interval_s": 0},
        "curriculum": {"enabled": True, "retire_after": 1, "recheck_every": 2, "weakness_key": "min_tool_calls"},
        "dynamic_sampling": {"enabled": True, "max_extra_groups": 2},
        **extra,
    }
    return parse_config(data, base_dir=tmp_path)


@pytest.mark.slow  # ~60 s on the loaded 2-core machine
def test_all_levers_in_one_real_run(tmp_path, tiny_model):
    files = lt.write_task(tmp_path / "data", n_train=10, n_valid=2, n_demos=1)
    cfg = _cfg(tmp_path, tiny_model, files)
    run_id = train(cfg, progress=False)
    st = RunStore(cfg.store_url)
    rows = st.step_metrics(run_id, split="train")
    assert [m["step"] for m in rows] == [1, 2, 3]
    for m in rows:
        for key in ("curriculum/active_rows", "curriculum/retired_solved", "curriculum/retired_unsolved",
                    "curriculum/unseen_rows", "dynamic_sampling/extra_groups", "gigpo/step_groups",
                    "segment_dpo/pairs"):
            assert key in m, key
        # every rollout is recorded, refills included: (batch + extra groups) × group size
        assert m["trajectories"] == (2 + m["dynamic_sampling/extra_groups"]) * 4
        assert len(st.trajectories(run_id, step=m["step"], split="train")) == m["trajectories"]
    assert rows[0]["curriculum/unseen_rows"] < 10
    assert any(m["segment_dpo/pairs"] > 0 for m in rows)  # the spread grader gives pairs to learn from
    assert any(m["loss"] != 0 for m in rows)
    state = json.loads((cfg.output_path / run_id / "latest" / "trainer_state.json").read_text())
    assert state["levers"]["curriculum"]["records"]
    st.close()


def test_weakness_key_missing_from_rows_is_named(tmp_path, tiny_model):
    files = lt.write_task(tmp_path / "data", n_train=4, n_valid=1, n_demos=1)
    cfg = _cfg(tmp_path, tiny_model, files, curriculum={"enabled": True, "weakness_key": "category"})
    with pytest.raises(TrainingError, match=r"curriculum\.weakness_key: no training row has a field 'category'"):
        train(cfg, progress=False)


@pytest.mark.parametrize("section,value,field", [
    ("hyperparameters", {"loss": "dpo"}, "hyperparameters.loss"),
    ("hyperparameters", {"segment_dpo": {"beta": 0}}, "hyperparameters.segment_dpo.beta"),
    ("hyperparameters", {"segment_dpo": {"betta": 0.1}}, "hyperparameters.segment_dpo.betta"),
    ("hyperparameters", {"gigpo": {"gamma": 1.5}}, "hyperparameters.gigpo.gamma"),
    ("hyperparameters", {"gigpo": {"state": "full"}}, "hyperparameters.gigpo.state"),
    ("curriculum", {"retire_after": 0}, "curriculum.retire_after"),
    ("curriculum", {"enabeld": True}, "curriculum.enabeld"),
    ("dynamic_sampling", {"max_extra_groups": 0}, "dynamic_sampling.max_extra_groups"),
])
def test_config_errors_name_the_field(tmp_path, section, value, field):
    data = {"model": "m", "training_file": "t.jsonl", "grader": lt.GRADER, section: value}
    with pytest.raises(ConfigError) as e:
        parse_config(data, base_dir=tmp_path, source="cfg.yaml")
    assert field in str(e.value)


def test_check_shows_the_curriculum_pool(tmp_path, tiny_model):
    """`agentrft check` with curriculum on reports the pool its samples would start (real rollouts, real grader):
    the untrained model never answers, so every item is never solved."""
    import typer
    import yaml
    from typer.testing import CliRunner

    from agentrft.evals.cli import register

    files = lt.write_task(tmp_path / "data", n_train=6, n_valid=2, n_demos=1)
    top = typer.Typer()
    register(top)
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({
        "model": str(tiny_model), "training_file": str(files["train"]), "tools": ["lookup_task:lookup"],
        "grader": lt.GRADER, "output_dir": str(tmp_path / "runs"), "curriculum": {"enabled": True},
        "hyperparameters": {"max_new_tokens": 6, "max_turns": 1}}))
    r = CliRunner().invoke(top, ["check", str(conf), "--samples", "2", "--max-items", "3", "--no-progress",
                                 "--out", str(tmp_path / "rep")])
    assert r.exit_code == 1, r.output  # no-go: no baseline
    said = " ".join(r.output.split())  # the console wraps long lines
    assert "curriculum pool: 0/3 items with headroom" in said and "3 never solved" in said
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["curriculum"]["all_failed"] == 3 and rep["curriculum"]["retire_after"] == 2
    assert "Curriculum pool" in (tmp_path / "rep" / "report.md").read_text()


def test_curriculum_pool_survives_resume(tmp_path, tiny_model):
    """The pool is saved in `latest` and restored on --resume: rows retired before the resume stay retired (the
    untrained model never answers, so each sampled row retires as unsolved after its first group)."""
    files = lt.write_task(tmp_path / "data", n_train=12, n_valid=1, n_demos=1)
    data = {"name": "pool", "model": str(tiny_model), "training_file": str(files["train"]),
            "tools": ["lookup_task:lookup"], "grader": lt.GRADER, "output_dir": str(tmp_path / "runs"),
            "hyperparameters": {"max_steps": 2, "batch_size": 3, "group_size": 2, "max_new_tokens": 6,
                                "max_turns": 1, "lora": None, "max_signal_free_steps": 0, "save_interval_s": 0},
            "curriculum": {"enabled": True, "retire_after": 1, "recheck_every": 100}}
    run_id = train(parse_config(data, base_dir=tmp_path), progress=False)
    data["hyperparameters"]["max_steps"] = 3
    cfg = parse_config(data, base_dir=tmp_path)
    assert train(cfg, resume=run_id, progress=False) == run_id
    st = RunStore(cfg.store_url)
    m = {r["step"]: r for r in st.step_metrics(run_id, split="train")}
    assert [m[s]["curriculum/retired_unsolved"] for s in (1, 2, 3)] == [3, 6, 9]
    # no row is drawn twice: the restored pool knows which rows retired before the resume
    rows = [t["row_index"] for t in st.trajectories(run_id, split="train") if t["sample_index"] == 0]
    assert sorted(rows) == sorted(set(rows)) and len(rows) == 9
    st.close()
