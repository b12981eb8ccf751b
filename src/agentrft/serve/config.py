"""The server's settings: from flags, a serve config YAML, or a run config (its model and store)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentrft.config import ConfigError, _format_errors, parse_config, read_yaml
from agentrft.serve.jobs_config import JobsConfig  # fine-tuning jobs (issue 16)
from agentrft.serve.approvals_config import ApprovalSettings, ServedTool, tools_from_run_config  # (issue 17)


class ServeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="the base model: HF id or local directory")
    model_name: str | None = Field(None, description="the id clients use for the base model (default: its directory name)")
    store: str | None = Field(None, description="run store URL: its checkpoints are servable; traces are written here")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, description="Bearer token required on every endpoint but /health")
    slots: int = Field(32, ge=1, le=1024, description="concurrent sequences per engine (KV-cache slots)")
    max_loras: int = Field(4, ge=1, description="LoRA adapters kept loaded (least recently used evicted)")
    max_model_memory_mb: float | None = Field(None, gt=0, description="budget for the weights of all loaded models "
                                              "(base + full fine-tuned checkpoints); over it: 503")
    max_body_bytes: int = Field(4 << 20, ge=1024)
    max_tokens_cap: int = Field(4096, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(512, ge=1, description="when a request sets no max_tokens")
    max_n: int = Field(16, ge=1)
    rate_limit_tpm: int | None = Field(None, ge=1, description="tokens per minute per API key / client (429 beyond)")
    record_traces: bool = Field(True, description="record every request as a trace in the store")
    loras: dict[str, str] = Field(default_factory=dict, description="adapter name → path, servable by name")
    tool_call_dialect: str | None = Field(None, description="hermes | qwen_xml | llama3_json | mistral (default: "
                                          "read from each model's chat template)")

    @field_validator("tool_call_dialect")
    @classmethod
    def _dialect(cls, v: str | None) -> str | None:
        if v is not None:
            from agentrft.rollout.dialects import get_dialect

            get_dialect(v)  # ValueError naming the known ones
        return v
    # ---- fine-tuning jobs (issue 16: serve/jobs.py, serve/job_worker.py) ----
    jobs: JobsConfig = Field(default_factory=JobsConfig, description="files, fine-tuning jobs and their workers")
    # ---- production approvals (issue 17: serve/approvals.py) ----
    tools: list[ServedTool] = Field(default_factory=list, description="tool declarations: {name, requires_approval}"
                                    " — calls of a requires_approval tool are held until a person decides")
    approvals: ApprovalSettings = Field(default_factory=ApprovalSettings, description="how held answers wait")


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(cfg: ServeConfig) -> None:
    """A non-loopback bind needs a token: refuse to start otherwise."""
    if not is_loopback(cfg.host) and not cfg.token:
        raise ConfigError(f"refusing to listen on {cfg.host} without a token: set --token or AGENTRFT_TOKEN "
                          "(only loopback addresses may be served without one)")


def load_serve_config(path: str | Path, overrides: dict[str, Any]) -> ServeConfig:
    """A serve config (keys of :class:`ServeConfig`) or a run config (``training_file``…: its model and store);
    ``overrides`` (flags that were given) win."""
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    if "training_file" in data or "grader" in data:
        run = parse_config(data, base_dir=path.parent.resolve(), source=str(path))
        data = {"model": run.model_path, "store": run.store_url, "tools": tools_from_run_config(run)}
    else:
        data = dict(data)
        for key in ("model",):
            if isinstance(data.get(key), str) and (path.parent / data[key]).exists():
                data[key] = str((path.parent / data[key]).resolve())
        for name, p in list((data.get("loras") or {}).items()):
            if isinstance(p, str) and not Path(p).is_absolute():
                data["loras"][name] = str((path.parent / p).resolve())
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path), ServeConfig)) from None
