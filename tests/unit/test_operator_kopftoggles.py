"""kopf's operator-wide indexed toggles (``kopftoggles``), on kopf's own ``ToggleSet``:
waiters are woken when the set's state changes, not on every toggle made or dropped, and
none is missed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kopf._cogs.aiokits.aiotoggles import ToggleSet

from kernelsession.operator import kopftoggles


@pytest.fixture
def patched() -> Iterator[None]:
    before = (ToggleSet.make_toggle, ToggleSet.drop_toggle, ToggleSet.drop_toggles)
    had_mark = kopftoggles._MARK in vars(ToggleSet)
    assert kopftoggles.install()
    try:
        yield
    finally:
        (  # type: ignore[method-assign]
            ToggleSet.make_toggle,
            ToggleSet.drop_toggle,
            ToggleSet.drop_toggles,
        ) = before
        if not had_mark:
            delattr(ToggleSet, kopftoggles._MARK)


def _count_wakeups(indexed: ToggleSet) -> list[int]:
    """Count, from now on, the waiters each ``notify_all`` of ``indexed`` wakes; the list
    holds one entry per call."""
    notify_all = indexed._condition.notify_all
    woken: list[int] = []

    def counting() -> None:
        woken.append(len(indexed._condition._waiters))  # type: ignore[attr-defined]
        notify_all()

    indexed._condition.notify_all = counting  # type: ignore[method-assign]
    return woken


async def _workers_like_kopf(waiters: int) -> tuple[int, list[bool]]:
    """``waiters`` per-object workers as kopf runs them while one watcher has not listed:
    each drops the watcher's toggle (already dropped for all but the first) and waits for
    the set; then the last watcher lists. How many wake-ups, and whether all got through."""
    indexed = ToggleSet(all)
    listing = await indexed.make_toggle(False, name="a watcher still listing")
    dropped = await indexed.make_toggle(False, name="a watcher that listed")
    wakeups = _count_wakeups(indexed)
    through: list[bool] = []

    async def worker() -> None:
        await indexed.drop_toggle(dropped)
        await indexed.wait_for(True)
        through.append(True)

    tasks = [asyncio.create_task(worker()) for _ in range(waiters)]
    for _ in range(5):
        await asyncio.sleep(0)  # let every worker reach its wait
    assert not through  # the listing watcher holds them all
    await listing.turn_to(True)  # it listed: every worker goes on
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return sum(wakeups), through


async def test_every_worker_gets_through_once_the_last_watcher_listed(patched: None) -> None:
    wakeups, through = await _workers_like_kopf(200)
    assert through == [True] * 200
    assert wakeups == 200  # once each, when the last watcher listed; drops wake nobody


async def test_kopf_unpatched_wakes_every_waiter_on_every_drop() -> None:
    assert ToggleSet.drop_toggle.__module__ == "kopf._cogs.aiokits.aiotoggles"  # kopf's own
    wakeups, through = await _workers_like_kopf(200)
    assert through == [True] * 200
    assert wakeups > 200 * 50  # quadratic: the reason for the patch


async def test_dropping_the_last_toggle_that_holds_the_set_wakes_its_waiters(
    patched: None,
) -> None:
    indexed = ToggleSet(all)
    holder = await indexed.make_toggle(False, name="not yet listed")
    got: list[Any] = []

    async def waiter() -> None:
        await indexed.wait_for(True)
        got.append(True)

    tasks = [asyncio.create_task(waiter()) for _ in range(3)]
    await asyncio.sleep(0)
    await indexed.drop_toggles([holder])  # the set turns on: wake-up
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert got == [True, True, True]
    assert holder not in indexed
    await indexed.drop_toggle(holder)  # gone already: nothing happens


async def _listing_like_kopf(waiters: int, objects: int) -> tuple[int, list[bool]]:
    """A watcher's first listing as kopf runs it on a cold start: ``waiters`` workers wait
    for the set while the watcher makes a toggle for each of ``objects`` new objects; then
    every object is indexed (its toggle dropped). How many wake-ups, and whether all
    workers got through."""
    indexed = ToggleSet(all)
    holder = await indexed.make_toggle(False, name="a watcher still listing")
    wakeups = _count_wakeups(indexed)
    through: list[bool] = []

    async def worker() -> None:
        await indexed.wait_for(True)
        through.append(True)

    tasks = [asyncio.create_task(worker()) for _ in range(waiters)]
    await asyncio.sleep(0)
    toggles = [await indexed.make_toggle(name=f"object {i}") for i in range(objects)]
    assert not through
    assert not indexed.is_on()
    await indexed.drop_toggles([*toggles, holder])  # all indexed: the set turns on
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return sum(wakeups), through


async def test_making_a_toggle_wakes_no_one_when_the_set_stays_off(patched: None) -> None:
    wakeups, through = await _listing_like_kopf(waiters=200, objects=300)
    assert through == [True] * 200
    assert wakeups == 200  # once each, when the set turned on


async def test_kopf_unpatched_wakes_every_waiter_for_every_toggle_made() -> None:
    assert ToggleSet.make_toggle.__module__ == "kopf._cogs.aiokits.aiotoggles"  # kopf's own
    wakeups, through = await _listing_like_kopf(waiters=200, objects=300)
    assert through == [True] * 200
    assert wakeups >= 200 * 300  # waiters x objects: the reason for the patch


async def test_a_toggle_made_on_turns_an_any_set_on_and_wakes_its_waiters(
    patched: None,
) -> None:
    paused = ToggleSet(any)  # kopf's operator_paused: on while any toggle is on
    got: list[bool] = []

    async def waiter() -> None:
        await paused.wait_for(True)
        got.append(True)

    tasks = [asyncio.create_task(waiter()) for _ in range(3)]
    await asyncio.sleep(0)
    await paused.make_toggle(False, name="off: nothing changes")
    await asyncio.sleep(0)
    assert not got
    toggle = await paused.make_toggle(True, name="on: the set turns on")
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert got == [True, True, True]
    assert toggle in paused
    assert toggle.is_on()
