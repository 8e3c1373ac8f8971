"""PassSlots: the bound on passes at once, handed out oldest session first."""

from __future__ import annotations

import asyncio

import pytest

from kernelsession.operator.passslots import PassSlots, priority


def body(created: str, name: str, ns: str = "labs") -> dict[str, object]:
    return {"metadata": {"creationTimestamp": created, "name": name, "namespace": ns}}


def test_priority_orders_by_creation_then_namespace_and_name() -> None:
    keys = [
        priority(body("2026-12-06T10:00:05Z", "b")),
        priority(body("2026-12-06T10:00:05Z", "a")),
        priority(body("2026-12-06T09:59:59Z", "z")),
        priority(body("2026-12-06T10:00:05Z", "a", ns="alpha")),
    ]
    assert [k[2] for k in sorted(keys)] == ["z", "a", "a", "b"]
    assert sorted(keys)[1][1] == "alpha"


async def test_a_freed_slot_goes_to_the_oldest_waiter_not_the_first() -> None:
    slots = PassSlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with slots.slot(priority(body("2026-12-06T10:00:00Z", "holder"))):
            await release.wait()

    async def want(name: str, created: str) -> None:
        async with slots.slot(priority(body(created, name))):
            order.append(name)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert slots.held == 1
    waiters = [
        asyncio.create_task(want("newest", "2026-12-06T10:00:30Z")),
        asyncio.create_task(want("oldest", "2026-12-06T10:00:10Z")),
        asyncio.create_task(want("middle", "2026-12-06T10:00:20Z")),
    ]
    while slots.waiting < 3:
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, *waiters)
    assert order == ["oldest", "middle", "newest"]
    assert slots.held == 0
    assert slots.waiting == 0


async def test_no_more_than_size_hold_at_once() -> None:
    slots = PassSlots(3)
    running = peak = 0

    async def work(i: int) -> None:
        nonlocal running, peak
        async with slots.slot(priority(body(f"2026-12-06T10:00:{i:02d}Z", str(i)))):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            running -= 1

    await asyncio.gather(*(work(i) for i in range(20)))
    assert peak == 3
    assert slots.held == 0


async def test_a_waiter_cancelled_while_waiting_takes_no_slot() -> None:
    slots = PassSlots(1)
    release = asyncio.Event()
    got: list[str] = []

    async def hold() -> None:
        async with slots.slot(("", "", "holder")):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    gone = asyncio.create_task(_want_with(slots, ("a", "", "gone"), got))
    later = asyncio.create_task(_want_with(slots, ("b", "", "later"), got))
    while slots.waiting < 2:
        await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert slots.waiting == 1
    release.set()
    await asyncio.gather(holder, later)
    assert got == ["later"]
    assert slots.held == 0
    assert slots.waiting == 0


async def _want_with(slots: PassSlots, prio: tuple[str, str, str], got: list[str]) -> None:
    async with slots.slot(prio):
        got.append(prio[2])


async def test_a_waiter_cancelled_as_its_slot_is_handed_over_passes_it_on() -> None:
    slots = PassSlots(1)
    got: list[str] = []
    release = asyncio.Event()
    waiters: list[asyncio.Task[None]] = []

    async def hold() -> None:
        async with slots.slot(("", "", "holder")):
            await release.wait()
        # the slot was just handed to "first", which has not run yet: cancel it now
        waiters[0].cancel()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiters.append(asyncio.create_task(_want_with(slots, ("a", "", "first"), got)))
    second = asyncio.create_task(_want_with(slots, ("b", "", "second"), got))
    while slots.waiting < 2:
        await asyncio.sleep(0)
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiters[0]
    await second
    assert got == ["second"]
    assert slots.held == 0
    assert slots.waiting == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PassSlots(0)
