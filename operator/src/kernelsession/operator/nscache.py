"""One read of a namespace-wide object serves every session of that namespace.

:class:`NamespaceReads` keeps what was last read per namespace (the policy ConfigMap's
data) with the time the read started; a pass takes it when it is young enough for that
pass, else reads it again, and passes that want it at the same moment share one request.
A thousand sessions created in one namespace cost one read per freshness window, not one
each, and a new leader's first passes over every session do not each ask for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class NamespaceReads(Generic[T]):
    """The last value read per namespace; ``read(namespace)`` fetches a new one."""

    def __init__(
        self,
        read: Callable[[str], Awaitable[T]],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._clock = clock
        self._values: dict[str, tuple[float, T]] = {}
        self._pending: dict[str, asyncio.Task[T]] = {}
        self._forgotten: dict[str, int] = {}
        """How often each namespace was forgotten: a read started before is not kept."""

    async def get(self, namespace: str, max_age: float) -> T:
        """The value of ``namespace``, read at most ``max_age`` seconds ago.

        Raises:
            Exception: whatever ``read`` raised (nothing is kept then).
        """
        known = self._values.get(namespace)
        if known is not None and self._clock() - known[0] < max_age:
            return known[1]
        task = self._pending.get(namespace)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(namespace))
            self._pending[namespace] = task
            task.add_done_callback(lambda done: self._done(namespace, done))
        # shielded: a pass cancelled meanwhile does not cancel the read the others await
        return await asyncio.shield(task)

    def forget(self, namespace: str) -> None:
        """The next ``get`` reads again (the object is known to have changed), even when
        a read is under way (it may have been answered before the change)."""
        self._values.pop(namespace, None)
        self._pending.pop(namespace, None)
        self._forgotten[namespace] = self._forgotten.get(namespace, 0) + 1

    async def _fetch(self, namespace: str) -> T:
        started, epoch = self._clock(), self._forgotten.get(namespace, 0)
        value = await self._read(namespace)
        if self._forgotten.get(namespace, 0) == epoch:
            self._values[namespace] = (started, value)
        return value

    def _done(self, namespace: str, task: asyncio.Task[T]) -> None:
        if self._pending.get(namespace) is task:
            del self._pending[namespace]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone
