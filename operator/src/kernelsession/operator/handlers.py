"""kopf handlers: settings at startup, watch-fed indexes, one loop per session.

Settings are parsed once (``__main__``) and arrive in kopf's memo; the startup handler
builds the :class:`~runtime.Runtime` into the memo and every handler takes it from there.
Each session gets one supervisor loop (:mod:`supervisor`) started from its first event
while this replica is active (it holds the Lease, or leader election is off); a standby
keeps its indexes and bodies warm and starts every loop when it takes over.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import kopf
import structlog

from kernelsession.operator import (
    health,
    kopfdiff,
    kopftoggles,
    kopfwatch,
    metrics,
    naming,
    profilecontroller,
    ratelimit,
    resync,
    supervisor,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.election import LeaderElector
from kernelsession.operator.kube import Kube
from kernelsession.operator.passslots import PassSlots
from kernelsession.operator.podview import read_pod
from kernelsession.operator.runtime import Indexes, Runtime

log = structlog.get_logger("kernelsession.operator")
CHILD_LABELS = {naming.MANAGED_BY: naming.MANAGER}


class RetryForever:
    """kopf's API error back-offs, never exhausted (re-iterable: each request starts over)."""

    def __iter__(self) -> Iterator[float]:
        yield from (1, 1, 2, 3, 5, 8, 13)
        while True:
            yield 30


