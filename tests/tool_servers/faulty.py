"""A fault-injecting Agent RFT tool server. The URL path picks the behaviour, so one server serves every case:

=====================  ====================================================================================
``/ok``                a correct function_call_output echoing the arguments
``/flaky/<p>/<seed>``  HTTP 500 with probability p, decided by ``Random(f"{seed}:{call_id}:{k}")`` for the
                       call's k-th attempt — deterministic, so a test can recompute what must have happened
``/fail/<n>``          the first n attempts of each call_id get 503, then a correct answer
``/always500``         always HTTP 500
``/slow/<s>``          sleeps s seconds, then answers correctly
``/trickle/<s>``       sends headers at once, then the body one byte every s seconds
``/garbage``           HTTP 200 with a body that is not JSON
``/notobject``         HTTP 200 with a JSON list
``/wrongcall``         HTTP 200 with a function_call_output for another call_id
``/nooutput``          HTTP 200 without the output field
``/huge/<bytes>``      a correct answer whose output is that many bytes
``/reset``             reads the request, then resets the connection (TCP RST, no answer)
``/resetfirst/<n>``    resets the first n attempts of each call_id, then answers
``/http4xx/<code>``    that 4xx status with a function_call_output body explaining the problem
``/text4xx``           HTTP 404 with a plain-text body
``/gzip``              a correct answer, gzip-compressed (Content-Encoding: gzip)
``/mix/<seed>``        every fault at once, by call: ``mix_plan(seed, call_id)`` picks slow (past the client's
                       timeout), garbage, huge (2 MB), reset (every attempt), reset_once, or normal; normal
                       attempts fail with 500 at 30% (``flaky_fails``) and otherwise answer with
                       ``server.upstream(payload)`` — e.g. the real tool
=====================  ====================================================================================

Every request is recorded in ``server.log`` as ``(path, call_id, outcome)``; ``server.attempts[call_id]``
lists the outcomes of one call's attempts in order.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler
from typing import Any


def flaky_fails(seed: int, call_id: str, k: int, p: float) -> bool:
    """Whether /flaky fails the k-th attempt (0-based) of ``call_id``."""
    return random.Random(f"{seed}:{call_id}:{k}").random() < p


MIX_KINDS = (("slow", 0.1), ("garbage", 0.2), ("huge", 0.3), ("reset", 0.4), ("reset_once", 0.5))


def mix_plan(seed: int, call_id: str) -> str:
    """The fault /mix/<seed> applies to one call: slow | garbage | huge | reset | reset_once | normal."""
    r = random.Random(f"mix:{seed}:{call_id}").random()
    for kind, upper in MIX_KINDS:
        if r < upper:
            return kind
    return "normal"


class FaultyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self._reply: tuple[int, bytes, str] | None = None
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        try:
            p = json.loads(raw)
            call_id = p["call_id"]
        except (ValueError, KeyError, TypeError):
            self._send(400, b'{"output": "bad request"}')
            self._flush_reply()
            return
        srv = self.server
        with srv.lock:  # type: ignore[attr-defined]
            k = len(srv.attempts[call_id])  # type: ignore[attr-defined]
        parts = self.path.strip("/").split("/")
        mode, args = parts[0], parts[1:]
        outcome = self._act(mode, args, p, call_id, k)
        # the attempt is recorded *before* a buffered reply goes out: a client that got its answer must find the
        # attempt in the record (recording after the write raced with the test's next line on a busy machine)
        with srv.lock:  # type: ignore[attr-defined]
            srv.attempts[call_id].append(outcome)  # type: ignore[attr-defined]
            srv.log.append((self.path, call_id, outcome))  # type: ignore[attr-defined]
        try:
            self._flush_reply()
        except OSError:  # the client hung up before the answer (e.g. its timeout passed)
            with srv.lock:  # type: ignore[attr-defined]
                srv.attempts[call_id][-1] = "client_gone"  # type: ignore[attr-defined]
                srv.log[-1] = (self.path, call_id, "client_gone")  # type: ignore[attr-defined]

    def _ok(self, p: dict, output: str | None = None) -> str:
        out = output if output is not None else json.dumps({"echo": json.loads(p["arguments"]), "trace_id": p["trace_id"]})
        self._send(200, json.dumps({"type": "function_call_output", "call_id": p["call_id"], "output": out}).encode())
        return "ok"

    def _act(self, mode: str, args: list[str], p: dict, call_id: str, k: int) -> str:
        if mode == "mix":
            seed = int(args[0])
            kind = mix_plan(seed, call_id)
            if kind == "slow":
                return self._act("slow", [str(self.server.slow_s)], p, call_id, k)  # type: ignore[attr-defined]
            if kind in ("garbage", "reset"):
                return self._act(kind, [], p, call_id, k)
            if kind == "huge":
                return self._act("huge", ["2000000"], p, call_id, k)
            if kind == "reset_once" and k == 0:
                return self._act("reset", [], p, call_id, k)
            if flaky_fails(seed, call_id, k, 0.3):
                self._send(500, b"internal error (injected)")
                return "500"
            try:
                out = self.server.upstream(p)  # type: ignore[attr-defined]
            except Exception as e:  # the tool rejected its arguments: a 4xx the model sees
                msg = f"Error: {type(e).__name__}: {e}"
                self._send(422, json.dumps({"type": "function_call_output", "call_id": call_id, "output": msg}).encode())
                return "422"
            return self._ok(p, out)
        if mode == "ok":
            return self._ok(p)
        if mode == "flaky":
            prob, seed = float(args[0]), int(args[1])
            if flaky_fails(seed, call_id, k, prob):
                self._send(500, b"internal error (injected)")
                return "500"
            return self._ok(p)
        if mode == "fail":
            if k < int(args[0]):
                self._send(503, b"unavailable (injected)")
                return "503"
            return self._ok(p)
        if mode == "always500":
            self._send(500, b"internal error (injected)")
            return "500"
        if mode == "slow":
            time.sleep(float(args[0]))
            return self._ok(p)  # "client_gone" if writing it fails (do_POST)
        if mode == "trickle":
            body = json.dumps({"type": "function_call_output", "call_id": call_id, "output": "slowly"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for b in body:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(float(args[0]))
            except OSError:
                return "client_gone"
            return "trickled"
        if mode == "garbage":
            self._send(200, b"<html>502 Bad Gateway</html> not json {")
            return "garbage"
        if mode == "notobject":
            self._send(200, b"[1, 2, 3]")
            return "notobject"
        if mode == "wrongcall":
            self._send(200, json.dumps({"type": "function_call_output", "call_id": "call_other", "output": "x"}).encode())
            return "wrongcall"
        if mode == "nooutput":
            self._send(200, json.dumps({"type": "function_call_output", "call_id": call_id}).encode())
            return "nooutput"
        if mode == "huge":
            return self._ok(p, "x" * int(args[0])) and "huge"
        if mode == "reset" or (mode == "resetfirst" and k < int(args[0])):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return "reset"
        if mode == "resetfirst":
            return self._ok(p)
        if mode == "http4xx":
            code = int(args[0])
            msg = f"order {json.loads(p['arguments']).get('order_id')} not found"
            self._send(code, json.dumps({"type": "function_call_output", "call_id": call_id, "output": msg}).encode())
            return str(code)
        if mode == "gzip":
            import gzip

            body = json.dumps({"type": "function_call_output", "call_id": call_id, "output": "packed " * 1000}).encode()
            packed = gzip.compress(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)
            return "gzip"
        if mode == "text4xx":
            self._send(404, b"no such thing", "text/plain")
            return "404"
        self._send(404, b"unknown fault mode", "text/plain")
        return "unknown_mode"

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        """Buffer a reply; ``do_POST`` writes it once the attempt is recorded."""
        self._reply = (code, body, ctype)

    def _flush_reply(self) -> None:
        if self._reply is None:
            return
        code, body, ctype = self._reply
        self._reply = None
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def faulty_server_attrs() -> dict[str, Any]:
    return {"lock": threading.Lock(), "attempts": defaultdict(list), "log": [],
            "handle_error": lambda request, client_address: None}
