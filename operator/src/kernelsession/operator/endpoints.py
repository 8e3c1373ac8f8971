"""The operator's own HTTP endpoints (liveness, metrics), each served from a thread.

A thread answers at once, whatever the event loop is doing, and each connection gets a
thread of its own; so a connection that sends no request is closed after
:data:`REQUEST_TIMEOUT` seconds, at most :data:`MAX_CONNECTIONS` are served at once (the
next is closed unanswered), and each connection carries one request. Who may connect at
all is the operator namespace's NetworkPolicy (``manifests/networkpolicy.yaml``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

log = structlog.get_logger("kernelsession.operator")

REQUEST_TIMEOUT = 5.0
"""Seconds a connection may wait between the bytes of its request."""
MAX_CONNECTIONS = 16
"""Connections served at once; one over it is closed unanswered."""

Answer = tuple[int, str, bytes]
"""(HTTP status, Content-Type, body)."""
Route = Callable[[], Answer]
"""Called in the endpoint's thread for each GET of its path."""


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a bound on the connections it serves at once."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], limit: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(limit)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: closed, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread was started to give it back
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    name: str,
    routes: Mapping[str, Route],
    port: int,
    host: str = "0.0.0.0",
    *,
    timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """Answer ``GET`` of each path in ``routes`` on ``host:port`` from a daemon thread
    named ``name``, 404 for any other path, 500 when a route raises. The server is
    returned (``server_address`` holds the port bound; ``shutdown()`` stops it).

    Raises:
        OSError: the port cannot be bound.
    """

    idle = timeout

    class Handler(BaseHTTPRequestHandler):
        timeout = idle  # set on each connection's socket by StreamRequestHandler.setup

        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            try:
                status, content_type, body = route()
            except Exception as exc:  # a route's bug is a 500, not a dead endpoint
                log.error("endpoint failed", endpoint=name, path=self.path, error=repr(exc))
                self.send_error(500)
                return
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Probes and scrapes every few seconds are not worth a log line."""

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except ConnectionError:  # a client gone mid-request (a timeout is handled)
                self.close_connection = True

    server = _Server((host, port), Handler, max_connections)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server