def _runtime(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """All settings in one place; API clients, metrics and the election start here."""
    cfg: Settings = memo.settings
    kopfwatch.install()  # a namespace kopf cannot list never pauses every handler
    kopftoggles.install()  # a listing of thousands does not wake every worker per event
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    settings.persistence.diffbase_storage = kopfdiff.NoDiffBase()  # no changing handlers
    # Events are posted by the passes themselves (kube.post_event: fenced by the Lease,
    # with a deadline), never by kopf's background poster.
    settings.posting.enabled = False
    settings.posting.loggers = False
    # Namespace patterns (``labs,lab-*``: the LabProfile namespaces) need kopf to watch
    # namespaces (and CRDs); exact names need no scanning.
    settings.scanning.disabled = not any(
        "*" in ns or "?" in ns or "!" in ns for ns in cfg.namespaces
    )
    # A namespace matching a pattern before (or without) the operator's RoleBinding there
    # refuses kopf's watches (403): retry for ever rather than fail the watcher, which
    # would stop the operator.
    settings.networking.error_backoffs = RetryForever()
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30  # every kopf API request has a deadline
    settings.networking.connect_timeout = 10
    settings.batching.error_delays = [1, 2, 5, 10, 20, 30]
    kube = await Kube.connect(timeout=cfg.api_timeout, identity=cfg.leader_identity)
    ratelimit.limit(kube.api, ratelimit.TokenBucket(cfg.api_qps, cfg.api_burst), kube.check_fence)
    http = httpx.AsyncClient(timeout=cfg.probe_timeout, follow_redirects=False, trust_env=False)
    rt = Runtime(
        settings=cfg,
        kube=kube,
        http=http,
        passes=PassSlots(cfg.max_concurrent_passes),
    )
    memo.runtime = rt
    metrics.SESSIONS.source = rt.sessions.phases
    metrics.serve(cfg.metrics_port)
    rt.background.add(
        asyncio.get_running_loop().create_task(resync.resync_loop(rt), name="session resync")
    )
    if cfg.leader_election:
        elector = LeaderElector(kube, cfg, lambda: _activate(rt), lambda: _deactivate(rt))
        kube.fence = elector.may_act  # no write leaves this replica unless it leads
        memo.elector = elector
        task = asyncio.get_running_loop().create_task(elector.run(), name="leader election")
        rt.background.add(task)
    else:
        _activate(rt)
    live: health.Health | None = getattr(memo, "health", None)
    if live is not None:  # the liveness endpoint's record that this loop turns
        beats = health.heartbeat(live, lambda: (rt.active, len(rt.sessions)))
        rt.background.add(asyncio.get_running_loop().create_task(beats, name="heartbeat"))
    log.info(
        "operator started",
        namespaces=list(cfg.namespaces) or "*",
        url_mode=cfg.url_mode,
        default_image=cfg.default_image,
        leader_election=cfg.leader_election,
    )


def _activate(rt: Runtime) -> None:
    rt.active = True
    metrics.LEADER.set(1)
    supervisor.start_all(rt)
    profilecontroller.start_all(rt)


def _deactivate(rt: Runtime) -> None:
    rt.active = False
    metrics.LEADER.set(0)
    supervisor.stop_all(rt)
    profilecontroller.stop_all(rt)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop every session loop, give the Lease up, then close the API clients."""
    rt = _runtime(memo)
    elector: LeaderElector | None = getattr(memo, "elector", None)
    profilecontroller.stop_all(rt)
    await rt.stop_tasks()
    if elector is not None:
        await elector.release()
    await rt.close()


def _session_key(namespace: str | None, labels: Any) -> tuple[str, str] | None:
    session = labels.get(naming.SESSION_LABEL) if labels else None
    return (namespace, session) if namespace and session else None


@kopf.index("pods", labels=CHILD_LABELS)
async def lab_pods(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = _session_key(namespace, labels)
    return {key: read_pod(body)} if key else {}


@kopf.index("services", labels=CHILD_LABELS)
async def lab_services(
    namespace: str | None, labels: Mapping[str, str], name: str, **_: Any
) -> Any:
    key = _session_key(namespace, labels)
    return {key: name} if key else {}


def child_entry(body: kopf.Body) -> dict[str, Any]:
    """What a pass needs of a child kept in shape (``observe.ChildView``)."""
    meta = body.get("metadata") or {}
    return {
        "name": meta.get("name"),
        "spec": copy.deepcopy(dict(body.get("spec") or {})),
        "annotations": dict(meta.get("annotations") or {}),
        "resourceVersion": meta.get("resourceVersion"),
    }


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
async def lab_policies(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = _session_key(namespace, labels)
    return {key: child_entry(body)} if key else {}


@kopf.index("networking.k8s.io", "v1", "ingresses", labels=CHILD_LABELS)
async def lab_ingresses(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    key = _session_key(namespace, labels)
    return {key: child_entry(body)} if key else {}


@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=CHILD_LABELS)
async def token_readers(
    namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    """The users each session's token-reader RoleBinding names: a replica that takes over
    does not grant again, one by one, what is granted already."""
    key = _session_key(namespace, labels)
    if not key or labels.get(naming.COMPONENT_LABEL) != "token":
        return {}
    subjects = tuple(
        str(s.get("name")) for s in body.get("subjects") or [] if s.get("kind") == "User"
    )
    return {key: subjects}


@kopf.index("persistentvolumeclaims", labels=CHILD_LABELS)
async def lab_claims(
    namespace: str | None,
    labels: Mapping[str, str],
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    **_: Any,
) -> Any:
    key = _session_key(namespace, labels)
    claim = {
        "name": name,
        "phase": status.get("phase"),
        "class": spec.get("storageClassName"),
        "user": labels.get(naming.USER_LABEL),
        "owners": [str(o.get("uid")) for o in meta.get("ownerReferences") or []],
        "resourceVersion": meta.get("resourceVersion"),
    }
    return {key: claim} if key else {}


@kopf.on.event("pods", labels=CHILD_LABELS)
async def pod_changed(
    namespace: str | None,
    labels: Mapping[str, str],
    name: str,
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A lab pod changed or vanished: wake its session's loop if a pass would see it
    (not the echo of this process's own create)."""
    key = _session_key(namespace, labels)
    rt = _runtime(memo)
    if key and rt.pod_news.news(key, body, deleted=type == "DELETED"):
        _wake(rt, key, name, type, "Pod")


@kopf.on.event("services", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "ingresses", labels=CHILD_LABELS)
@kopf.on.event("persistentvolumeclaims", labels=CHILD_LABELS)
async def child_changed(
    namespace: str | None,
    labels: Mapping[str, str],
    name: str,
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """A child changed or vanished: wake its session's loop (not for the echo of this
    process's own create)."""
    key = _session_key(namespace, labels)
    if key:
        _wake(_runtime(memo), key, name, type, str(body.get("kind") or "child"))


def _wake(rt: Runtime, key: tuple[str, str], name: str, event: str | None, kind: str) -> None:
    state = rt.sessions.get(key)
    if state is not None and not state.own_echo(name, event):
        state.wake_for(kind)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def session_event(
    namespace: str | None,
    name: str | None,
    type: str | None,
    body: kopf.Body,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Every session event (including the initial listing) feeds its state and loop.

    No daemon and no finalizer: deleting a session never waits for the operator, and
    kopf writes nothing to the object. kopf passes the indexes above in ``kwargs``.
    """
    if not namespace or not name:
        return
    rt = _runtime(memo)
    key = (namespace, name)
    if type == "DELETED":
        rt.forget(key, (body.get("metadata") or {}).get("uid"))
        return
    if rt.indexes is None:
        rt.indexes = Indexes(
            kwargs["lab_pods"],
            kwargs["lab_services"],
            kwargs["lab_policies"],
            kwargs["lab_claims"],
            kwargs["lab_ingresses"],
            kwargs["token_readers"],
        )
    news = rt.sessions.is_news(key, dict(body))
    state = rt.sessions.remember(key, dict(body))
    if not state.running:
        supervisor.start(rt, state)
    elif news:  # not the echo of this operator's own status write: no pass for that
        state.wake_for(naming.KIND)
