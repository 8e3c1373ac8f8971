"""Opening the kernel websocket with immediate TCP acknowledgements.

jupyter-server never sets ``TCP_NODELAY`` on kernel websockets, so when it
writes a reply as several small segments, Nagle's algorithm holds the later
ones until the client ACKs the first, and a Linux client delays that ACK by
up to ~40 ms. Asking the kernel to ACK at once (``TCP_QUICKACK``) removes the
stall; the kernel clears the flag by itself, so it is re-armed as data arrives.
"""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from ._protocol import V1_SUBPROTOCOL

__all__ = ["QuickAckClientConnection", "open_kernel_websocket"]

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAckClientConnection(ClientConnection):
    """A websockets client connection that re-arms ``TCP_QUICKACK`` on every read.

    On platforms without ``TCP_QUICKACK`` it behaves like its base class.
    """

    _quickack_sock: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if _TCP_QUICKACK is not None and sock is not None and sock.family != socket.AF_UNIX:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                return
            self._quickack_sock = sock

    def data_received(self, data: bytes) -> None:
        sock = self._quickack_sock
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:
                self._quickack_sock = None
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
) -> ClientConnection:
    """Open ``url``, offering the v1 kernel subprotocol; return the connection.

    Raises the exceptions of :func:`websockets.asyncio.client.connect`
    (``TimeoutError``, ``InvalidStatus``, ``OSError``...).
    """
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
        create_connection=QuickAckClientConnection if quickack else ClientConnection,
    )
