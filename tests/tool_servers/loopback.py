"""Run servers on a free loopback port for tests: stdlib HTTP servers and uvicorn apps, in a thread."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Iterator


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a burst of concurrent tool calls (16 rollouts at once) overflowed it, the
    # kernel dropped the extra connects and the client's 0.7 s connect timeout fired before the SYN was retried
    request_queue_size = 128
    daemon_threads = True


@contextlib.contextmanager
def run_http_server(handler_cls: type, **attrs: Any) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    """Serve ``handler_cls`` on 127.0.0.1:<free port>; yields (base URL, server). Extra attrs go on the server."""
    srv = _Server(("127.0.0.1", 0), handler_cls)
    for k, v in attrs.items():
        setattr(srv, k, v)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


@contextlib.contextmanager
def run_uvicorn(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()
