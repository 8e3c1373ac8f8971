"""The liveness endpoint (``GET /healthz`` on the health port), answered from a thread.

kopf's own endpoint is answered by the operator's event loop. A standby that lists
3,000 sessions' objects on a saturated node keeps that loop busy for over a minute; it
answered the kubelet's probe too late six times running, was killed, and listed
everything again (``docs/scale.md``, the 12-06 23:48 run). Here a thread answers at once
from what the loop last recorded (:class:`Health`): a busy loop still turns and records;
a hung one does not. The endpoint says 503 until the operator has started and when the
loop has not turned for ``stall`` seconds, 200 otherwise, with a small JSON body.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

import structlog

from kernelsession.operator import endpoints

log = structlog.get_logger("kernelsession.operator")

STALL = 120.0
"""Seconds the event loop may go without turning before the endpoint says 503."""
BEAT = 1.0
"""Seconds between the loop's records."""
PATH = "/healthz"


@dataclass
class Health:
    """What the event loop last recorded, read by the endpoint's thread."""

    stall: float = STALL
    beat_at: float | None = None
    """Monotonic time of the loop's last record; None until the operator has started."""
    active: bool = False
    """Whether this replica acts, as of the last record (at most :data:`BEAT` old)."""
    sessions: int = 0
    """Sessions the replica knows, as of the last record."""

    def beat(self, active: bool, sessions: int) -> None:
        """Called from the loop: it turned, and this is what it holds."""
        self.active, self.sessions = active, sessions
        self.beat_at = time.monotonic()

    def answer(self, now: float) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) at monotonic time ``now``. Pure."""
        lag = None if self.beat_at is None else round(max(0.0, now - self.beat_at), 3)
        body: dict[str, Any] = {
            "started": lag is not None,
            "loop_lag_s": lag,
            "active": self.active,
            "sessions": self.sessions,
        }
        ok = lag is not None and lag <= self.stall
        return (200 if ok else 503), body


async def heartbeat(health: Health, read: Callable[[], tuple[bool, int]]) -> None:
    """Record in ``health`` every :data:`BEAT` seconds what ``read`` gives (whether this
    replica acts, how many sessions it knows), until cancelled."""
    while True:
        health.beat(*read())
        await asyncio.sleep(BEAT)


def serve(health: Health, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Answer ``GET /healthz`` on ``host:port`` from a daemon thread
    (:func:`endpoints.serve`); the server is returned (``shutdown()`` stops it).

    Raises:
        OSError: the port cannot be bound.
    """

    def healthz() -> endpoints.Answer:
        status, body = health.answer(time.monotonic())
        return status, "application/json", json.dumps(body).encode()

    server = endpoints.serve("healthz", {PATH: healthz}, port, host)
    log.info("liveness endpoint", port=server.server_address[1], path=PATH)
    return server
