"""Secrets out of what is recorded: one redaction for tool headers, MCP env, grader headers, keys and URLs.

:func:`redact_value` is the rule the tool backends' ``repr``/``describe`` use: a value made only of ``${VAR}``
references (optionally after a scheme word such as ``Bearer``) is safe to show as written — the secret lives in the
environment — and anything else is ``<redacted>`` (naming the references it uses, if any).

:func:`redact_config` applies it to a whole run config (a plain dict, e.g. ``RunConfig.model_dump()``) before it is
stored in the run record or written to the run directory's ``config.json``: every value of a ``headers`` or
``env`` mapping, every string under a key that names a secret (``api_key``, ``token``, ``password``, …) and the
password of any ``scheme://user:password@host`` URL. A leaf module: the store and the CLI use it without importing
the tool backends.
"""

from __future__ import annotations

import re
from typing import Any

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"^(?:.*[_-])?(?:api[_-]?key|(?:access|secret|private|client)[_-]?key|token|secret|password|"
                         r"passwd|pwd|auth|authorization|credentials?|cookie|bearer)$", re.IGNORECASE)
_SECRET_MAPS = ("headers", "env", "environment", "cookies")
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<pw>[^@/\s]+)(?P<tail>@)")
# a query parameter of a URL: ``?api_key=…`` / ``&token=…`` (the value up to the next ``&``, ``#``, space or quote)
_QUERY_SECRETS = ("key", "sig", "signature")  # Google's ?key=, signed URLs' ?sig= (names safe only in a query)
_URL_QUERY = re.compile(r"(?P<head>[?&;](?P<key>[^=&#\s]+)=)(?P<value>[^&#\s'\"]*)")


def redact_value(value: Any) -> str:
    """``${VAR}`` references (and a scheme word) as written; anything else ``<redacted>``."""
    text = str(value)
    refs = ENV_REF.findall(text)
    if refs and ENV_REF.sub("", text).strip() in ("", "Bearer", "Basic", "Token"):
        return text
    if refs:
        return "<redacted; uses " + ", ".join("${" + r + "}" for r in refs) + ">"
    return REDACTED


def redact_url(text: str) -> str:
    """``scheme://user:password@host…`` with the password replaced, and the value of every query parameter whose
    name names a secret (``?api_key=…``, ``&access_token=…``); a ``${VAR}`` value is kept as written."""
    def sub(m: re.Match) -> str:
        pw = m.group("pw")
        return m.group(0) if ENV_REF.fullmatch(pw) else m.group("head") + "***" + m.group("tail")

    def query(m: re.Match) -> str:
        value = m.group("value")
        key = m.group("key")
        if not value or ENV_REF.fullmatch(value) or not (is_secret_key(key) or key.lower() in _QUERY_SECRETS):
            return m.group(0)
        return m.group("head") + "***"

    text = _URL_PASSWORD.sub(sub, text)
    return _URL_QUERY.sub(query, text) if "://" in text and "=" in text else text


def redact_text(text: str) -> str:
    """A message about to be printed with every URL in it redacted (:func:`redact_url`)."""
    return redact_url(text) if "://" in text else text


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.match(key))


def redact_config(data: Any, _memo: dict[int, Any] | None = None) -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with its secrets redacted; ``data`` itself is not changed. An
    object reached twice is copied once and shared in the copy, so a config whose references expand enormously
    (an alias bomb) costs no more to redact than it took to hold."""
    memo = {} if _memo is None else _memo
    if isinstance(data, (dict, list, tuple)):
        hit = memo.get(id(data))
        if hit is not None:
            return hit[1]
    if isinstance(data, dict):
        out: dict[Any, Any] = {}
        memo[id(data)] = (data, out)  # the original is kept alive so its id is not reused meanwhile
        for k, v in data.items():
            if isinstance(k, str) and k.lower() in _SECRET_MAPS and isinstance(v, dict):
                out[k] = {hk: (redact_value(hv) if isinstance(hv, (str, int, float)) and not isinstance(hv, bool)
                               else redact_config(hv, memo)) for hk, hv in v.items()}
            elif is_secret_key(k) and isinstance(v, str):
                out[k] = redact_value(v)
            else:
                out[k] = redact_config(v, memo)
        return out
    if isinstance(data, (list, tuple)):
        lst: list[Any] = []
        memo[id(data)] = (data, lst)
        lst.extend(redact_config(v, memo) for v in data)
        return lst
    if isinstance(data, str) and "://" in data and ("@" in data or "=" in data):
        return redact_url(data)
    return data
