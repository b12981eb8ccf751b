"""A sub-command whose module fails to import is listed and, when run, says why — it never silently vanishes."""

from __future__ import annotations

import sys

from typer.testing import CliRunner


def test_a_subcommand_that_fails_to_import_reports_its_reason(tmp_path, monkeypatch):
    import agentrft.cli as cli

    (tmp_path / "broken_cmds.py").write_text("import this_dependency_is_not_installed\napp = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "app", cli.typer.Typer(add_completion=False))

    @cli.app.command()
    def hello() -> None:  # a second command, so typer keeps sub-commands as groups
        print("hi")

    cli._mount("broken", "broken_cmds", "Some commands.")
    runner = CliRunner()
    res = runner.invoke(cli.app, ["--help"])
    assert res.exit_code == 0 and "broken" in res.output and "unavailable" in res.output
    res = runner.invoke(cli.app, ["broken", "anything", "--flag"])
    assert res.exit_code == 2
    assert ("`agentrft broken` is unavailable: broken_cmds failed to import: ModuleNotFoundError: No module named "
            "'this_dependency_is_not_installed'") in " ".join(res.output.split())
    # a module contributing top-level commands: each of them answers the same way
    cli._register_top_level("broken_cmds", ("alpha", "beta"))
    for name in ("alpha", "beta"):
        res = runner.invoke(cli.app, [name, "--config", "x.yaml"])
        assert res.exit_code == 2 and f"`agentrft {name}` is unavailable" in " ".join(res.output.split())
    sys.modules.pop("broken_cmds", None)


def test_every_bundled_subcommand_mounts():
    import typer

    from agentrft.cli import app

    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0
    assert "unavailable" not in res.output
    # by name, not substring ("ui" is in "build"): every command the CLI mounts, the later issues' included
    names = set(typer.main.get_command(app).commands)
    assert {"grade", "tools", "model", "bench", "train", "eval", "quickstart", "check", "compare", "monitor", "audit",
            "promote", "registry", "regress", "serve", "worker", "ui", "distill", "reward-model", "approvals",
            "traces", "deploy"} <= names, names
