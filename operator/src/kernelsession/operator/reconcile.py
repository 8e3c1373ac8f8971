"""One reconcile pass of a session: children, lab probe, culling, status.

Level-based and idempotent: it reads the desired state from the session and the
observed state from kopf's indexes (watch-fed) and the lab's API, fixes what differs,
and writes status only when the rendered status differs from the stored one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, cast

import kopf
import structlog

from kernelsession.operator import builders, culling, labapi, metrics, naming
from kernelsession.operator import status as st
from kernelsession.operator.kube import ChildRejected
from kernelsession.operator.podview import PodView, read_pod
from kernelsession.operator.runtime import Key, Runtime, TokenRecord

log = structlog.get_logger("kernelsession.operator")

RESUME_HINT = (
    " To start it again: kubectl annotate ks/{name} -n {ns} "
    f'{naming.RESUME_ANNOTATION}="$(date +%s)" --overwrite'
)


def event(body: Mapping[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
    kind = "Warning" if warning else "Normal"
    kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message)


# A child this process created is not created again until the watch shows it (the watch
# lags under load), or this many seconds passed (it was deleted before it was seen).
CREATE_MEMORY = 60.0
# Cached tokens are re-read this many cull intervals apart (the operator may not watch
# Secrets), at once when the lab refuses the token, and when a pod is to be created
# (then a token read less than FRESH_TOKEN_AGE seconds ago will do).
TOKEN_RECHECK_INTERVALS = 10
FRESH_TOKEN_AGE = 30.0


async def _token(rt: Runtime, body: Mapping[str, Any], key: Key, *, fresh: bool) -> TokenRecord:
    """The session's token, creating its Secret when missing.

    Read from the API when not cached, or when the cache is older than
    ``FRESH_TOKEN_AGE`` (``fresh``) or ``TOKEN_RECHECK_INTERVALS`` cull intervals.

    Raises:
        kopf.PermanentError: a Secret of that name exists but belongs to something else.
    """
    cached = rt.tokens.get(key)
    max_age = FRESH_TOKEN_AGE if fresh else TOKEN_RECHECK_INTERVALS * rt.settings.cull_interval
    if cached and time.monotonic() - cached.checked < max_age:
        return cached
    ns, name = key
    secret_name = naming.token_secret_name(name)
    found = await rt.kube.read_token(ns, secret_name)
    if found is None:
        created = await rt.kube.create(builders.token_secret(body, builders.new_token()))
        if created:
            event(body, "TokenCreated", f"Created token Secret {secret_name}")
        found = await rt.kube.read_token(ns, secret_name)
        if found is None:
            raise kopf.TemporaryError("token Secret not readable yet", delay=1)
    uid, token, labels = found
    if labels.get(naming.SESSION_LABEL) != name or not token:
        raise kopf.PermanentError(
            f"Secret {secret_name} exists but is not this session's token Secret"
        )
    record = TokenRecord(uid=uid, token=token, checked=time.monotonic())
    rt.tokens[key] = record
    return record


async def _create_child(rt: Runtime, key: Key, manifest: dict[str, Any]) -> bool:
    """Create a child unless this process just did; True when it was created now.

    Raises:
        ChildRejected: the API server refused it.
    """
    name = manifest["metadata"]["name"]
    if rt.recently_created(key, name, CREATE_MEMORY):
        return False
    created = await rt.kube.create(manifest)
    rt.note_created(key, name)
    if created:
        log.info("child created", kind=manifest["kind"], name=name, session=key[1])
    return created


async def reconcile(
    rt: Runtime,
    body: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    has_service: bool,
    has_policy: bool,
) -> float:
    """Run one pass for ``body``; returns seconds until the next pass is due."""
    cfg = rt.settings
    meta = body["metadata"]
    spec = body.get("spec") or {}
    current: Mapping[str, Any] = body.get("status") or {}
    ns, name = meta["namespace"], meta["name"]
    key: Key = (ns, name)
    generation = int(meta.get("generation") or 1)
    now = st.now_utc()
    pods = list(pods)
    log_ = log.bind(namespace=ns, session=name, user=spec.get("user"))

    if meta.get("deletionTimestamp"):
        verdict = st.Verdict(st.TERMINATING, "Deleting", "The session is being deleted.")
        await _write(rt, body, current, verdict, now, generation, None, None, None)
        return cfg.cull_interval

    resume = (meta.get("annotations") or {}).get(naming.RESUME_ANNOTATION)
    resume_asked = resume is not None and resume != current.get("resumeRequest")
    spec_changed = current.get("observedGeneration") not in (None, generation)
    sticky = current.get("reason") in st.STICKY_REASONS
    if sticky and not (resume_asked or spec_changed):
        for pod in pods:
            if not (pod.get("metadata") or {}).get("deletionTimestamp"):
                await rt.kube.delete_pod(ns, pod["metadata"]["name"])
        metrics.SESSIONS.phases[key] = current.get("phase", st.FAILED)
        return cfg.cull_interval
    if resume_asked or (sticky and spec_changed):
        rt.warned.discard(key)
        if resume_asked:
            event(body, "Resumed", "Starting the lab again on request.")

    live_pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    token = await _token(rt, body, key, fresh=not live_pods)
    for seen in [p["metadata"]["name"] for p in pods] + [
        *([naming.service_name(name)] if has_service else []),
        *([naming.network_policy_name(name)] if has_policy else []),
    ]:
        rt.seen(key, seen)
    if not has_service:
        await _create_child(rt, key, builders.service(body, cfg))
    if not has_policy:
        await _create_child(rt, key, builders.network_policy(body, cfg))

    try:
        desired = builders.lab_pod(body, cfg, token.uid)
    except KeyError as exc:  # schema guarantees user; defensive
        raise kopf.PermanentError(f"spec is missing {exc}") from None
    desired_name = desired["metadata"]["name"]
    mine = [p for p in pods if p["metadata"]["name"] == desired_name]
    stale = [p for p in pods if p["metadata"]["name"] != desired_name]
    for pod in stale:
        if not pod["metadata"].get("deletionTimestamp"):
            log_.info("deleting outdated lab pod", pod=pod["metadata"]["name"])
            await rt.kube.delete_pod(ns, pod["metadata"]["name"])
    pod_view: PodView | None = read_pod(mine[0]) if mine else None
    if pod_view is None:
        try:
            created = await _create_child(rt, key, desired)
        except ChildRejected as exc:
            verdict = st.pod_rejected(exc.message)
            await _write(rt, body, current, verdict, now, generation, None, token, None)
            return cfg.cull_interval
        if created:
            event(body, "Created", f"Created lab pod {desired_name}")

    pod_ip = pod_view.pod_ip if pod_view else None
    url = builders.lab_url(body, cfg, pod_ip)
    # The operator probes the pod itself (the NetworkPolicy admits it); clients use ``url``.
    probe_url = f"http://{pod_ip}:{cfg.lab_port}/" if pod_ip else None
    probe_ok, probe_error = False, None
    activity: labapi.LabActivity | None = None
    if pod_view and probe_url and pod_view.running and not pod_view.deleting:
        try:
            activity = await labapi.activity(rt.http, probe_url, token.token)
            probe_ok = True
        except labapi.LabUnreachable as exc:
            probe_error = str(exc)
            if exc.token_refused:
                rt.tokens.pop(key, None)  # re-read the Secret on the next pass

    start_timeout = int(spec.get("startTimeoutSeconds") or cfg.default_start_timeout)
    verdict = st.judge(
        pod_view,
        image=spec.get("image") or cfg.default_image,
        probe_ok=probe_ok,
        probe_error=probe_error,
        now=now,
        start_timeout=start_timeout,
        rolling=bool(stale),
    )
    last_activity = None
    culled_time = None
    if verdict.ready and activity is not None and pod_view is not None:
        latest = activity.latest()
        last_activity = st.fmt_time(latest) if latest else None
        culled = await _cull_if_due(rt, body, key, spec, activity, pod_view, now)
        if culled is not None:
            verdict, culled_time, pod_view = culled, st.fmt_time(now), None
    if verdict.phase == st.FAILED and verdict.reason == "StartTimeout" and pod_view:
        await rt.kube.delete_pod(ns, pod_view.name)
        pod_view = None
    await _write(
        rt,
        body,
        current,
        verdict,
        now,
        generation,
        pod_view,
        token,
        url,
        last_activity=last_activity,
        culled_time=culled_time,
        resume_request=resume if resume_asked else None,
    )
    settled = verdict.ready or verdict.phase == st.CULLED
    return cfg.cull_interval if settled else cfg.starting_interval


async def _cull_if_due(
    rt: Runtime,
    body: Mapping[str, Any],
    key: Key,
    spec: Mapping[str, Any],
    activity: labapi.LabActivity,
    pod_view: PodView,
    now: datetime,
) -> st.Verdict | None:
    """Warn about, or cull, a Ready lab per its limits; the Culled verdict when culled."""
    cfg = rt.settings
    idle_timeout, max_age = culling.limits(spec, cfg)
    decision = culling.decide(
        activity,
        idle_timeout=idle_timeout,
        max_age=max_age,
        started=st.parse_time(pod_view.created),
        now=now,
        warning=cfg.cull_warning,
        cull_connected=cfg.cull_connected,
    )
    if decision.action == "keep":
        rt.warned.discard(key)
        return None
    if decision.action == "warn":
        if key not in rt.warned:
            rt.warned.add(key)
            event(body, "CullingSoon", decision.message)
        return None
    ns, name = key
    message = decision.message + RESUME_HINT.format(name=name, ns=ns)
    log.info("culling lab", namespace=ns, session=name, reason=decision.reason, pod=pod_view.name)
    event(body, "Culled", message)
    await rt.kube.delete_pod(ns, pod_view.name)
    metrics.CULLS.labels(decision.reason).inc()
    return st.Verdict(st.CULLED, decision.reason, message)


async def _write(
    rt: Runtime,
    body: Mapping[str, Any],
    current: Mapping[str, Any],
    verdict: st.Verdict,
    now: datetime,
    generation: int,
    pod_view: PodView | None,
    token: TokenRecord | None,
    url: str | None,
    *,
    last_activity: str | None = None,
    culled_time: str | None = None,
    resume_request: str | None = None,
) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    desired = st.render(
        current,
        verdict,
        now=now,
        generation=generation,
        url=url if pod_view or verdict.phase not in (st.CULLED, st.FAILED) else None,
        token_secret_name=naming.token_secret_name(meta["name"]) if token else None,
        pod=pod_view,
        last_activity=last_activity,
        culled_time=culled_time,
        resume_request=resume_request,
    )
    metrics.SESSIONS.phases[key] = verdict.phase
    patch = st.status_patch(current, desired)
    if patch is None:
        return
    updated = await rt.kube.patch_status(meta["namespace"], meta["name"], patch)
    if updated is not None:
        rt.remember(key, updated)
    metrics.STATUS_WRITES.inc()
    old_phase = current.get("phase")
    if old_phase != verdict.phase or current.get("reason") != verdict.reason:
        log.info(
            "phase changed",
            namespace=meta["namespace"],
            session=meta["name"],
            phase=verdict.phase,
            reason=verdict.reason,
            previous=old_phase,
        )
        if verdict.ready and pod_view is not None:
            started = st.parse_time(pod_view.created)
            seconds = (now - started).total_seconds() if started else 0.0
            metrics.SPAWN_SECONDS.observe(seconds)
            event(body, "Ready", f"The lab answers its API ({seconds:.1f}s after pod creation)")
        elif verdict.phase == st.FAILED or verdict.reason == "LabRestarting":
            event(body, verdict.reason, verdict.message, warning=True)
