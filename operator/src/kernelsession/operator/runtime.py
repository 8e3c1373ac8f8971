"""Process-wide state of a running operator: settings, API clients, per-session wake-ups."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx

from kernelsession.operator.config import Settings
from kernelsession.operator.kube import Kube

Key = tuple[str, str]


@dataclass
class TokenRecord:
    uid: str
    token: str
    checked: float

    def __repr__(self) -> str:  # never print the token
        return f"TokenRecord(uid={self.uid!r}, checked={self.checked})"


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    http: httpx.AsyncClient
    wakeups: dict[Key, asyncio.Event] = field(default_factory=dict)
    tokens: dict[Key, TokenRecord] = field(default_factory=dict)
    created: dict[tuple[Key, str], float] = field(default_factory=dict)
    """Children this process created, by (session, name): the watch may lag behind."""
    warned: set[Key] = field(default_factory=set)
    bodies: dict[Key, dict[str, Any]] = field(default_factory=dict)
    loops: dict[Key, asyncio.Task[None]] = field(default_factory=dict)

    def remember(self, key: Key, body: dict[str, Any]) -> None:
        """Cache the newest known state of a session (events and our own writes race)."""
        old = self.bodies.get(key)
        if old is None or _version(body) >= _version(old):
            self.bodies[key] = body

    def recently_created(self, key: Key, name: str, within: float) -> bool:
        """Whether this process created child ``name`` less than ``within`` seconds ago."""
        when = self.created.get((key, name))
        return when is not None and time.monotonic() - when < within

    def note_created(self, key: Key, name: str) -> None:
        self.created[(key, name)] = time.monotonic()

    def seen(self, key: Key, name: str) -> None:
        """The watch shows child ``name``: stop remembering that we created it."""
        self.created.pop((key, name), None)

    def has_loop(self, key: Key) -> bool:
        task = self.loops.get(key)
        return task is not None and not task.done()

    def start_loop(self, key: Key, coro: Coroutine[Any, Any, None]) -> None:
        self.loops[key] = asyncio.get_running_loop().create_task(coro, name=f"session {key}")

    def stop_loop(self, key: Key) -> None:
        task = self.loops.pop(key, None)
        if task is not None:
            task.cancel()
        self.bodies.pop(key, None)
        self.forget(key)

    def wake_event(self, key: Key) -> asyncio.Event:
        return self.wakeups.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        event = self.wakeups.get(key)
        if event is not None:
            event.set()

    def forget(self, key: Key) -> None:
        self.wakeups.pop(key, None)
        self.tokens.pop(key, None)
        for created in [c for c in self.created if c[0] == key]:
            del self.created[created]
        self.warned.discard(key)

    async def close(self) -> None:
        tasks = list(self.loops.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loops.clear()
        await self.http.aclose()
        await self.kube.close()


def _version(body: dict[str, Any]) -> int:
    """resourceVersion as a number: one etcd's revisions only grow (-1 when opaque)."""
    try:
        return int(body.get("metadata", {}).get("resourceVersion", -1))
    except (TypeError, ValueError):
        return -1


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    global _current
    _current = runtime


def current() -> Runtime:
    if _current is None:
        raise RuntimeError("the operator runtime is not started")
    return _current


def clear() -> None:
    global _current
    _current = None
