"""NamespaceReads: one read per namespace serves every session's pass; reads at the same
moment are shared; a value too old for a pass, or forgotten, is read again; a failed read
keeps nothing. Pure asyncio (the reader is a coroutine counting its calls)."""

from __future__ import annotations

import asyncio

import pytest

from kernelsession.operator.nscache import NamespaceReads


class Reader:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def __call__(self, namespace: str) -> str:
        self.calls.append(namespace)
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("API server unavailable")
        return f"{namespace}#{len(self.calls)}"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_young_value_serves_every_pass_and_an_old_one_is_read_again() -> None:
    reader, clock = Reader(), Clock()
    reads = NamespaceReads(reader, clock=clock)
    assert await reads.get("labs", 30) == "labs#1"
    clock.now += 10
    assert [await reads.get("labs", 30) for _ in range(50)] == ["labs#1"] * 50
    assert await reads.get("labs", 5) == "labs#2"  # too old for this pass
    assert await reads.get("lab-carol", 30) == "lab-carol#3"  # per namespace
    assert reader.calls == ["labs", "labs", "lab-carol"]


async def test_passes_asking_at_once_share_one_read_and_survive_a_cancelled_one() -> None:
    reader = Reader()
    reader.gate.clear()
    reads = NamespaceReads(reader)
    waiters = [asyncio.create_task(reads.get("labs", 30)) for _ in range(20)]
    await asyncio.sleep(0)
    waiters[0].cancel()  # one pass cancelled (its replica stopped leading, say)
    reader.gate.set()
    results = await asyncio.gather(*waiters[1:])
    assert results == ["labs#1"] * 19
    assert reader.calls == ["labs"]


async def test_a_failed_read_keeps_nothing_and_raises_to_every_waiter() -> None:
    reader = Reader()
    reader.fail = True
    reads = NamespaceReads(reader)
    with pytest.raises(RuntimeError, match="unavailable"):
        await reads.get("labs", 30)
    reader.fail = False
    assert await reads.get("labs", 30) == "labs#2"


async def test_forgetting_reads_again_even_when_a_read_was_under_way() -> None:
    reader = Reader()
    reads = NamespaceReads(reader)
    assert await reads.get("labs", 30) == "labs#1"
    reads.forget("labs")  # the ConfigMap's watch event: it changed
    assert await reads.get("labs", 30) == "labs#2"
    reader.gate.clear()
    early = asyncio.create_task(reads.get("labs", 0))  # a read answered before a change
    while len(reader.calls) < 3:  # under way: its request is out
        await asyncio.sleep(0)
    reads.forget("labs")
    reader.gate.set()
    assert await early == "labs#3"
    assert await reads.get("labs", 30) == "labs#4"  # the early answer was not kept
