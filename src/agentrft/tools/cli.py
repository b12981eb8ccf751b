"""``agentrft tools …`` — the lead mounts :data:`app` on the main CLI (``app.add_typer(app, name="tools")``)."""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(help="Tool servers and tool endpoints (Agent RFT tool-call contract).", no_args_is_help=True)


@app.command("serve")
def serve_cmd(
    env: str = typer.Argument(..., help="A bundled environment (e.g. support_desk) or module:function returning one."),
    host: str = typer.Option("127.0.0.1", help="Bind address. Anything but loopback requires --token."),
    port: int = typer.Option(8765, help="TCP port."),
    token: Optional[str] = typer.Option(
        None, envvar="AGENTRFT_TOOLS_TOKEN", help="Bearer token clients must send (env: AGENTRFT_TOOLS_TOKEN)."
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
        check_bind(host, token)
        tools = get_environment(env).python_tools()
        serve(tools, host=host, port=port, token=token, data_dir=data_dir, ttl_s=ttl_s, log_level=log_level,
              title=f"agentrft tools: {env}")
    except (ValueError, KeyError, LookupError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


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
