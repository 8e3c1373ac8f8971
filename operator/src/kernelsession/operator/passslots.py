"""The bound on passes running at once (``max_concurrent_passes``), handed out oldest
session first.

With more sessions wanting a pass than there are slots (a burst of creations held back
by the API rate limit), a first-come slot interleaves every session's passes: a start
takes a few passes (token, children and pod, Ready), each queues behind every other
session's, and all of them finish late together. :class:`PassSlots` gives a free slot to
the waiting pass whose session is oldest (its ``creationTimestamp``), so the sessions
that came first finish first and the later ones wait, as a queue would have them; a
session's own passes never overtake each other (it has one loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

Priority = tuple[str, str, str]
"""(creationTimestamp, namespace, name): lower goes first."""


def priority(body: Mapping[str, Any]) -> Priority:
    """A session's place in the queue for a pass slot (RFC 3339 UTC times sort as text)."""
    meta = body.get("metadata") or {}
    return (
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
    )


class PassSlots:
    """At most ``size`` holders at once; a freed slot goes to the waiter with the lowest
    priority (ties: the one that asked first). A waiter cancelled while it waits takes
    no slot; one cancelled just after a slot was handed to it gives it back."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._held = 0
        self._waiting: list[tuple[Priority, int, asyncio.Future[None]]] = []
        self._live = 0  # waiters in the heap not cancelled (a cancelled one stays, done)
        self._order = itertools.count()

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return self._live

    @contextlib.asynccontextmanager
    async def slot(self, prio: Priority) -> AsyncIterator[None]:
        """Hold a slot for the body of the ``async with``."""
        await self._acquire(prio)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, prio: Priority) -> None:
        if self._held < self.size and not self._live:
            self._held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (prio, next(self._order), future))
        self._live += 1
        try:
            await future
        except asyncio.CancelledError:
            if future.cancelled():
                self._live -= 1  # left while waiting; its entry is skipped when popped
            else:
                self._release()  # handed over as the cancellation came: pass it on
            raise

    def _release(self) -> None:
        self._held -= 1
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter's future is done
                self._live -= 1
                self._held += 1
                future.set_result(None)
                return
