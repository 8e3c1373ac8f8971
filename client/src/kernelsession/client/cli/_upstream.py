"""Where the local proxy sends a connection: a byte stream (:class:`ByteStream`) to the
lab, opened by an :class:`Upstream` (:class:`TCPUpstream` for a lab this machine reaches;
the port-forward in ``_portforward``)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

READ_SIZE = 65536


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
            return await self._reader.read(READ_SIZE)
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
