"""PII redaction for production traces before they become training data.

The built-in rule replaces, in this order (so a card number is never half-taken as a phone number):

* **card numbers** — 13 to 19 digits, optionally grouped by single spaces or dashes, that pass the Luhn check
  (the sum of the digits, every second one from the right doubled and reduced by 9 when over 9, is ≡ 0 mod 10),
  → ``<CARD>``; digit runs that fail the check are left alone (order numbers, ids);
* **email addresses** — ``local@domain.tld`` → ``<EMAIL>``;
* **phone numbers** — an optional ``+country`` code, then digit groups separated by spaces, dots, dashes or a
  parenthesised area code, 9 to 15 digits in all → ``<PHONE>``. Dates (8 digits) and short ids stay.

A hook (``--redact module:function``) is any ``function(text: str) -> str``; it runs after the built-in rule
(or alone, with ``--no-default-redaction``) on every message text, tool-call arguments text and reference value.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Callable

_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,5}(?![\w-])")


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum (see the module docstring)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def redact_pii(text: str) -> tuple[str, int]:
    """``(text with cards, emails and phone numbers replaced, how many were replaced)``."""
    n = 0

    def card(m: re.Match) -> str:
        nonlocal n
        digits = re.sub(r"\D", "", m.group(0))
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            n += 1
            return "<CARD>"
        return m.group(0)

    def email(m: re.Match) -> str:
        nonlocal n
        n += 1
        return "<EMAIL>"

    def phone(m: re.Match) -> str:
        nonlocal n
        digits = re.sub(r"\D", "", m.group(0))
        if 9 <= len(digits) <= 15:
            n += 1
            return "<PHONE>"
        return m.group(0)

    text = _CARD.sub(card, text)
    text = _EMAIL.sub(email, text)
    text = _PHONE.sub(phone, text)
    return text, n


def load_hook(ref: str) -> Callable[[str], str]:
    """``module:function`` (the current directory is importable, like a run config's refs); a clear error for a
    ref that does not name a callable."""
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise ValueError(f"--redact {ref!r}: expected module:function")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - reported with the ref
        raise ValueError(f"--redact {ref!r}: cannot import {mod_name}: {type(e).__name__}: {e}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ValueError(f"--redact {ref!r}: {mod_name} has no function {attr!r}")
    return fn


class Redactor:
    """The built-in rule (unless ``default=False``) then the hook; counts what changed."""

    def __init__(self, hook: Callable[[str], str] | None = None, *, default: bool = True, hook_name: str = ""):
        self.hook, self.default, self.hook_name = hook, default, hook_name
        self.count = 0

    def __call__(self, text: str) -> str:
        if not isinstance(text, str) or not text:
            return text
        if self.default:
            text, n = redact_pii(text)
            self.count += n
        if self.hook is not None:
            out = self.hook(text)
            if not isinstance(out, str):
                raise ValueError(f"--redact {self.hook_name}: returned {type(out).__name__}, expected str")
            if out != text:
                self.count += 1
            text = out
        return text
