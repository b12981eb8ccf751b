"""``agentrft serve``: the command (registered on the top-level app by ``register``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer


def register(app: Any) -> None:
    @app.command("serve")
    def serve(
        model: Optional[str] = typer.Option(None, "--model", help="base model: HF id or local directory"),
        config: Optional[Path] = typer.Option(None, "--config", help="serve config YAML, or a run config (its "
                                              "model and store)"),
        host: Optional[str] = typer.Option(None, "--host", help="bind address (default 127.0.0.1; any other needs "
                                           "a token)"),
        port: Optional[int] = typer.Option(None, "--port", help="port (default 8000; 0 = any free port)"),
        token: Optional[str] = typer.Option(None, "--token", help="Bearer token clients must send (default: "
                                            "$AGENTRFT_TOKEN)"),
        model_name: Optional[str] = typer.Option(None, "--model-name", help="id of the base model in the API"),
        store: Optional[str] = typer.Option(None, "--store", help="run store URL (checkpoints to serve, traces)"),
        slots: Optional[int] = typer.Option(None, "--slots", help="concurrent sequences per engine"),
        max_loras: Optional[int] = typer.Option(None, "--max-loras", help="LoRA adapters kept loaded (LRU)"),
        max_model_memory_mb: Optional[float] = typer.Option(None, "--max-model-memory-mb",
                                                            help="weights budget for loaded models"),
        max_tokens_cap: Optional[int] = typer.Option(None, "--max-tokens-cap", help="largest max_tokens allowed"),
        rate_limit_tpm: Optional[int] = typer.Option(None, "--rate-limit-tpm", help="tokens/minute per API key"),
        no_traces: bool = typer.Option(False, "--no-traces", help="do not record requests in the store"),
        tool_call_dialect: Optional[str] = typer.Option(None, "--tool-call-dialect",
                                                        help="hermes | qwen_xml | llama3_json | mistral (default: "
                                                        "from the chat template)"),
    ) -> None:
        """Serve the base model and every checkpoint over the OpenAI API (chat completions, completions)."""
        from agentrft.cli import _quiet_libraries, err, user_errors
        from agentrft.config import ConfigError
        from agentrft.serve.config import ServeConfig, check_bind, load_serve_config
        from agentrft.serve.server import serve_forever

        _quiet_libraries()
        flags = {"model": model, "host": host, "port": port, "token": token or os.environ.get("AGENTRFT_TOKEN") or None,
                 "model_name": model_name, "store": store, "slots": slots, "max_loras": max_loras,
                 "max_model_memory_mb": max_model_memory_mb, "max_tokens_cap": max_tokens_cap,
                 "rate_limit_tpm": rate_limit_tpm, "tool_call_dialect": tool_call_dialect}
        if no_traces:
            flags["record_traces"] = False
        with user_errors():
            if config is not None:
                cfg = load_serve_config(config, flags)
            elif model is None:
                raise ConfigError("give --model or --config")
            else:
                try:
                    cfg = ServeConfig.model_validate({k: v for k, v in flags.items() if v is not None})
                except Exception as e:  # noqa: BLE001 - pydantic's message names the flag's field
                    raise ConfigError(str(e)) from None
            check_bind(cfg)
            err.print(f"serving {cfg.model} on http://{cfg.host}:{cfg.port}/v1"
                      + (" (token required)" if cfg.token else ""))
            serve_forever(cfg)
