"""Opening the kernel websocket with immediate TCP acknowledgements.

jupyter-server never sets ``TCP_NODELAY`` on kernel websockets, so when it
writes a reply as several small segments, Nagle's algorithm holds the later
ones until the client ACKs the first, and a Linux client delays that ACK by
up to ~40 ms. Asking the kernel to ACK at once (``TCP_QUICKACK``) removes the
stall; the kernel clears the flag by itself, so it is re-armed as data arrives.

Messages are handed to an ``on_message(data, subprotocol)`` callback straight
from the protocol's ``data_received`` (no queue, no reader-task wake-up per
frame) when one is given; otherwise the connection works as websockets' own.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.frames import DATA_OPCODES, Frame, Opcode
from websockets.protocol import Event

from ._protocol import V1_SUBPROTOCOL

__all__ = [
    "KernelClientConnection",
    "MessageHandler",
    "QuickAckClientConnection",
    "open_kernel_websocket",
]

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)

#: ``on_message(data, subprotocol)``: a whole websocket message (bytes or text).
MessageHandler = Callable[[bytes | str, str | None], None]


class KernelClientConnection(ClientConnection):
    """A websockets client connection that can deliver messages by callback.

    With ``on_message`` set, every data message (fragments joined) goes to it
    synchronously as it is parsed, in order; ``recv()`` and iteration then see
    nothing. Exceptions from the callback are logged and dropped.
    """

    on_message: MessageHandler | None = None
    _fragments: list[bytes] | None = None
    _fragment_text = False

    def process_event(self, event: Event) -> None:
        handler = self.on_message
        if (
            handler is None
            or self.response is None
            or not isinstance(event, Frame)
            or event.opcode not in DATA_OPCODES
        ):
            super().process_event(event)
            return
        if event.opcode is Opcode.CONT:
            if self._fragments is None:  # pragma: no cover - the protocol forbids it
                return
            self._fragments.append(bytes(event.data))
            if not event.fin:
                return
            data, text = b"".join(self._fragments), self._fragment_text
            self._fragments = None
        elif not event.fin:
            self._fragments = [bytes(event.data)]
            self._fragment_text = event.opcode is Opcode.TEXT
            return
        else:
            data, text = bytes(event.data), event.opcode is Opcode.TEXT
        try:
            handler(data.decode() if text else data, self.subprotocol)
        except Exception:
            self.logger.exception("kernel message handler failed")


class QuickAckClientConnection(KernelClientConnection):
    """A websockets client connection that re-arms ``TCP_QUICKACK`` on every read.

    On platforms without ``TCP_QUICKACK`` it behaves like its base class.
    """

    _quickack: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is not None and sock is not None and sock.family != socket.AF_UNIX:
            rearm = functools.partial(sock.setsockopt, socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            try:
                rearm()
            except OSError:
                return
            self._quickack = rearm

    def data_received(self, data: bytes) -> None:
        # The kernel leaves quick-ACK mode on its own: re-arm it once per read (one
        # prebound system call; the read may hold several frames). A data_received
        # without it would let the ACK of this segment wait up to ~40 ms.
        rearm = self._quickack
        if rearm is not None:
            try:
                rearm()
            except OSError:
                self._quickack = None
        super().data_received(data)


async def open_kernel_websocket(
    url: str,
    *,
    headers: dict[str, str],
    max_size: int | None,
    open_timeout: timedelta,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 60.0,
    quickack: bool = True,
    subprotocols: list[str] | None = None,
    on_message: MessageHandler | None = None,
) -> ClientConnection:
    """Open ``url``, offering the v1 kernel subprotocol; return the connection.

    With ``on_message``, messages go to it from the moment the handshake is done
    (see :class:`KernelClientConnection`); the caller then awaits ``wait_closed()``.

    Raises the exceptions of :func:`websockets.asyncio.client.connect`
    (``TimeoutError``, ``InvalidStatus``, ``OSError``...).
    """
    cls = QuickAckClientConnection if quickack else KernelClientConnection

    def factory(*args: Any, **kwargs: Any) -> KernelClientConnection:
        connection = cls(*args, **kwargs)
        connection.on_message = on_message
        return connection

    protocols = [V1_SUBPROTOCOL] if subprotocols is None else subprotocols
    return await connect(
        url,
        additional_headers=headers,
        subprotocols=protocols,  # type: ignore[arg-type]
        compression=None,
        max_size=max_size,
        max_queue=64,
        open_timeout=open_timeout.total_seconds(),
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        close_timeout=5,
        proxy=None,
        create_connection=cast(type[ClientConnection], factory),
    )
