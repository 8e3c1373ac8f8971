"""Session loops: passes are bounded across sessions; a failing pass never ends a loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from kernelsession.operator import reconcile, supervisor
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
