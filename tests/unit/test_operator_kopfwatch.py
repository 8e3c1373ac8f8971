"""kopfwatch: a kopf watcher that never lists does not hold the operator-wide readiness
past its grace, nor after it ends; one that lists is left alone. Driven with kopf's own
toggles (the real ToggleSet the reactor uses) and stand-in watchers."""

from __future__ import annotations

import asyncio
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._core.reactor import queueing

from kernelsession.operator import kopfwatch


async def _ready_within(indexed: aiotoggles.ToggleSet, seconds: float) -> bool:
    try:
        await asyncio.wait_for(indexed.wait_for(True), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def test_a_watcher_that_never_lists_releases_the_operator_after_its_grace() -> None:
    indexed = aiotoggles.ToggleSet(all)
    toggle = await indexed.make_toggle(name="pods@lab-stray")
    refused = asyncio.Event()

    async def never_lists(**_: Any) -> None:  # every list refused, retried for ever
        refused.set()
        await asyncio.Event().wait()

    watcher = asyncio.create_task(
        kopfwatch.bounded(never_lists, grace=0.2)(
            operator_indexed=indexed, resource_indexed=toggle, namespace="lab-stray"
        )
    )
    await refused.wait()
    assert not await _ready_within(indexed, 0.05)  # held at first, as kopf means it
    assert await _ready_within(indexed, 2.0)  # then released
    assert not watcher.done()  # the watcher itself goes on retrying
    watcher.cancel()


async def test_a_watcher_that_ends_without_listing_releases_at_once() -> None:
    indexed = aiotoggles.ToggleSet(all)
    toggle = await indexed.make_toggle(name="pods@lab-gone")

    async def namespace_deleted(**_: Any) -> None:
        raise asyncio.CancelledError  # kopf stops the watchers of a deleted namespace

    task = asyncio.create_task(
        kopfwatch.bounded(namespace_deleted, grace=60)(
            operator_indexed=indexed, resource_indexed=toggle
        )
    )
    await asyncio.gather(task, return_exceptions=True)
    assert await _ready_within(indexed, 1.0)


async def test_a_watcher_that_lists_is_untouched_and_other_watchers_still_count() -> None:
    indexed = aiotoggles.ToggleSet(all)
    mine = await indexed.make_toggle(name="pods@labs")
    other = await indexed.make_toggle(name="services@labs")  # not listed yet
    listed = asyncio.Event()

    async def lists(*, operator_indexed: Any, resource_indexed: Any, **_: Any) -> None:
        await operator_indexed.drop_toggle(resource_indexed)  # what kopf does on LISTED
        listed.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(
        kopfwatch.bounded(lists, grace=60)(operator_indexed=indexed, resource_indexed=mine)
    )
    await listed.wait()
    assert mine not in indexed
    assert not await _ready_within(indexed, 0.05)  # the other watcher still holds it
    await indexed.drop_toggle(other)
    assert await _ready_within(indexed, 1.0)
    task.cancel()


def test_install_wraps_kopfs_watcher_once() -> None:
    original = queueing.watcher
    try:
        assert kopfwatch.install()
        wrapped = queueing.watcher
        assert wrapped is not original
        assert kopfwatch.install()  # idempotent
        assert queueing.watcher is wrapped
    finally:
        queueing.watcher = original  # type: ignore[assignment]
