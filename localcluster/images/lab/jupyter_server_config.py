"""The lab image's jupyter-server settings (``/opt/lab/etc/jupyter``).

Kernel websockets carry bursts of small frames (status, stream, reply). jupyter-server
leaves Nagle's algorithm on, so each burst after the first waits for the peer's delayed
ACK (~40 ms per round trip) whenever the peer does not acknowledge at once: an ingress
controller, a proxy, most websocket clients. TCP_NODELAY on every kernel websocket removes
that wait; nothing else changes.
"""

from typing import Any

from jupyter_server.services.kernels.websocket import KernelWebsocketHandler

_open = KernelWebsocketHandler.open


async def _open_without_nagle(self: KernelWebsocketHandler, *args: Any, **kwargs: Any) -> None:
    self.set_nodelay(True)
    await _open(self, *args, **kwargs)


KernelWebsocketHandler.open = _open_without_nagle  # type: ignore[method-assign]
