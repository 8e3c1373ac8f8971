"""Port-forward to a pod through the Kubernetes API server (what ``kubectl port-forward`` does).

One websocket per connection to ``/api/v1/namespaces/NS/pods/POD/portforward?ports=PORT``
with the ``v4.channel.k8s.io`` subprotocol. Every binary message starts with a channel
byte: for the single forwarded port, channel 0 carries data and channel 1 error text.
The first message the server sends on each channel carries the port number (2 bytes,
little-endian) before any payload; the client sends data on channel 0 with no port
prefix. The framing is pure (:func:`encode_data`, :class:`PortForwardDecoder`); the
websocket is kubernetes_asyncio's ``WsApiClient``, so the forward authenticates as the
caller with whatever their kubeconfig says (RBAC: ``get`` and ``create`` on ``pods/portforward``).
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.stream import WsApiClient

from ..kubeapi import DEFAULT_REQUEST_TIMEOUT
from ._upstream import ByteStream, UpstreamError

__all__ = [
    "DATA_CHANNEL",
    "ERROR_CHANNEL",
    "SUBPROTOCOL",
    "PortForwardData",
    "PortForwardDecoder",
    "PortForwardError",
    "PortForwardFailure",
    "PortForwardProtocolError",
    "PortForwardStream",
    "PortForwardUpstream",
    "encode_data",
]

DATA_CHANNEL = 0
ERROR_CHANNEL = 1
SUBPROTOCOL = "v4.channel.k8s.io"


class PortForwardError(UpstreamError):
    """The port-forward failed: refused by the API server, or an error from the kubelet."""


class PortForwardProtocolError(PortForwardError):
    """The server sent a frame that does not follow the port-forward protocol."""


@dataclass(frozen=True)
class PortForwardData:
    """Bytes from the pod's port."""

    data: bytes


@dataclass(frozen=True)
class PortForwardFailure:
    """Error text from the kubelet (e.g. nothing listens on the port)."""

    message: str


def encode_data(data: bytes) -> bytes:
    """A websocket message carrying ``data`` to the pod's port."""
    return bytes([DATA_CHANNEL]) + data


@dataclass
class PortForwardDecoder:
    """Turn the server's websocket messages into data and error events (Sans-I/O)."""

    port: int
    _announced: set[int] = field(default_factory=set)

    def feed(self, message: bytes) -> list[PortForwardData | PortForwardFailure]:
        """Decode one binary message.

        Raises:
            PortForwardProtocolError: empty message, unknown channel, short or wrong
                port announcement.
        """
        if not message:
            raise PortForwardProtocolError("empty port-forward message")
        channel, payload = message[0], message[1:]
        if channel not in (DATA_CHANNEL, ERROR_CHANNEL):
            raise PortForwardProtocolError(f"port-forward message on unknown channel {channel}")
        if channel not in self._announced:
            if len(payload) < 2:
                raise PortForwardProtocolError(
                    f"port-forward channel {channel} opened without its port"
                )
            port = int.from_bytes(payload[:2], "little")
            if port != self.port:
                raise PortForwardProtocolError(
                    f"port-forward channel {channel} is for port {port}, not {self.port}"
                )
            self._announced.add(channel)
            payload = payload[2:]
        if not payload:
            return []
        if channel == DATA_CHANNEL:
            return [PortForwardData(payload)]
        return [PortForwardFailure(payload.decode("utf-8", errors="replace"))]


class PortForwardStream:
    """A :class:`ByteStream` over one port-forward websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, port: int, where: str) -> None:
        self._ws = ws
        self._decoder = PortForwardDecoder(port)
        self._pending: collections.deque[bytes] = collections.deque()
        self._where = where

    async def receive(self) -> bytes:
        while not self._pending:
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                for event in self._decoder.feed(message.data):
                    if isinstance(event, PortForwardFailure):
                        raise PortForwardError(f"port-forward to {self._where}: {event.message}")
                    self._pending.append(event.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                raise PortForwardProtocolError("port-forward sent a text message")
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the stream ended
                return b""
        return self._pending.popleft()

    async def send(self, data: bytes) -> None:
        await self._ws.send_bytes(encode_data(data))

    async def aclose(self) -> None:
        await self._ws.close()


def _refusal(status: int, where: str) -> str:
    if status == 403:
        return (
            f"the API server refused the port-forward to {where} (403 Forbidden): "
            "your account needs `get` and `create` on `pods/portforward` in that namespace"
        )
    if status == 404:
        return f"pod {where} not found (404): the session has no running lab pod"
    if status == 401:
        return "the API server did not accept your credentials (401 Unauthorized)"
    return f"the API server refused the port-forward to {where} (HTTP {status})"


class PortForwardUpstream:
    """Reach ``port`` of pod ``namespace/pod`` through the API server, one websocket a stream.

    Args:
        configuration: The caller's ``kubernetes_asyncio`` configuration (kubeconfig).
        connect_timeout: Seconds the API server may take to open one stream's websocket.
    """

    def __init__(
        self,
        configuration: client.Configuration,
        *,
        namespace: str,
        pod: str,
        port: int,
        connect_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self._configuration = configuration
        self._ws_api: Any = None

    def describe(self) -> str:
        return f"pod {self.namespace}/{self.pod} port {self.port}"

    async def connect(self) -> ByteStream:
        if self._ws_api is None:
            self._ws_api = WsApiClient(configuration=self._configuration)
        core: Any = client.CoreV1Api(self._ws_api)  # the generated types do not know WsApiClient
        where = f"{self.namespace}/{self.pod}"
        try:
            async with asyncio.timeout(self.connect_timeout):
                request = await core.connect_get_namespaced_pod_portforward(
                    self.pod, self.namespace, ports=str(self.port), _preload_content=False
                )
                ws = await request
        except TimeoutError:
            raise PortForwardError(
                f"the API server did not open the port-forward to {where} "
                f"within {self.connect_timeout:g} s"
            ) from None
        except aiohttp.WSServerHandshakeError as e:
            raise PortForwardError(_refusal(e.status, where)) from None
        except (aiohttp.ClientError, OSError) as e:
            raise PortForwardError(
                f"cannot reach the API server for the port-forward to {where}: {type(e).__name__}"
            ) from None
        return PortForwardStream(ws, self.port, where)

    async def aclose(self) -> None:
        if self._ws_api is not None:
            await self._ws_api.close()
            self._ws_api = None
