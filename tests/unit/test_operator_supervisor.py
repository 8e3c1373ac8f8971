"""Session loops: passes are bounded across sessions; a failing pass never ends a loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kernelsession.operator import metrics, reconcile, supervisor
from kernelsession.operator.config import Settings
from kernelsession.operator.errors import SessionGone
from kernelsession.operator.passslots import PassSlots
from kernelsession.operator.runtime import Indexes, Runtime
from kernelsession.operator.state import SessionState


def runtime(bound: int) -> Runtime:
    rt = Runtime(
        settings=Settings(starting_interval=0.01),
        kube=cast(Any, None),
        http=cast(Any, None),
        passes=PassSlots(bound),
    )
    rt.indexes = Indexes(
        pods={}, services={}, policies={}, claims={}, ingresses={}, token_readers={}
    )
    return rt


def state(name: str) -> SessionState:
    return SessionState(("labs", name), {"metadata": {"name": name, "namespace": "labs"}})


async def test_passes_are_bounded_across_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    running = peak = 0

    async def fake(*_: Any, **__: Any) -> float:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return 1.0

    monkeypatch.setattr(reconcile, "reconcile", fake)
    rt = runtime(bound=3)
    await asyncio.gather(*(supervisor.one_pass(rt, state(f"s{i}")) for i in range(12)))
    assert peak == 3


async def test_a_failing_pass_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0

    async def flaky(*_: Any, **__: Any) -> float:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("API unavailable")
        return 60.0

    monkeypatch.setattr(reconcile, "reconcile", flaky)
    monkeypatch.setattr(supervisor, "MAX_BACKOFF", 0.01)
    rt = runtime(bound=1)
    s = state("a")
    task = asyncio.create_task(supervisor.session_loop(rt, s))
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    assert calls == 3
    assert not task.done()  # still looking after the session
    task.cancel()


async def test_a_session_found_gone_is_forgotten_and_its_loop_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def gone(*_: Any, **__: Any) -> float:
        raise SessionGone("labs/a")

    monkeypatch.setattr(reconcile, "reconcile", gone)
    rt = runtime(bound=1)
    s = rt.sessions.remember(("labs", "a"), {"metadata": {"name": "a", "namespace": "labs"}})
    await asyncio.wait_for(supervisor.session_loop(rt, s), timeout=5)
    assert rt.sessions.get(("labs", "a")) is None


def passes_by_cause() -> dict[str, float]:
    return {
        sample.labels["cause"]: sample.value
        for family in metrics.PASSES.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    }


async def test_each_pass_is_counted_by_what_began_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """First pass, an immediate follow-up, a wake by a child's kind (the first cause
    kept when several come before the pass), and the look-again time."""
    returns = [0.0, 30.0, 0.05, 30.0]
    passes = asyncio.Queue[int]()

    async def fake(*_: Any, **__: Any) -> float:
        passes.put_nowait(len(returns))
        return returns.pop(0) if returns else 30.0

    monkeypatch.setattr(reconcile, "reconcile", fake)
    before = passes_by_cause()
    rt = runtime(bound=1)
    s = rt.sessions.remember(("labs", "a"), {"metadata": {"name": "a", "namespace": "labs"}})
    task = asyncio.create_task(supervisor.session_loop(rt, s))
    try:
        for _ in range(2):  # first, then again (it returned 0)
            await asyncio.wait_for(passes.get(), timeout=5)
        s.wake_for("Pod")
        s.wake_for("Service")
        await asyncio.wait_for(passes.get(), timeout=5)  # woken: Pod
        await asyncio.wait_for(passes.get(), timeout=5)  # 0.05 s later: timer
    finally:
        task.cancel()
    after = passes_by_cause()
    grown = {c: after[c] - before.get(c, 0.0) for c in after if after[c] != before.get(c, 0.0)}
    assert grown == {"first": 1, "again": 1, "Pod": 1, "timer": 1}


def test_sessions_in_a_namespace() -> None:
    rt = runtime(bound=1)
    for ns, name in (("labs", "a"), ("lab-x", "b"), ("labs", "c")):
        rt.sessions.remember((ns, name), {"metadata": {"name": name, "namespace": ns}})
    assert sorted(s.key for s in rt.sessions.in_namespace("labs")) == [
        ("labs", "a"),
        ("labs", "c"),
    ]


async def test_the_first_pass_is_remembered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``acting_age`` counts from the first pass that held a slot, not from a read of it."""
    ages: list[float] = []

    async def fake(_: Any, s: SessionState, *__: Any) -> float:
        ages.append(s.acting_age())
        return 1.0

    monkeypatch.setattr(reconcile, "reconcile", fake)
    rt = runtime(bound=1)
    s = state("a")
    assert s.acting_age() == 0.0
    assert s.first_pass is None  # reading it starts nothing
    await supervisor.one_pass(rt, s)
    first = s.first_pass
    assert first is not None
    await asyncio.sleep(0.02)
    await supervisor.one_pass(rt, s)
    assert s.first_pass == first
    assert ages[0] < 0.01 <= ages[1]
