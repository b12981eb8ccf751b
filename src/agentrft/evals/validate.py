"""``agentrft validate CONFIG``: everything about a run's inputs that can be checked without loading a model.

Datasets (every line, ``file:line``), the reward and holdout graders (built, which checks their specs and that a
model grader has a judge configured), the tool entries (the router is built; every HTTP tool's host gets a TCP
reachability probe with a short timeout — nothing is sent), endpoint graders' reachability (the same probe), and the
model reference (a local directory must hold ``config.json`` or ``adapter_config.json``; anything else must look like
a Hugging Face id) — and, with a local directory's tokenizer only, the rows whose prompt fills ``max_context_tokens``. Every problem is collected, none stops the others (a config that does not parse stops the rest:
there is nothing to check it against).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from agentrft.config import ConfigError, RunConfig, load_config
from agentrft.data import DatasetError, load_dataset
from agentrft.graders.base import build_grader
from agentrft.redact import redact_text, redact_url
from agentrft.tools.router import build_router

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Validation:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def probe(url: str, timeout_s: float) -> str | None:
    """``None`` if a TCP connection to the URL's host and port opens within ``timeout_s``, else why not."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        return f"not a URL: {e}"
    if parts.scheme not in ("http", "https") or not host:
        return "not an http(s) URL"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except socket.timeout:
        return f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as e:
        return f"cannot connect to {host}:{port}: {e.strerror or e}"


def endpoint_graders(spec: Any, where: str) -> Iterator[tuple[str, str]]:
    """``(field path, url)`` of every endpoint grader in a grader spec, nested ones included."""
    if isinstance(spec, dict):
        if spec.get("type") == "endpoint" and isinstance(spec.get("url"), str):
            yield where, spec["url"]
        for k, v in spec.items():
            if isinstance(v, (dict, list)):
                yield from endpoint_graders(v, f"{where}.{k}")
    elif isinstance(spec, list):
        for i, v in enumerate(spec):
            yield from endpoint_graders(v, f"{where}[{i}]")


def check_model(cfg: RunConfig, v: Validation) -> bool:
    """True when the model is a usable local directory."""
    ref = cfg.model
    local = cfg.path(ref)
    looks_local = ref.startswith((".", "/", "~")) or (local is not None and local.exists())
    if looks_local:
        assert local is not None
        if not local.exists():
            v.problems.append(f"model: {ref!r}: no such directory ({local})")
        elif not local.is_dir():
            v.problems.append(f"model: {ref!r}: is a file, expected a model directory")
        elif not (local / "config.json").exists() and not (local / "adapter_config.json").exists():
            v.problems.append(f"model: {ref!r}: not a model directory (no config.json or adapter_config.json)")
        else:
            kind = "LoRA adapter" if (local / "adapter_config.json").exists() else "model directory"
            v.summary.append(f"model: {local} ({kind})")
            return True
    elif HF_ID.match(ref):
        v.summary.append(f"model: {ref} (a Hugging Face id; not downloaded here)")
    else:
        v.problems.append(f"model: {ref!r}: neither a model directory nor a Hugging Face id (owner/name)")
    return False


def validate(config: str | Path, *, probe_timeout_s: float = 3.0) -> Validation:
    v = Validation()
    try:
        cfg = load_config(config)
    except ConfigError as e:
        v.problems += [line for line in str(e).splitlines() if line.strip()]
        return v
    hp = cfg.hyperparameters

    router, schemas = None, None
    try:
        router = build_router(cfg.tools, timeout_s=hp.tool_timeout_s, max_workers=1, approval=cfg.approval.policy)
        v.summary.append(f"tools: {', '.join(sorted(router.names)) or '(none)'}")
        schemas = router.schemas() or None
    except (ValueError, ImportError) as e:
        v.problems.append(str(e) if str(e).startswith("tools") else f"tools: {e}")
    finally:
        if router is not None:
            router.close()
    for i, entry in enumerate(cfg.tools):
        url = getattr(entry, "server_url", None)
        if isinstance(url, str):
            why = probe(url, probe_timeout_s)
            if why:
                v.problems.append(f"tools[{i}] ({getattr(entry, 'name', '?')}): server_url {redact_url(url)}: "
                                  f"unreachable: {redact_text(why)}")

    graders = [("grader", cfg.grader)] + [(f"holdout_graders.{n}", {"name": n, **s})
                                          for n, s in cfg.holdout_graders.items()]
    for where, spec in graders:
        try:
            g = build_grader(spec)
            v.summary.append(f"{where}: {g.type} {g.name!r}")
        except Exception as e:  # noqa: BLE001 — any grader that cannot be built is a problem to report
            msg = str(e)
            v.problems.append(msg if msg.startswith(where) else f"{where}: {msg}")
        for path, url in endpoint_graders(spec, where):
            why = probe(url, probe_timeout_s)
            if why:
                v.problems.append(f"{path}.url {redact_url(url)}: unreachable: {redact_text(why)}")

    known = router.names if router is not None and router.names else None
    loaded = {}
    for key in ("training_file", "validation_file"):
        name = getattr(cfg, key)
        if name is None:
            continue
        path = cfg.path(name)
        try:
            ds = load_dataset(path, known_tools=known)
            v.warnings += list(getattr(ds, "warnings", []) or [])
            v.summary.append(f"{key}: {path} ({len(ds)} rows)")
            loaded[key] = (path, ds)
        except DatasetError as e:
            v.problems += list(e.problems)
            v.warnings += list(e.warnings or [])

    if check_model(cfg, v):
        check_prompt_lengths(cfg, v, loaded, schemas)
    return v


def check_prompt_lengths(cfg: RunConfig, v: Validation, loaded: dict, schemas: list | None) -> None:
    """With a local model directory's tokenizer (the model itself is not loaded): rows whose prompt alone fills
    ``max_context_tokens`` — a warning with the count, a problem when every training row is over."""
    from agentrft.rollout.render import ChatRenderer

    local = cfg.path(cfg.model)
    if local is None or not (local / "tokenizer_config.json").exists():
        return
    try:
        from transformers import AutoTokenizer

        renderer = ChatRenderer(AutoTokenizer.from_pretrained(str(local), local_files_only=True))
    except Exception as e:  # noqa: BLE001 — a tokenizer that does not load is reported, not raised
        v.problems.append(f"model: {cfg.model!r}: its tokenizer does not load: {str(e).splitlines()[0][:300]}")
        return
    limit = cfg.hyperparameters.max_context_tokens
    for key, (path, rows) in loaded.items():
        over = []
        for r in rows:
            try:
                n = len(renderer.prompt_ids(r.messages, r.tools if r.tools else schemas))
            except Exception as e:  # noqa: BLE001 — a row the chat template cannot render
                v.problems.append(f"{path}:{r.line}: the model's chat template cannot render it: {e}")
                continue
            if n >= limit:
                over.append((r.line, n))
        if over:
            msg = (f"{path}: {len(over)} of {len(rows)} rows have a prompt of at least "
                   f"hyperparameters.max_context_tokens ({limit}) tokens (line {over[0][0]}: {over[0][1]} tokens); "
                   "their rollouts would end at context_limit with reward 0")
            (v.problems if key == "training_file" and len(over) == len(rows) else v.warnings).append(msg)
