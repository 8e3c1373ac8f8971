"""kopf handlers: settings at startup, watch-fed indexes, one loop per session.

Each session gets one supervisor loop (an asyncio task started from its first event)
that runs :func:`reconcile.reconcile` whenever something relevant changes (the
session, or one of its pods, services or network policies) and otherwise on a timer:
fast while a lab starts, every cull interval once it is Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    settings.posting.enabled = True  # explicit kopf.event() calls only:
    settings.posting.loggers = False  # log records never become Events
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
    """Stop every session loop, then close the API clients."""
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
async def child_changed(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    """A child changed or vanished: wake its session's daemon."""
    key = _session_key(namespace, labels)
    if key:
        rt_mod.current().wake(key)


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def session_event(
    namespace: str | None, name: str | None, type: str | None, body: kopf.Body, **kwargs: Any
) -> None:
    """Every session event (including the initial listing) feeds its supervisor loop.

    No daemon and no finalizer: deleting a session never waits for the operator, and
    kopf writes nothing to the object. kopf passes the indexes above in ``kwargs``.
    """
    if not namespace or not name:
        return
    rt = rt_mod.current()
    key = (namespace, name)
    if type == "DELETED":
        rt.stop_loop(key)
        metrics.SESSIONS.phases.pop(key, None)
        return
    rt.remember(key, dict(body))
    if rt.has_loop(key):
        rt.wake(key)
        return
    indexes = (kwargs["lab_pods"], kwargs["lab_services"], kwargs["lab_policies"])
    rt.start_loop(key, session_loop(rt, key, *indexes))


async def session_loop(
    rt: Runtime,
    key: tuple[str, str],
    lab_pods: kopf.Index[Any, Any],
    lab_services: kopf.Index[Any, Any],
    lab_policies: kopf.Index[Any, Any],
) -> None:
    """Reconcile one session until it is deleted or the operator stops; never raises out.

    Runs a pass whenever something wakes it (the session or a child changed), else on
    the delay the pass returned (fast while starting, the cull interval once Ready).
    Failures back off exponentially up to a minute and are counted in metrics.
    """
    namespace, name = key
    wake = rt.wake_event(key)
    failures = 0
    while True:
        wake.clear()
        body = rt.bodies[key]
        try:
            delay = await reconcile.reconcile(
                rt,
                body,
                list(lab_pods.get(key, [])),
                key in lab_services,
                key in lab_policies,
            )
            failures = 0
        except asyncio.CancelledError:
            raise
        except kopf.PermanentError as exc:
            metrics.RECONCILE_ERRORS.labels("PermanentError").inc()
            log.error(
                "session cannot be reconciled", namespace=namespace, session=name, error=str(exc)
            )
            reconcile.event(body, "ReconcileFailed", str(exc), warning=True)
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
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=delay)
