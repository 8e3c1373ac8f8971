"""A small HTTP + websocket reverse proxy on 127.0.0.1 in front of one lab.

``kernelsession open`` serves JupyterLab to the local browser through it. The proxy
adds ``Authorization: token ...`` to every request it forwards (jupyter-server accepts
it for HTTP requests and websocket upgrades alike), so the browser never sees the lab
token; it removes the token from the pages it serves (jupyter-server writes it into
JupyterLab's page config) and guards the local port:

* the printed URL carries a one-time login code; the first request with it gets a
  random session cookie (``HttpOnly; SameSite=Strict``) and a redirect to the lab,
  and the code is spent;
* every other request needs that cookie, a ``Host`` of ``127.0.0.1:PORT`` or
  ``localhost:PORT`` (no DNS rebinding) and, when the browser sends an ``Origin``,
  this proxy's own origin (no cross-site or cross-port requests).

The decisions and the header rewriting are pure functions (:class:`Guard`,
:func:`upstream_headers`, :func:`downstream_headers`, :func:`redact`); the I/O is one
``h11`` connection per side. The upstream is pluggable (:class:`Upstream`): a TCP
address for a lab this machine reaches directly, or a port-forward through the
Kubernetes API server (``kernelsession.client._portforward``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import h11

from .._logging import default_logger

__all__ = [
    "LOGIN_PARAMETER",
    "ByteStream",
    "Forward",
    "Guard",
    "LocalProxy",
    "Respond",
    "TCPUpstream",
    "Upstream",
    "UpstreamError",
    "downstream_headers",
    "redact",
    "upstream_headers",
]

LOGIN_PARAMETER = "kernelsession-login"
"""Query parameter of the printed URL that carries the one-time login code."""

Headers = list[tuple[bytes, bytes]]

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded, except the pair that asks
# for a websocket upgrade.
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
}
# Response bodies that are scanned for the token (and so buffered): text a browser reads.
_SCANNED_TYPES = (
    b"text/",
    b"application/json",
    b"application/javascript",
    b"application/xhtml",
    b"application/xml",
    b"image/svg",
)
_READ_SIZE = 65536


class UpstreamError(Exception):
    """The lab could not be reached (connection refused, port-forward refused...)."""


class ByteStream(Protocol):
    """A bidirectional byte stream to the lab (a TCP connection, a port-forward)."""

    async def receive(self) -> bytes:
        """The next bytes; ``b""`` at the end of the stream."""
        ...

    async def send(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    """Opens one :class:`ByteStream` to the lab per local connection."""

    async def connect(self) -> ByteStream:
        """Raises :class:`UpstreamError` when the lab cannot be reached."""
        ...

    def describe(self) -> str:
        """Where it leads, for logs and errors (never a secret)."""
        ...


class _TCPStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self) -> bytes:
        try:
            return await self._reader.read(_READ_SIZE)
        except ConnectionError:
            return b""

    async def send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


@dataclass(frozen=True)
class TCPUpstream:
    """A lab this machine reaches directly over TCP (tests, a lab on this host)."""

    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> TCPUpstream:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL: {parts.scheme}://{parts.hostname}")
        return cls(parts.hostname, parts.port or 80)

    async def connect(self) -> ByteStream:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as e:
            raise UpstreamError(f"cannot connect to {self.describe()}: {e.strerror or e}") from None
        return _TCPStream(reader, writer)

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


# -- decisions (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Respond:
    """Answer the request locally (login redirect, refusal)."""

    status: int
    headers: Headers
    body: bytes = b""


@dataclass(frozen=True)
class Forward:
    """Forward the request with these headers."""

    headers: Headers


def _header(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _text_response(status: int, text: str, extra: Headers | None = None) -> Respond:
    body = (text + "\n").encode()
    headers: Headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    return Respond(status, headers, body)


@dataclass
class Guard:
    """Who may use the local port: the holder of the one-time login code, then its cookie.

    Args:
        port: The local port (part of the allowed Host and Origin, and the cookie name).
        landing: Path the login redirects to (the lab's ``/lab``).
    """

    port: int
    landing: str = "/lab"
    login_code: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    session_cookie: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    login_used: bool = False

    @property
    def cookie_name(self) -> str:
        # One name per port: several labs side by side keep their own cookies (cookies
        # are not port-scoped, names are).
        return f"{COOKIE_PREFIX}{self.port}"

    @property
    def origins(self) -> tuple[bytes, ...]:
        return (
            f"http://127.0.0.1:{self.port}".encode(),
            f"http://localhost:{self.port}".encode(),
        )

    def login_url(self) -> str:
        """The URL to print: opens the lab and logs the browser in, once."""
        return f"http://127.0.0.1:{self.port}{self.landing}?{LOGIN_PARAMETER}={self.login_code}"

    def has_cookie(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        for key, value in headers:
            if key.lower() != b"cookie":
                continue
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            morsel = jar.get(self.cookie_name)
            if morsel is not None and secrets.compare_digest(
                morsel.value.encode(), self.session_cookie.encode()
            ):
                return True
        return False

    def check(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> Respond | Forward | None:
        """Decide about one request: a local answer, or None to forward it.

        (Callers build the forwarded headers with :func:`upstream_headers`.)
        """
        host = _header(headers, b"host")
        if host not in (f"127.0.0.1:{self.port}".encode(), f"localhost:{self.port}".encode()):
            return _text_response(421, "kernelsession open: wrong Host (use the printed URL)")
        origin = _header(headers, b"origin")
        if origin is not None and origin not in self.origins:
            return _text_response(403, "kernelsession open: cross-origin request refused")
        parts = urlsplit(target.decode("latin-1"))
        query = parse_qsl(parts.query, keep_blank_values=True)
        codes = [v for k, v in query if k == LOGIN_PARAMETER]
        if codes:
            rest = urlencode([(k, v) for k, v in query if k != LOGIN_PARAMETER])
            location = urlunsplit(("", "", parts.path or "/", rest, "")).encode()
            if self.has_cookie(headers):
                return Respond(303, [(b"location", location), (b"cache-control", b"no-store")])
            valid = not self.login_used and secrets.compare_digest(
                codes[0].encode(), self.login_code.encode()
            )
            if not valid:
                return _text_response(
                    403,
                    "kernelsession open: this login link was already used or is wrong; "
                    "run `kernelsession open` again for a new one",
                )
            self.login_used = True
            cookie = f"{self.cookie_name}={self.session_cookie}; Path=/; HttpOnly; SameSite=Strict"
            return Respond(
                303,
                [
                    (b"location", location),
                    (b"set-cookie", cookie.encode()),
                    (b"cache-control", b"no-store"),
                ],
            )
        if not self.has_cookie(headers):
            return _text_response(
                403,
                "kernelsession open: not logged in; open the URL that `kernelsession open` "
                "printed (it logs in this browser once)",
            )
        return None


def _is_upgrade(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    connection = _header(headers, b"connection") or b""
    tokens = {t.strip().lower() for t in connection.split(b",")}
    return b"upgrade" in tokens and _header(headers, b"upgrade") is not None


COOKIE_PREFIX = "kernelsession-"


def _strip_cookie(value: bytes, name: str) -> bytes:
    """``value`` without the proxy's cookie, nor those of other ``open`` proxies.

    Browsers do not scope cookies by port, so every lab served on 127.0.0.1 receives
    every proxy's cookie; none of them is the lab's business.
    """
    kept = []
    for part in value.split(b";"):
        cookie_name = part.strip().split(b"=", 1)[0].strip()
        if not part.strip() or cookie_name == name.encode():
            continue
        if cookie_name.startswith(COOKIE_PREFIX.encode()):
            continue
        kept.append(part.strip())
    return b"; ".join(kept)


def upstream_headers(
    headers: Sequence[tuple[bytes, bytes]], *, token: str, cookie_name: str
) -> Headers:
    """The request headers to send to the lab.

    Drops hop-by-hop headers (keeping a websocket upgrade), any ``Authorization`` the
    browser sent, the cookies of ``open`` proxies and ``Accept-Encoding`` (bodies come back
    uncompressed so they can be scanned for the token); adds ``Authorization: token``.
    """
    upgrade = _is_upgrade(headers)
    out: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in _HOP_BY_HOP or name in (b"authorization", b"accept-encoding"):
            continue
        if name == b"cookie":
            value = _strip_cookie(value, cookie_name)
            if not value:
                continue
        out.append((name, value))
    if upgrade:
        out.append((b"connection", b"Upgrade"))
        out.append((b"upgrade", _header(headers, b"upgrade") or b"websocket"))
    out.append((b"authorization", f"token {token}".encode()))
    return out


def scanned(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a response body is text a browser reads (and so scanned for the token)."""
    content_type = (_header(headers, b"content-type") or b"").lower()
    if content_type.startswith(b"text/event-stream"):
        return False  # a stream that never ends: passed through as it comes
    if (_header(headers, b"content-encoding") or b"identity").lower() != b"identity":
        return False  # compressed (not asked for): cannot hold the token in clear
    return content_type.startswith(_SCANNED_TYPES)


def redact(data: bytes, token: str) -> bytes:
    """``data`` without the token (jupyter-server writes it into JupyterLab's page)."""
    return data.replace(token.encode(), b"") if token else data


def downstream_headers(
    headers: Sequence[tuple[bytes, bytes]], *, token: str, body_length: int | None = None
) -> Headers:
    """The response headers to send to the browser.

    Drops hop-by-hop headers (a 101 keeps its ``Connection``/``Upgrade`` pair, added by
    the caller), removes the token from any header value, and with ``body_length`` (a
    scanned, rewritten body) replaces the framing headers with that length.
    """
    out: Headers = []
    for key, value in headers:
        name = key.lower()
        if name in _HOP_BY_HOP:
            continue
        if body_length is not None and name in (b"content-length", b"transfer-encoding"):
            continue
        out.append((name, redact(value, token)))
    if body_length is not None:
        out.append((b"content-length", str(body_length).encode()))
    return out


# -- I/O ------------------------------------------------------------------------------


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
            return await self.reader.read(_READ_SIZE)
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
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        token: str,
        port: int = 0,
        landing: str = "/lab",
        logger: Any = None,
    ) -> None:
        self.upstream = upstream
        self._token = token
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
        self.guard = Guard(port=port, landing=self._landing)
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
                                _text_response(502, f"kernelsession open: {e}"),
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
        upgrade = _is_upgrade(request.headers)
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
            await self._respond(client, _text_response(502, f"kernelsession open: {e}"))
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
            await self._respond(client, _text_response(502, "kernelsession open: lab hung up"))
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
    return _header(request.headers, b"upgrade") or b"websocket"
