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
