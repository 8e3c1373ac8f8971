"""A watcher that cannot list must not stop every handler of the operator.

kopf holds every new per-object worker of the operator (all resources, all namespaces)
until each watcher of an indexed resource has listed once: its "indexed" toggle in the
operator-wide set, dropped only by that first listing (kopf 1.45,
``kopf._core.reactor.queueing.watcher``). With namespace patterns (``lab-*``) kopf
starts watchers in every matching namespace as it appears. One that never lists holds
the whole operator: a namespace someone made by hand under the pattern (the operator has
no RoleBinding there: every list is refused and retried for ever), or a LabProfile's
namespace deleted before the operator's RoleBinding there took effect for kopf's next
attempt (its watchers end without listing, and their toggles stay). Sessions elsewhere
then got no status for minutes (seen in the test suite: a profile created and deleted
within a second stalled every session in ``labs``).

:func:`install` wraps kopf's watcher so that its toggle is dropped when the watcher ends,
and at the latest ``LIST_GRACE`` seconds after it started: a namespace that cannot be
listed in that time is not indexed (its sessions, if any, are not served until it is),
and nothing else waits for it. Listing a namespace the operator may read takes well under
a second; the grace only bounds the pause a stray namespace causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

log = structlog.get_logger("kernelsession.operator")

LIST_GRACE = 10.0
"""Seconds a watcher may hold the operator-wide readiness before its first listing."""
_MARK = "__kernelsession_bounded__"


def bounded(
    watcher: Callable[..., Awaitable[None]], grace: float = LIST_GRACE
) -> Callable[..., Awaitable[None]]:
    """``watcher`` (kopf's), with its indexed toggle dropped when it ends or after
    ``grace`` seconds, whichever comes first."""

    async def wrapped(*args: Any, **kwargs: Any) -> None:
        indexed = kwargs.get("operator_indexed")
        toggle = kwargs.get("resource_indexed")
        if indexed is None or toggle is None:
            await watcher(*args, **kwargs)
            return

        async def release_late() -> None:
            await asyncio.sleep(grace)  # the grace itself: a deadline, not a wait for a state
            if toggle in indexed:
                log.warning(
                    "watcher has not listed; not holding the operator for it",
                    resource=str(kwargs.get("resource")),
                    namespace=kwargs.get("namespace"),
                    after_s=grace,
                )
            await indexed.drop_toggle(toggle)

        late = asyncio.get_running_loop().create_task(release_late())
        try:
            await watcher(*args, **kwargs)
        finally:
            late.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await late
            await asyncio.shield(indexed.drop_toggle(toggle))

    setattr(wrapped, _MARK, True)
    return wrapped


def install(grace: float = LIST_GRACE) -> bool:
    """Wrap kopf's watcher (once); False when this kopf has no such watcher (then
    nothing is changed and a warning says so)."""
    try:
        from kopf._core.reactor import queueing
    except ImportError:  # pragma: no cover - another kopf layout
        log.warning("kopf's reactor not found; a stray namespace may pause the operator")
        return False
    watcher = getattr(queueing, "watcher", None)
    if watcher is None or getattr(watcher, _MARK, False):
        if watcher is None:
            log.warning("kopf's watcher not found; a stray namespace may pause the operator")
        return watcher is not None
    params = inspect.signature(watcher).parameters
    if not {"operator_indexed", "resource_indexed"} <= set(params):
        log.warning("kopf's watcher has another signature; not wrapped")
        return False
    setattr(queueing, "watcher", bounded(watcher, grace))  # noqa: B010 - kopf's own name
    return True
