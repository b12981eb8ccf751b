"""Every command group's error path redacts secrets: a user error whose message carries a URL with a password or an
``?api_key=`` (a tool endpoint, a judge, a teacher) is printed with them masked, as the main CLI's is."""

from __future__ import annotations

import importlib

import pytest
import typer

from agentrft.config import ConfigError

MESSAGE = "tool 'search': https://alice:hunter2@tools.example/q?api_key=sk-live-123&x=1 timed out"


@pytest.mark.parametrize("module", ["agentrft.cli", "agentrft.evals.cli", "agentrft.gate.cli",
                                    "agentrft.rl.distill.cli"])
def test_user_errors_exit_2_and_mask_the_secrets(module, capsys):
    user_errors = importlib.import_module(module).user_errors
    with pytest.raises(typer.Exit) as exc:
        with user_errors():
            raise ConfigError(MESSAGE)
    assert exc.value.exit_code == 2
    printed = " ".join(capsys.readouterr().err.split())
    assert "error:" in printed and "tools.example" in printed and "timed out" in printed
    assert "hunter2" not in printed and "sk-live-123" not in printed
