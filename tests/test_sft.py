"""``run_sft(until_loss=…)`` stops once the 10-step mean loss reaches the target, and reports where it stopped."""

from __future__ import annotations


def test_until_loss_stops_early_and_reports_it(tiny_model, lookup_files, tmp_path):
    from agentrft.rl.sft import run_sft

    n_demos = len(lookup_files["demos"].read_text().splitlines())
    seen: list[tuple[int, int]] = []
    res = run_sft(str(tiny_model), lookup_files["demos"], tmp_path / "a", epochs=50, batch_size=8,
                  learning_rate=1e-3, until_loss=1e9, on_step=lambda i, n, st: seen.append((i, n)))
    assert res.steps == 10 and seen[-1] == (10, 10)  # a reached target closes the progress bar at its step
    assert seen[0][1] == 50 * -(-n_demos // 8)  # …which until then showed the whole budget
    assert (tmp_path / "a" / "model.safetensors").exists()
    # an unreachable target runs the whole budget
    res = run_sft(str(tiny_model), lookup_files["demos"], tmp_path / "b", epochs=1, batch_size=16,
                  learning_rate=1e-3, until_loss=1e-9)
    assert res.steps == -(-n_demos // 16)


def test_sft_command_reads_until_loss_from_its_config(tiny_model, lookup_files, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from agentrft.cli import app

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model), "demos_file": str(lookup_files["demos"]),
                                   "output_dir": "warm", "hyperparameters": {"epochs": 20, "batch_size": 8,
                                                                            "until_loss": 1e9}}))
    r = CliRunner().invoke(app, ["sft", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "SFT: 10 steps" in r.output and (tmp_path / "warm" / "model.safetensors").exists()
    cfg.write_text(cfg.read_text().replace("until_loss: 1000000000.0", "until_loss: -1"))
    r = CliRunner().invoke(app, ["sft", "--config", str(cfg)])
    assert r.exit_code == 2 and "hyperparameters.until_loss" in r.output


def test_sample_check_flags_a_model_that_never_stops_and_passes_a_warmed_one(tiny_model, lookup_files, tmp_path):
    """The end-of-SFT check samples first turns: an untrained model runs on without an end-of-turn token and calls
    nothing (warned); a model warmed up on the demos ends its turns and calls the lookup tool (no warning)."""
    from agentrft.data import load_dataset
    from agentrft.rl.sft import run_sft, sample_check
    from agentrft.rollout.stack import load_policy

    rows = list(load_dataset(lookup_files["valid"]))
    raw = load_policy(tiny_model)
    bad = sample_check(raw.model, raw.renderer, rows, n=6, max_new_tokens=24)
    assert bad["prompts"] == 6 and bad["stopped"] < 0.5
    assert any("never ended" in w for w in bad["warnings"])
    res = run_sft(str(tiny_model), lookup_files["demos"], tmp_path / "w", epochs=6, batch_size=16,
                  learning_rate=3e-3, check_rows=rows[:6])
    assert res.check is not None and res.check["stopped"] >= 0.5 and res.check["called_a_tool"] > 0
    assert res.check["warnings"] == [], res.check


def test_sft_command_prints_the_sample_check_and_its_warnings(tiny_model, lookup_files, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from agentrft.cli import app

    cfg = tmp_path / "sft.yaml"  # one step at a tiny rate: the model is still untrained, the check must say so
    cfg.write_text(yaml.safe_dump({"model": str(tiny_model), "demos_file": str(lookup_files["demos"]),
                                   "output_dir": "warm", "check_file": str(lookup_files["valid"]),
                                   "hyperparameters": {"n_epochs": 1, "batch_size": 512, "learning_rate": 1e-9}}))
    r = CliRunner().invoke(app, ["sft", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "sample check on 8 prompts: ended" in out and "warning:" in out and "never ended" in out
