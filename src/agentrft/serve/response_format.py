"""``response_format`` of a chat request: the schema is checked when the request arrives, each answer against it when
it is done. Decoding is not grammar-constrained (docs/serve.md), so instead of leaving a client that asked for JSON to
find out by parsing, every choice says whether its text conforms (``response_format_errors``: empty when it does), the
trace records it, and ``agentrft_response_format_violations_total`` counts the choices that did not.
"""

from __future__ import annotations

import json
from typing import Any

MAX_ERRORS = 5  # per choice: enough to see what is wrong without echoing a whole schema's worth of complaints


def check_schema(schema: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the schema path when ``schema`` is not a valid JSON schema (for a 400)."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        path = "/".join(str(p) for p in e.absolute_path)
        raise ValueError(f"json_schema.schema{('/' + path) if path else ''} is not a valid JSON schema: "
                         f"{e.message}") from None


class AnswerCheck:
    """Checks answer texts against one request's ``response_format`` (``type`` json_object or json_schema)."""

    def __init__(self, kind: str, schema: dict[str, Any] | None = None):
        self.kind = kind
        self.validator = None
        if kind == "json_schema" and schema is not None:
            import jsonschema

            self.validator = jsonschema.validators.validator_for(schema)(schema)

    @classmethod
    def of(cls, response_format: Any) -> "AnswerCheck | None":
        """None for no response_format or ``text``: there is nothing to check."""
        if response_format is None or response_format.type == "text":
            return None
        js = response_format.json_schema or {}
        return cls(response_format.type, js.get("schema") if response_format.type == "json_schema" else None)

    def errors(self, text: str | None) -> list[str]:
        """What is wrong with ``text`` as an answer of this format; empty when it conforms."""
        try:
            value = json.loads(text or "")
        except ValueError as e:
            return [f"not JSON: {e}"]
        except RecursionError:  # a model can emit "[[[[…" for as long as max_tokens lets it
            return ["not JSON this server reads: nested too deeply"]
        if self.kind == "json_object" and not isinstance(value, dict):
            return [f"not a JSON object (a {type(value).__name__})"]
        if self.validator is None:
            return []
        errs = sorted(self.validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"[:300] for e in errs[:MAX_ERRORS]]
