"""The operator's own HTTP endpoints (``endpoints``: liveness and metrics), on loopback:
what a route answers, and what a client that holds connections open or sends nothing
can take from them (one thread each, bounded; idle connections closed)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from helpers import wait_for

from kernelsession.operator import endpoints, metrics

TIMEOUT = 1.0


@contextmanager
def serving(routes: dict[str, endpoints.Route], **limits: float) -> Iterator[int]:
    server = endpoints.serve("test", routes, 0, "127.0.0.1", **limits)  # type: ignore[arg-type]
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def hello() -> endpoints.Answer:
    return 200, "text/plain", b"hello"


def test_a_route_answers_and_other_paths_are_not_found() -> None:
    with serving({"/hello": hello}) as port:
        assert _get(port, "/hello") == (200, "text/plain", b"hello")
        assert _get(port, "/hello?x=1")[2] == b"hello"  # the query is not the path
        assert _get(port, "/other")[0] == 404


def test_a_route_that_raises_is_a_500_and_the_endpoint_keeps_serving() -> None:
    def broken() -> endpoints.Answer:
        raise RuntimeError("a bug in a route")

    with serving({"/broken": broken, "/hello": hello}) as port:
        assert _get(port, "/broken")[0] == 500
        assert _get(port, "/hello")[0] == 200


def test_a_connection_that_sends_nothing_is_closed() -> None:
    with (
        serving({"/hello": hello}, timeout=TIMEOUT) as port,
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT + 10) as s,
    ):
        assert s.recv(1) == b""  # the server hung up on a client that never asked


def test_connections_over_the_bound_are_closed_unanswered_and_served_again_after() -> None:
    with serving({"/hello": hello}, timeout=30.0, max_connections=2) as port:
        with ExitStack() as held:
            for _ in range(2):  # two connections that send nothing hold both threads
                held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
                third.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
                assert third.recv(1) == b""  # closed without an answer, no thread taken
        # the held connections are gone: their threads give their places back
        wait_for(lambda: _get(port, "/hello")[0] == 200, timeout=10, what="served again")


def test_metrics_are_served_in_prometheus_text_format() -> None:
    server = metrics.serve(0)
    assert server is None  # port 0: no endpoint
    with serving({metrics.PATH: metrics.exposition}) as port:
        status, content_type, body = _get(port, metrics.PATH)
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert b"kernelsession_reconciles_total" in body
