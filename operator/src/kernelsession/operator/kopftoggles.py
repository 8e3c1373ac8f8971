"""kopf's operator-wide "indexed" toggles wake every waiting worker only when their state
changes.

kopf (1.45, ``kopf._core.reactor.processing``) makes each per-object worker, for every
event, drop its watcher's "indexed" toggle from the operator-wide set and then wait until
every watcher has listed. ``ToggleSet.drop_toggle`` wakes every waiter of the set's
condition each time, even when the toggle was dropped long ago; each woken worker
re-checks the whole set. While a replica lists thousands of objects (a standby restarted
with 3,000 sessions: ~20,000 objects), thousands of workers wait at once and every new
event wakes them all: three quarters of that replica's CPU went to those wake-ups
(py-spy, ``docs/scale.md`` item 30), ~85 % of a core for ten minutes.

``make_toggle`` does the same for every object a watcher meets while the operator has not
listed everything yet (``kopf._core.reactor.queueing.watcher``: a toggle per object, so
that its worker can hold the operator until it is indexed): a replica starting cold with
3,000 sessions (an upgrade's new pods) spent its main thread in ``make_toggle``'s
``notify_all`` (py-spy) and made no decision for minutes (``docs/scale.md`` item 31).

:func:`install` makes ``make_toggle``, ``drop_toggle`` and ``drop_toggles`` wake the
waiters only when the set's state (``is_on``) changed. A waiter waits for a state of the
set or of one toggle; adding or dropping a toggle changes no other toggle's state, and no
one waits yet for a toggle being made, so it misses nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import structlog

try:
    from kopf._cogs.aiokits import aiotoggles
except ImportError:  # pragma: no cover - another kopf layout
    aiotoggles = None  # type: ignore[assignment]

log = structlog.get_logger("kernelsession.operator")
_MARK = "__kernelsession_quiet__"


def _change(toggles: Any, change: Callable[[set[Any]], None]) -> None:
    """Apply ``change`` to the set's toggles (its condition held by the caller) and wake
    the waiters only if the set's state changed."""
    before = toggles.is_on()
    change(toggles._toggles)
    if toggles.is_on() != before:
        toggles._condition.notify_all()


async def _make_toggle(self: Any, val: bool = False, /, *, name: str | None = None) -> Any:
    toggle = aiotoggles.Toggle(val, name=name, condition=self._condition)
    async with self._condition:
        _change(self, lambda toggles: toggles.add(toggle))
    return toggle


async def _drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        _change(self, lambda toggles: toggles.discard(toggle))


async def _drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
    async with self._condition:
        _change(self, lambda held: held.difference_update(toggles))


def install() -> bool:
    """Replace kopf's ``ToggleSet.make_toggle``/``drop_toggle``/``drop_toggles`` (once);
    False when this kopf has no such class (then nothing is changed and a warning says
    so)."""
    if aiotoggles is None:  # pragma: no cover - another kopf layout
        log.warning("kopf's ToggleSet not found; indexed toggles wake every worker")
        return False
    ToggleSet = aiotoggles.ToggleSet
    if getattr(ToggleSet, _MARK, False):
        return True
    names = ("make_toggle", "drop_toggle", "drop_toggles", "is_on")
    if not all(hasattr(ToggleSet, name) for name in names):
        log.warning("kopf's ToggleSet has another shape; not changed")
        return False
    ToggleSet.make_toggle = _make_toggle  # type: ignore[method-assign,assignment]
    ToggleSet.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    ToggleSet.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    setattr(ToggleSet, _MARK, True)
    return True
