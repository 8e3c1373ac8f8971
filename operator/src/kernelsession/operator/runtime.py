"""The running operator's parts, built once at startup and passed in (kopf memo)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from kernelsession.operator import policy
from kernelsession.operator.config import Settings
from kernelsession.operator.kube import Kube
from kernelsession.operator.nscache import NamespaceReads
from kernelsession.operator.passslots import PassSlots
from kernelsession.operator.podview import PodNews
from kernelsession.operator.state import Sessions


@dataclass
class Indexes:
    """kopf's watch-fed indexes of children, by session key (live views)."""

    pods: Any
    services: Any
    policies: Any
    claims: Any
    ingresses: Any
    token_readers: Any


@dataclass
class Runtime:
    settings: Settings
    kube: Kube
    http: httpx.AsyncClient
    passes: PassSlots
    """Bounds the passes running at once (API calls and lab probes), oldest session first."""
    sessions: Sessions = field(default_factory=Sessions)
    indexes: Indexes | None = None
    active: bool = False
    """Whether this replica acts (it holds the Lease, or leader election is off)."""
    background: set[asyncio.Task[None]] = field(default_factory=set)
    profiles: Any = None
    """The LabProfile controller's state (``profilecontroller.Profiles``), made on first use."""
    pod_news: PodNews = field(default_factory=PodNews)
    """Which lab pod events change what a pass reads (the others wake no session)."""
    sweep_next: float = 0.0
    """When (monotonic) the next settled session's first pass is due (``supervisor``)."""
    rules: NamespaceReads[dict[str, str] | None] = field(init=False)
    """The namespaces' policy ConfigMaps (``data``; None: none), one read per namespace."""

    def __post_init__(self) -> None:
        kube = self.kube
        self.rules = NamespaceReads(lambda ns: kube.read_policy(ns, policy.CONFIGMAP))

    def forget(self, key: tuple[str, str], uid: str | None = None) -> None:
        """The session is gone: forget it (only the one with ``uid``, when given) and the
        last views of its pods."""
        self.sessions.pop(key, uid)
        self.pod_news.forget(key)

    async def stop_tasks(self) -> None:
        """Cancel every session loop and background task, and wait for them to end."""
        self.active = False
        tasks = [s.task for s in self.sessions if s.task is not None]
        tasks += list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self.sessions:
            state.task = None
        self.background.clear()

    async def close(self) -> None:
        await self.stop_tasks()
        await self.http.aclose()
        await self.kube.close()
