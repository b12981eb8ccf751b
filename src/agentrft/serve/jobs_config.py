"""The fine-tuning jobs' settings of a server (``jobs:`` in the serve config; issue 16)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class JobsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_dir: str | None = Field(None, description="uploaded files and job runs (default: agentrft-data beside a "
                                 "SQLite store, else ./agentrft-data); workers on other machines must see it too")
    workers: int = Field(1, ge=0, le=64, description="worker processes the server spawns (0: run `agentrft worker` "
                         "yourself)")
    concurrency: int = Field(1, ge=1, le=64, description="jobs one worker process runs at once")
    lease_s: float = Field(30.0, gt=0, description="a worker's hold on a job; renewed every lease_s/3, so a killed "
                           "worker's job is taken again this long after its last heartbeat")
    poll_s: float = Field(1.0, gt=0, description="how often an idle worker looks for queued jobs")
    allow_models: list[str] = Field(default_factory=list, description="models a job may train besides the served "
                                    "base (HF ids or local paths); the base model and its checkpoints always may")
    webhook_url: str | None = Field(None, description="POSTed fine_tuning.job.succeeded|failed|cancelled events")
    webhook_secret: str | None = Field(None, description="signs webhooks (Standard Webhooks HMAC-SHA256); "
                                       "'whsec_<base64>' or raw text")


def data_dir(jobs: JobsConfig, store_url: str | None) -> Path:
    if jobs.data_dir:
        return Path(jobs.data_dir).expanduser().resolve()
    if store_url and store_url.startswith("sqlite:///") and ":memory:" not in store_url:
        return Path(store_url[len("sqlite:///"):]).expanduser().resolve().parent / "agentrft-data"
    return Path("agentrft-data").resolve()
