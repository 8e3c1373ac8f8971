"""kopf handlers: settings at startup, watch-fed indexes, one daemon per session.

The daemon runs :func:`reconcile.reconcile` whenever something relevant changes (the
session, or one of its pods, services or network policies) and otherwise on a timer:
fast while a lab starts, every cull interval once it is Ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import kopf
import structlog
from kernelsession.operator import config, metrics, naming, reconcile
from kernelsession.operator import runtime as rt_mod
from kernelsession.operator.kube import Kube
from kernelsession.operator.runtime import Runtime

log = structlog.get_logger("kernelsession.operator")
CHILD_LABELS = {naming.MANAGED_BY: naming.MANAGER}
MAX_BACKOFF = 60.0


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """All settings in one place; API clients and the metrics server start here."""
    cfg = config.from_env()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # explicit events only, no log spam as events
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 2, 5, 10, 20, 30]
    kube = await Kube.connect()
    http = httpx.AsyncClient(timeout=cfg.probe_timeout, follow_redirects=False, trust_env=False)
    rt_mod.install(Runtime(settings=cfg, kube=kube, http=http))
    metrics.serve(cfg.metrics_port)
    log.info(
        "operator started",
        namespaces=list(cfg.namespaces) or "*",
        url_mode=cfg.url_mode,
        default_image=cfg.default_image,
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await rt_mod.current().close()
    rt_mod.clear()


@kopf.on.probe(id="sessions")
def sessions_probe(**_: Any) -> int:
    """Liveness detail: how many sessions the operator is looking after."""
    return len(metrics.SESSIONS.phases)


def _session_key(namespace: str | None, labels: Any) -> tuple[str, str] | None:
    session = labels.get(naming.SESSION_LABEL) if labels else None
    return (namespace, session) if namespace and session else None


@kopf.index("pods", labels=CHILD_LABELS)
def lab_pods(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    key = _session_key(namespace, labels)
    return {key: dict(body)} if key else {}


@kopf.index("services", labels=CHILD_LABELS)
def lab_services(namespace: str | None, labels: Mapping[str, str], name: str, **_: Any) -> Any:
    key = _session_key(namespace, labels)
    return {key: name} if key else {}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
def lab_policies(namespace: str | None, labels: Mapping[str, str], name: str, **_: Any) -> Any:
    key = _session_key(namespace, labels)
    return {key: name} if key else {}


@kopf.on.event("pods", labels=CHILD_LABELS)
@kopf.on.event("services", labels=CHILD_LABELS)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS)
def child_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A child changed or vanished: wake its session's daemon."""
    key = _session_key(namespace, labels)
    if key:
        rt_mod.current().wake(key)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
def session_changed(namespace: str | None, name: str | None, type: str | None, **_: Any) -> None:
    if namespace and name:
        rt_mod.current().wake((namespace, name))
        if type == "DELETED":
            metrics.SESSIONS.phases.pop((namespace, name), None)


async def _pause(stopped: kopf.DaemonStopped, wake: asyncio.Event, delay: float) -> None:
    """Sleep until ``delay`` passes, the daemon is stopped, or something wakes it."""
    waiters = [
        asyncio.ensure_future(stopped.wait()),
        asyncio.ensure_future(wake.wait()),
    ]
    try:
        await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


@kopf.daemon(naming.GROUP, naming.VERSION, naming.PLURAL, cancellation_timeout=10.0)
async def session_daemon(
    stopped: kopf.DaemonStopped,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    **kwargs: Any,
) -> None:
    """Reconcile one session for as long as it exists; never raises out.

    kopf passes the indexes declared above by name in ``kwargs``.
    """
    lab_pods: kopf.Index[Any, Any] = kwargs["lab_pods"]
    lab_services: kopf.Index[Any, Any] = kwargs["lab_services"]
    lab_policies: kopf.Index[Any, Any] = kwargs["lab_policies"]
    rt = rt_mod.current()
    assert namespace is not None, "KernelSession is namespaced"
    key = (namespace, name)
    wake = rt.wake_event(key)
    failures = 0
    try:
        while not stopped:
            wake.clear()
            try:
                delay = await reconcile.reconcile(
                    rt,
                    body,
                    list(lab_pods.get(key, [])),
                    key in lab_services,
                    key in lab_policies,
                )
                failures = 0
            except kopf.PermanentError as exc:
                metrics.RECONCILE_ERRORS.labels("PermanentError").inc()
                log.error(
                    "session cannot be reconciled",
                    namespace=namespace,
                    session=name,
                    error=str(exc),
                )
                kopf.event(body, type="Warning", reason="ReconcileFailed", message=str(exc))
                delay = MAX_BACKOFF
            except Exception as exc:
                failures += 1
                metrics.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
                delay = min(MAX_BACKOFF, 0.5 * 2**failures)
                if isinstance(exc, kopf.TemporaryError) and exc.delay:
                    delay = min(delay, float(exc.delay))
                log.warning(
                    "reconcile failed; retrying",
                    namespace=namespace,
                    session=name,
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
            metrics.RECONCILES.inc()
            await _pause(stopped, wake, delay)
    finally:
        rt.forget(key)
