"""When each session and plain pod was first seen and first Ready, from watches (the
operator bench's clock: monotonic times per name, and waiting on them)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch

from kernelsession.client import resources

LABS = resources.DEFAULT_NAMESPACE
SESSION_LABEL = resources.SESSION_LABEL
PLAIN_LABEL = "kernelsession-bench/plain"


@dataclass
class Times:
    """Monotonic times at which each thing was first seen (keyed by session or plain
    pod name)."""

    session_seen: dict[str, float] = field(default_factory=dict)
    session_ready: dict[str, float] = field(default_factory=dict)
    pod_seen: dict[str, float] = field(default_factory=dict)
    pod_ready: dict[str, float] = field(default_factory=dict)
    session_culled: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            for d in (
                self.session_seen,
                self.session_ready,
                self.pod_seen,
                self.pod_ready,
                self.session_culled,
            ):
                d.pop(name, None)


def _pod_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


async def watch_times(api: k8s.ApiClient, times: Times, kind: str, namespace: str = LABS) -> None:
    core = k8s.CoreV1Api(api)
    custom = k8s.CustomObjectsApi(api)
    while True:
        w = watch.Watch()
        if kind == "pods":
            stream = w.stream(core.list_namespaced_pod, namespace, timeout_seconds=3600)
        else:
            stream = w.stream(
                custom.list_namespaced_custom_object,
                resources.GROUP,
                resources.VERSION,
                namespace,
                resources.PLURAL,
                timeout_seconds=3600,
            )
        async for event in stream:
            now = time.monotonic()
            obj = event["object"]
            if event["type"] == "DELETED":
                continue
            if kind == "pods":
                labels = obj.metadata.labels or {}
                key = labels.get(SESSION_LABEL) or labels.get(PLAIN_LABEL)
                if not key:
                    continue
                if obj.metadata.deletion_timestamp is not None:
                    continue  # a pod on its way out (its last updates), not a new one
                times.pod_seen.setdefault(key, now)
                if _pod_ready(obj):
                    times.pod_ready.setdefault(key, now)
            else:
                name = obj["metadata"]["name"]
                times.session_seen.setdefault(name, now)
                phase = resources.parse_status(obj).phase_enum
                if phase is resources.Phase.READY:
                    times.session_ready.setdefault(name, now)
                elif phase is resources.Phase.CULLED:
                    times.session_culled.setdefault(name, now)
            times.changed.set()


async def until(times: Times, check: Any, deadline: float) -> bool:
    while not check():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        times.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(times.changed.wait(), timeout=min(remaining, 5))
    return True
