"""The operator's own limit on its Kubernetes API request rate (``KERNELSESSION_API_QPS``,
``KERNELSESSION_API_BURST``), as client-go's token bucket gives every controller.

:class:`TokenBucket` lets ``burst`` requests go at once and ``qps`` a second on average
after that (a generic cell rate: each request reserves the next free slot, so waiters are
served in order). :func:`limit` puts it in front of every request of an API client, the
Lease's excepted (the election must renew on time whatever the sessions ask); a write
that had to wait asks the ``fence`` again before it is sent, so a replica that stopped
leading while it waited sends nothing.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from kernelsession.operator import metrics

EXEMPT_PATHS = ("/leases",)
"""Requests whose path contains one of these are never held back."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenBucket:
    """At most ``burst`` requests at once, ``qps`` a second on average; ``qps`` <= 0
    means no limit. ``clock`` and ``sleep`` are the event loop's unless given."""

    def __init__(
        self,
        qps: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.qps = qps
        self.interval = 1.0 / qps if qps > 0 else 0.0
        self.tolerance = (max(burst, 1) - 1) * self.interval
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # when the bucket is empty again (theoretical arrival time)

    def reserve(self) -> float:
        """Take the next slot; seconds until it is due (0: now)."""
        if self.interval == 0:
            return 0.0
        now = self._clock()
        due = max(self._next, now)
        self._next = due + self.interval
        return max(0.0, due - self.tolerance - now)

    async def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)
        return wait


def limit(api: Any, bucket: TokenBucket, fence: Callable[[], None] | None = None) -> None:
    """Hold every request of ``api`` (a kubernetes_asyncio ``ApiClient``) to ``bucket``,
    the Lease's excepted; a write that waited calls ``fence`` (which raises to stop it)
    before it is sent."""
    if bucket.interval == 0:
        return
    send = api.call_api

    async def limited(resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if not any(p in resource_path for p in EXEMPT_PATHS):
            waited = await bucket.acquire()
            if waited:
                metrics.API_THROTTLED_SECONDS.inc(waited)
                if fence is not None and method.upper() not in READ_METHODS:
                    fence()
        return await send(resource_path, method, *args, **kwargs)

    api.call_api = limited
