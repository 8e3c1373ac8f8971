"""A small HTTP + websocket reverse proxy on 127.0.0.1 in front of one lab.

``kernelsession open`` serves JupyterLab to the local browser through it. The proxy
adds ``Authorization: token ...`` to every request it forwards (jupyter-server accepts
it for HTTP requests and websocket upgrades alike), so the browser never sees the lab
token; it removes the token from the pages it serves (jupyter-server writes it into
JupyterLab's page config) and guards the local port:

* the printed URL carries a one-time login code, valid for a minute
  (``LOGIN_CODE_SECONDS``); the first request with it gets a random session cookie
  (``HttpOnly; SameSite=Strict``) and a redirect to the lab, and the code is spent;
* jupyter-server's own login cookie (``username-...``, which it sets on requests that
  carry the token and which would log in whoever holds it) never reaches the browser,
  and none the browser holds from other Jupyter servers reaches the lab;
* every other request needs that cookie, a ``Host`` of ``127.0.0.1:PORT`` or
  ``localhost:PORT`` (no DNS rebinding) and, when the browser sends an ``Origin``,
  this proxy's own origin (no cross-site or cross-port requests).

The decisions and the header rewriting are pure functions (``_guard``: ``Guard``,
``upstream_headers``, ``downstream_headers``, ``redact``); the I/O is one ``h11``
connection per side. The upstream is pluggable (``_upstream.Upstream``): a TCP address
for a lab this machine reaches directly, or a port-forward through the Kubernetes API
server (``_portforward``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

import h11

from .._logging import default_logger
from ._guard import (
    LOGIN_CODE_SECONDS,
    Guard,
    Respond,
    downstream_headers,
    header_value,
    is_upgrade,
    redact,
    scanned,
    text_response,
    upstream_headers,
)
from ._upstream import READ_SIZE, ByteStream, Upstream, UpstreamError

__all__ = ["LocalProxy"]


async def _next_event(conn: h11.Connection, receive: _Receive) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await receive())
            continue
        assert not isinstance(event, type) or event is h11.PAUSED
        return event


class _Receive(Protocol):
    async def __call__(self) -> bytes: ...


@dataclass
class _ClientSide:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection

    async def receive(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except ConnectionError:
            return b""

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()


class LocalProxy:
    """Serve one lab on ``127.0.0.1:port`` (0 picks a free port) until :meth:`close`.

    Args:
        upstream: How to reach the lab.
        token: The lab token, added to every forwarded request, never sent back.
        port: Local port; 0 for any free one.
        landing: Path of JupyterLab on the lab (``{base_url}lab``).
        login_code_seconds: How long the printed login code works (once).
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        token: str,
        port: int = 0,
        landing: str = "/lab",
        logger: Any = None,
        login_code_seconds: float = LOGIN_CODE_SECONDS,
    ) -> None:
        self.upstream = upstream
        self._token = token
        self._code_seconds = login_code_seconds
        self._requested_port = port
        self._landing = landing
        self._log = logger or default_logger()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.guard: Guard | None = None

    @property
    def port(self) -> int:
        if self.guard is None:
            raise RuntimeError("LocalProxy not started")
        return self.guard.port

    @property
    def url(self) -> str:
        """The one-time login URL (what ``kernelsession open`` prints)."""
        if self.guard is None:
            raise RuntimeError("LocalProxy not started")
        return self.guard.login_url()

    async def start(self) -> LocalProxy:
        """Listen on 127.0.0.1 (OSError when the port is taken)."""
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", self._requested_port
        )
        port = int(self._server.sockets[0].getsockname()[1])
        self.guard = Guard(port=port, landing=self._landing, code_seconds=self._code_seconds)
        return self

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> LocalProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client = _ClientSide(reader, writer, h11.Connection(h11.SERVER))
        try:
            await self._serve(client)
        except (h11.ProtocolError, ConnectionError) as e:
            self._log.debug("connection ended", error=type(e).__name__)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # one connection's failure never ends the proxy
            message = redact(f"{type(e).__name__}: {e}".encode(), self._token).decode()
            self._log.warning("connection failed", error=message)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, client: _ClientSide) -> None:
        assert self.guard is not None
        up: h11.Connection | None = None
        stream: ByteStream | None = None
        try:
            while True:
                event = await _next_event(client.conn, client.receive)
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed (or garbage): done with this connection
                path = event.target.split(b"?", 1)[0].decode("latin-1")
                decision = self.guard.check(event.method, event.target, event.headers)
                if isinstance(decision, Respond):
                    await self._drain_body(client)
                    await self._respond(client, decision)
                    self._log.info(
                        "request", method=event.method.decode(), path=path, status=decision.status
                    )
                else:
                    if stream is None or up is None or up.our_state is not h11.IDLE:
                        if stream is not None:
                            await stream.aclose()
                        stream = None
                        try:
                            stream = await self.upstream.connect()
                        except UpstreamError as e:
                            await self._drain_body(client)
                            await self._respond(
                                client,
                                text_response(502, f"kernelsession open: {e}"),
                            )
                            self._log.warning("upstream unreachable", path=path, error=str(e))
                            return
                        up = h11.Connection(h11.CLIENT)
                    status = await self._forward(client, event, stream, up)
                    self._log.info(
                        "request", method=event.method.decode(), path=path, status=status
                    )
                    if status == 101 or status is None:
                        return
                    if up.our_state is h11.DONE and up.their_state is h11.DONE:
                        up.start_next_cycle()
                    else:
                        await stream.aclose()
                        stream = None
                if client.conn.our_state is h11.DONE and client.conn.their_state is h11.DONE:
                    client.conn.start_next_cycle()
                else:
                    return
        finally:
            if stream is not None:
                await stream.aclose()

    async def _drain_body(self, client: _ClientSide) -> None:
        while True:
            event = await _next_event(client.conn, client.receive)
            if not isinstance(event, h11.Data):
                return

    async def _respond(self, client: _ClientSide, answer: Respond) -> None:
        headers = [*answer.headers, (b"content-length", str(len(answer.body)).encode())]
        await client.send(h11.Response(status_code=answer.status, headers=headers))
        if answer.body:
            await client.send(h11.Data(data=answer.body))
        await client.send(h11.EndOfMessage())

    async def _forward(
        self, client: _ClientSide, request: h11.Request, stream: ByteStream, up: h11.Connection
    ) -> int | None:
        """Forward one request and its response; the status, or None when it broke."""
        assert self.guard is not None
        headers = upstream_headers(
            request.headers, token=self._token, cookie_name=self.guard.cookie_name
        )
        upgrade = is_upgrade(request.headers)
        await stream.send(
            up.send(h11.Request(method=request.method, target=request.target, headers=headers))
        )
        while True:  # the request body
            event = await _next_event(client.conn, client.receive)
            if isinstance(event, h11.Data):
                await stream.send(up.send(event))
            elif isinstance(event, h11.EndOfMessage):
                await stream.send(up.send(event))
                break
            else:
                return None
        try:
            response = await _next_event(up, stream.receive)
            while isinstance(response, h11.InformationalResponse) and response.status_code != 101:
                response = await _next_event(up, stream.receive)  # 100 Continue: not passed on
        except (h11.ProtocolError, UpstreamError) as e:
            await self._respond(client, text_response(502, f"kernelsession open: {e}"))
            return 502
        if isinstance(response, h11.InformationalResponse):  # 101 Switching Protocols
            if not upgrade:
                return None
            out = downstream_headers(response.headers, token=self._token)
            out += [(b"connection", b"Upgrade"), (b"upgrade", request_upgrade(request))]
            await client.send(h11.InformationalResponse(status_code=101, headers=out))
            await self._splice(client, stream, up)
            return 101
        if not isinstance(response, h11.Response):
            await self._respond(client, text_response(502, "kernelsession open: lab hung up"))
            return 502
        if scanned(response.headers):
            body = bytearray()
            while isinstance(event := await _next_event(up, stream.receive), h11.Data):
                body += event.data
            data = redact(bytes(body), self._token)
            out = downstream_headers(response.headers, token=self._token, body_length=len(data))
            if request.method == b"HEAD":
                out = downstream_headers(response.headers, token=self._token)
            await client.send(h11.Response(status_code=response.status_code, headers=out))
            if data:
                await client.send(h11.Data(data=data))
            await client.send(h11.EndOfMessage())
        else:
            out = downstream_headers(response.headers, token=self._token)
            await client.send(h11.Response(status_code=response.status_code, headers=out))
            while isinstance(event := await _next_event(up, stream.receive), h11.Data):
                await client.send(event)
            await client.send(h11.EndOfMessage())
        return response.status_code

    async def _splice(self, client: _ClientSide, stream: ByteStream, up: h11.Connection) -> None:
        """After a websocket upgrade: copy bytes both ways until one side ends."""
        pending_up, _ = client.conn.trailing_data
        pending_down, _ = up.trailing_data

        async def to_lab() -> None:
            if pending_up:
                await stream.send(pending_up)
            while data := await client.receive():
                await stream.send(data)

        async def to_browser() -> None:
            if pending_down:
                client.writer.write(pending_down)
            while data := await stream.receive():
                client.writer.write(data)
                await client.writer.drain()

        tasks = [asyncio.create_task(to_lab()), asyncio.create_task(to_browser())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def request_upgrade(request: h11.Request) -> bytes:
    return header_value(request.headers, b"upgrade") or b"websocket"
