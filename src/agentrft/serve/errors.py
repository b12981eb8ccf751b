"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status the SDK maps to
its exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413, 422
UnprocessableEntityError, 429 RateLimitError, 503 InternalServerError-family)."""

from __future__ import annotations

from typing import Any

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error answer. ``param``: the request field at fault (dotted path), when there is one."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(self.status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def loc_to_param(loc: tuple | list) -> str | None:
    """A pydantic error location as the dotted ``param`` OpenAI reports (``messages.2.content``)."""
    parts = [str(x) for x in loc if x not in ("body",)]
    return ".".join(parts) or None


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """The first pydantic error as ``(message, param)``; more errors are summarised in the message."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    param = loc_to_param(e.get("loc", ()))
    msg = f"{param}: {e.get('msg')}" if param else str(e.get("msg"))
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return msg, param


def query_limit(request: Any, default: int, *, most: int = 10_000) -> int:
    """The ``limit`` query parameter of a list endpoint: an integer in [1, most], else a 400 naming ``limit``."""
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise APIError(400, f"limit must be an integer, got {raw!r}", param="limit") from None
    if not 1 <= n <= most:
        raise APIError(400, f"limit must be between 1 and {most}, got {n}", param="limit")
    return n
