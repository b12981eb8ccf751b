"""A strict Agent RFT tool server: checks every request field by field and records it.

A request that breaks the contract gets HTTP 400 with the list of problems (which the client shows to the
model as a 4xx output, so a test sees exactly what was wrong). A good request gets a function_call_output
whose output echoes the parsed arguments, the trace_id and the item's id.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

TRACE_RE = re.compile(r"^trace_[0-9a-f]{32}$")
FIELDS = ("type", "id", "call_id", "name", "arguments", "trace_id", "item")


def check_payload(p: Any, headers: dict[str, str]) -> list[str]:
    """Every way the payload can differ from the contract, as messages naming the field."""
    problems = []
    if headers.get("content-type", "").split(";")[0].strip() != "application/json":
        problems.append(f"content-type: expected application/json, got {headers.get('content-type')!r}")
    if not isinstance(p, dict):
        return problems + [f"body: expected a JSON object, got {type(p).__name__}"]
    missing = [f for f in FIELDS if f not in p]
    extra = [f for f in p if f not in FIELDS]
    if missing:
        problems.append("missing field(s): " + ", ".join(missing))
    if extra:
        problems.append("unexpected field(s): " + ", ".join(extra))
    if p.get("type") != "function_call":
        problems.append(f"type: expected 'function_call', got {p.get('type')!r}")
    if not (isinstance(p.get("id"), str) and p["id"].startswith("fc_") and len(p["id"]) > 3):
        problems.append(f"id: expected 'fc_…', got {p.get('id')!r}")
    if not (isinstance(p.get("call_id"), str) and p["call_id"].startswith("call_") and len(p["call_id"]) > 5):
        problems.append(f"call_id: expected 'call_…', got {p.get('call_id')!r}")
    if not isinstance(p.get("name"), str) or not p.get("name"):
        problems.append(f"name: expected a non-empty string, got {p.get('name')!r}")
    args = p.get("arguments")
    if not isinstance(args, str):
        problems.append(f"arguments: expected a JSON string, got {type(args).__name__}")
    else:
        try:
            if not isinstance(json.loads(args), dict):
                problems.append("arguments: the JSON string must encode an object")
        except ValueError:
            problems.append(f"arguments: not valid JSON: {args[:80]!r}")
    if not (isinstance(p.get("trace_id"), str) and TRACE_RE.match(p["trace_id"])):
        problems.append(f"trace_id: expected 'trace_<32 hex>', got {p.get('trace_id')!r}")
    if not isinstance(p.get("item"), dict):
        problems.append(f"item: expected the dataset row (an object), got {type(p.get('item')).__name__}")
    return problems


class ContractHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            p = json.loads(raw)
        except ValueError:
            p = None
        problems = check_payload(p, headers) if p is not None else ["body: not JSON"]
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append({"path": self.path, "headers": headers, "payload": p, "problems": problems})  # type: ignore[attr-defined]
        if problems:
            body = json.dumps({"type": "function_call_output", "call_id": (p or {}).get("call_id"),
                               "output": "contract violation: " + "; ".join(problems)}).encode()
            self._send(400, body)
            return
        out = {"tool": p["name"], "args": json.loads(p["arguments"]), "trace_id": p["trace_id"],
               "item_id": p["item"].get("id"), "auth": headers.get("authorization")}
        body = json.dumps({"type": "function_call_output", "call_id": p["call_id"], "output": json.dumps(out)}).encode()
        self._send(200, body)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def contract_server_attrs() -> dict[str, Any]:
    return {"lock": threading.Lock(), "requests": []}
