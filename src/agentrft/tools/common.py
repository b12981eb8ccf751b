"""Helpers every remote tool backend shares: the Agent RFT size limit, ``${VAR}`` references in headers and
environments (resolved at call time, redacted when shown), and cutting outputs on a UTF-8 boundary."""

from __future__ import annotations

import re
from typing import Mapping

from agentrft.config import ConfigError
from agentrft.redact import redact_value

MAX_BYTES = 1_000_000  # 1 MB each way (OpenAI's Agent RFT limit)
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env(value: str, env: Mapping[str, str], where: str) -> str:
    """``value`` with each ``${VAR}`` replaced from ``env``; a ConfigError naming ``where`` for an unset one."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise ConfigError(f"{where}: environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return ENV_REF.sub(sub, value)


def redact(value: str) -> str:
    """What may be shown of a header or environment value: references as written (``Bearer ${TOKEN}``), never a
    literal secret. The rule lives in :mod:`agentrft.redact`, which the run record and the run directory's
    config.json use too."""
    return redact_value(value)


def cut_utf8(text: str, max_bytes: int) -> tuple[str, int]:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes on a character boundary; returns (text, bytes dropped)."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text, 0
    return raw[:max_bytes].decode("utf-8", errors="ignore"), len(raw) - max_bytes
