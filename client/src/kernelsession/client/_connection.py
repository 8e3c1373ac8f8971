"""The kernel connection: one websocket, its reader task, routing and reconnecting.

:class:`KernelConnection` knows nothing about HTTP, login or lab sessions: it is
given a ``connect(client_session_id)`` callable that opens a kernel websocket,
and keeps one open. Its single reader task decodes every frame and routes it
by parent ``msg_id`` (:class:`MessageRouter`), so any number of requests may be
in flight. When the socket breaks without a close frame while the server and
kernel live (a dropped network path), it reconnects with the same client
session id within ``reconnect_timeout``: jupyter-server buffers what the kernel
sent meanwhile for that session id and replays it, so requests in flight
complete with all their output. Only when reconnecting fails are they ended
with a websocket termination.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from ._dispatch import MessageRouter, PendingRequest, Termination, termination_error
from ._errors import JupyterError, JupyterTimeoutError
from ._protocol import KernelMessage, ProtocolError, decode_frame, encode_message, make_message
from ._websocket import MessageHandler

__all__ = ["Connect", "KernelConnection"]

#: Opens a kernel websocket for a client session id, delivering its messages to the
#: handler (raises JupyterError subclasses).
Connect = Callable[[str, MessageHandler], Awaitable[ClientConnection]]

#: How long to wait for the websocket close handshake.
_CLOSE_TIMEOUT = 10.0
#: Seconds to wait for one kernel_info round trip (shell + IOPub) before asking again.
_NUDGE_ATTEMPT = 1.0
#: Close codes after which reconnecting makes sense: no close frame (network or proxy).
_RECONNECTABLE = frozenset({None, CloseCode.ABNORMAL_CLOSURE})


class KernelConnection:
    """A kernel websocket kept open: send requests, get their messages routed back.

    Args:
        connect: Opens the websocket for a client session id.
        username: Put in message headers and errors.
        secrets: Redacted from every error (the token).
        logger: A structlog-style logger.
        max_websocket_size: Only to explain a 1009 close.
        reconnect_timeout: Seconds to keep trying to reopen a broken socket
            (``None`` or 0: never reconnect).
        kernel_alive: Asked before each reconnect attempt: ``True`` (the kernel
            exists), ``False`` (the server or kernel is gone: stop at once, the
            output cannot come back), ``None`` (cannot tell: keep trying).
    """

    def __init__(
        self,
        connect: Connect,
        *,
        username: str,
        secrets: tuple[str, ...],
        logger: Any,
        max_websocket_size: int | None = None,
        reconnect_timeout: float | None = None,
        kernel_alive: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> None:
        self._connect = connect
        self._kernel_alive = kernel_alive
        self._gone = False
        self.username = username
        self.secrets = secrets
        self.client_session_id = uuid.uuid4().hex
        self.max_websocket_size = max_websocket_size
        self.reconnect_timeout = reconnect_timeout
        self.router = MessageRouter()
        #: How many times a broken socket was reopened (not counting kernel restarts).
        self.reconnects = 0
        self._logger = logger
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()  # set while a socket is usable or for good once closed
        self._ws_ended: asyncio.Future[None] | None = None
        self._closed: Termination | None = None
        self._closing = False
        self._replacing = False
        self._kernel_restarted = False
        self._restart_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Open the websocket and start reading.

        Raises:
            JupyterTimeoutError, JupyterWebSocketError: from ``connect``.
        """
        await self._attach(await self._connect(self.client_session_id, self._on_message))

    async def _attach(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ws_ended = asyncio.get_running_loop().create_future()
        self._closed = None
        self._ready.set()
        self._reader = asyncio.create_task(self._run(), name="kernelsession-reader")

    @property
    def websocket(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("the kernel connection is not open")
        return self._ws

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server selected (``None``: legacy JSON frames)."""
        return self._ws.subprotocol if self._ws is not None else None

    @property
    def closed(self) -> Termination | None:
        """Why the connection ended for good, or ``None`` while usable."""
        return self._closed

    async def close(self) -> None:
        """Close the websocket (no reconnecting from now on) and stop the reader."""
        self._closing = True
        await self._close_socket()

    async def _close_socket(self) -> None:
        ws = self._ws
        if ws is not None:
            try:
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await ws.close()
            except TimeoutError:
                ws.transport.abort()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    # -- reading -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            try:
                code, reason = await self._read(ws)
            except Exception as e:  # pragma: no cover - defensive: never leave requests hanging
                self._logger.exception("Kernel websocket reader failed")
                code, reason = None, f"{type(e).__name__}: {e}"
            if self._replacing:
                return
            self._ready.clear()
            if self._ws_ended is not None and not self._ws_ended.done():
                self._ws_ended.set_result(None)
            if (
                not self._closing
                and code in _RECONNECTABLE
                and self.reconnect_timeout
                and await self._reconnect(code)
            ):
                continue
            self._set_closed(code, reason)
            self._ready.set()
            return

    def _on_message(self, frame: bytes | str, subprotocol: str | None) -> None:
        """Decode and route one websocket message (called from the protocol, in order)."""
        try:
            msg = decode_frame(frame, subprotocol)
            # v1 parts are decoded as they are read, here or while routing
            if (
                msg.msg_type == "status"
                and not msg.parent_msg_id
                and msg.content.get("execution_state") in ("restarting", "dead")
            ):
                self._kernel_restarted = True
                self._logger.warning(
                    "Kernel restarting or dead", execution_state=msg.content.get("execution_state")
                )
            self.router.dispatch(msg)
        except (ProtocolError, ValueError, UnicodeDecodeError) as e:
            self._logger.warning("Dropping malformed kernel frame", error=str(e))

    async def _read(self, ws: ClientConnection) -> tuple[int | None, str | None]:
        """Wait until ``ws`` ends (its messages go to :meth:`_on_message`); its close code."""
        await ws.wait_closed()
        close = ws.protocol.close_rcvd or ws.protocol.close_sent
        return (close.code if close else None), (close.reason if close else None)

    async def _reconnect(self, code: int | None) -> bool:
        """Reopen the socket with the same client session id; ``True`` once open."""
        assert self.reconnect_timeout
        deadline = time.monotonic() + self.reconnect_timeout
        self._logger.warning(
            "Kernel websocket broke; reconnecting",
            close_code=code,
            within_seconds=self.reconnect_timeout,
        )
        delay = 0.05
        attempts = 0
        while not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._kernel_alive is not None:
                try:
                    async with asyncio.timeout(remaining):
                        alive = await self._kernel_alive()
                except TimeoutError:
                    alive = None
                if alive is False:
                    self._gone = True
                    self._logger.warning("Not reconnecting: the server or the kernel is gone")
                    return False
            attempts += 1
            try:
                async with asyncio.timeout(remaining):
                    ws = await self._connect(self.client_session_id, self._on_message)
            except (JupyterError, OSError, TimeoutError) as e:
                self._logger.debug("Reconnect attempt failed", attempt=attempts, error=str(e))
                await asyncio.sleep(min(delay, max(deadline - time.monotonic(), 0)))
                delay = min(delay * 2, 1.0)
                continue
            if self._closing:
                await ws.close()
                return False
            self._ws = ws
            self._ws_ended = asyncio.get_running_loop().create_future()
            self.reconnects += 1
            self._ready.set()
            self._logger.info("Reconnected the kernel websocket", attempts=attempts)
            return True
        self._logger.warning(
            "Could not reconnect the kernel websocket", attempts=attempts, close_code=code
        )
        return False

    def _set_closed(self, code: int | None, reason: str | None) -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            detail = (
                "a kernel message was larger than max_websocket_size "
                f"({self.max_websocket_size} bytes); the websocket was closed"
            )
        elif self._closing:
            detail = "the websocket was closed by the client"
        elif code is None or code == CloseCode.ABNORMAL_CLOSURE:
            detail = "the kernel websocket broke (no close frame: server gone or network)"
            if self._gone:
                detail += "; not reopened: the server or the kernel is gone"
            elif self.reconnect_timeout:
                detail += f" and could not be reopened within {self.reconnect_timeout:g} s"
        else:
            detail = "the kernel websocket closed unexpectedly"
        termination = Termination(kind="websocket", detail=detail, close_code=code, reason=reason)
        if self._closed is None:
            self._closed = termination
            if not self._closing:
                self._logger.warning(
                    "Kernel websocket closed", close_code=code, reason=reason, detail=detail
                )
        self.router.terminate_all(termination)

    # -- sending -----------------------------------------------------------------------

    def message(self, channel: str, msg_type: str, content: dict[str, Any]) -> KernelMessage:
        """A request message from this connection's client session."""
        return make_message(
            channel, msg_type, content, session_id=self.client_session_id, username=self.username
        )

    async def request(
        self,
        msg: KernelMessage,
        *,
        wait_idle: bool = True,
        on_stream: Callable[[str, str], None] | None = None,
    ) -> PendingRequest:
        """Register a request for ``msg``'s replies and send it.

        Never raises for a closed socket: the returned request is then terminated
        (its ``done`` future resolved, ``termination`` set). The caller must
        :meth:`unregister` it when done with it.
        """
        if self._kernel_restarted and msg.msg_type != "kernel_info_request":
            await self._reopen_after_restart()
        request = PendingRequest(msg.msg_id, wait_idle=wait_idle, on_stream=on_stream)
        self.router.register(request)
        await self._send(msg, request)
        return request

    def unregister(self, msg_id: str) -> None:
        self.router.unregister(msg_id)

    async def _send(self, msg: KernelMessage, request: PendingRequest) -> None:
        while True:
            if not self._ready.is_set():
                await self._ready.wait()
            if self._closed is not None:
                request.terminate(self._closed)
                return
            ws, ended = self._ws, self._ws_ended
            assert ws is not None
            assert ended is not None
            try:
                await ws.send(encode_message(msg, ws.subprotocol))
                return
            except ConnectionClosed:
                # Not sent: wait until the reader has reconnected (or given up), resend.
                await ended

    # -- kernel restarts ---------------------------------------------------------------

    async def _reopen_after_restart(self) -> None:
        """After a kernel restart, open a fresh websocket to the same kernel.

        A restart may move the kernel to new ports, which leaves the server's
        side of the old websocket talking to nothing; like JupyterLab, reconnect.
        """
        async with self._restart_lock:
            if not self._kernel_restarted or self._closing:
                return
            self._logger.info("Reconnecting the kernel websocket after a kernel restart")
            self._replacing = True
            try:
                await self._close_socket()
            finally:
                self._replacing = False
            self._kernel_restarted = False
            await self._attach(await self._connect(self.client_session_id, self._on_message))
            await self.nudge(self.reconnect_timeout or 60.0)

    async def nudge(self, timeout: float) -> None:
        """Wait until both shell and IOPub reach the kernel.

        A kernel_info_request is complete only once its IOPub idle status arrives; the
        server's IOPub subscription to a freshly started kernel may not be connected
        yet (ZMQ drops what a subscriber misses), so ask again until one completes.

        Raises:
            JupyterTimeoutError: not reachable within ``timeout`` seconds.
            JupyterKernelDiedError, JupyterWebSocketError: the kernel died or the socket broke.
        """
        started_at = datetime.now(tz=UTC)
        deadline = time.monotonic() + timeout
        kwargs = {"user": self.username, "started_at": started_at, "secrets": self.secrets}
        while True:
            request = await self.request(self.message("shell", "kernel_info_request", {}))
            attempt = min(_NUDGE_ATTEMPT, max(deadline - time.monotonic(), 0.001))
            try:
                async with asyncio.timeout(attempt):
                    await asyncio.shield(request.done)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise JupyterTimeoutError(
                        f"the kernel did not answer on shell and IOPub within {timeout:g} s",
                        **kwargs,  # type: ignore[arg-type]
                    ) from None
                continue
            finally:
                self.unregister(request.msg_id)
            if request.termination is not None:
                raise termination_error(request.termination, **kwargs)
            return
