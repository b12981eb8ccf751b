"""``agentrft tools …`` — the lead mounts :data:`app` on the main CLI (``app.add_typer(app, name="tools")``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Tool servers and tool endpoints (Agent RFT tool-call contract).", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    env: str = typer.Argument(..., help="A bundled environment (e.g. support_desk) or module:function returning one."),
    host: str = typer.Option("127.0.0.1", help="Bind address. Anything but loopback requires --token."),
    port: int = typer.Option(8765, help="TCP port."),
    token: Optional[str] = typer.Option(
        None, envvar="AGENTRFT_TOOLS_TOKEN", show_envvar=False,
        help="Bearer token clients must send. Prefer the environment variable AGENTRFT_TOOLS_TOKEN or --token-file: "
             "a value given here is visible to every user of the machine in `ps`.",
    ),
    token_file: Optional[Path] = typer.Option(
        None, "--token-file", help="Read the bearer token from this file (first line; e.g. a mounted secret).",
    ),
    ttl_s: float = typer.Option(900.0, "--ttl-s", help="Seconds an idle trace's state is kept before cleanup."),
    data_dir: Optional[str] = typer.Option(
        None, "--data-dir", help="Directory of the dataset; files a row names (e.g. support_desk's db) resolve here."
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve ENV's tools at POST / (Agent RFT contract), with per-trace_id state."""
    from agentrft.environments import get_environment
    from agentrft.tools.server import check_bind, serve

    try:
        token = resolve_secret(token, token_file, option="--token")
        check_bind(host, token)
        tools = get_environment(env).python_tools()
        serve(tools, host=host, port=port, token=token, data_dir=data_dir, ttl_s=ttl_s, log_level=log_level,
              title=f"agentrft tools: {env}")
    except (ValueError, KeyError, LookupError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def resolve_secret(value: Optional[str], file: Optional[Path], *, option: str) -> Optional[str]:
    """A secret from ``--X`` (or its environment variable) or ``--X-file``; warns when it was typed on the command
    line, where ``ps`` shows it to everyone."""
    import sys

    if file is not None:
        if value is not None:
            raise ValueError(f"give {option} or {option}-file, not both")
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{option}-file {file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        secret = lines[0].strip() if lines else ""
        if not secret:
            raise ValueError(f"{option}-file {file}: the file is empty")
        return secret
    if value is not None and any(a == option or a.startswith(option + "=") for a in sys.argv[1:]):
        typer.echo(f"warning: {option} on the command line is visible to other users in `ps`; use its environment "
                   f"variable or {option}-file instead", err=True)
    return value


@app.command("list")
def list_cmd(env: str = typer.Argument(..., help="A bundled environment or module:function returning one.")) -> None:
    """Print ENV's tool schemas as JSON."""
    from agentrft.environments import get_environment

    try:
        tools = get_environment(env).python_tools()
    except (ValueError, KeyError, LookupError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps([t.schema for t in tools], indent=2))


if __name__ == "__main__":  # pragma: no cover
    app()
