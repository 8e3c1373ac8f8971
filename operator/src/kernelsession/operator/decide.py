"""Decide: from an :class:`~observe.Observation` to the actions to take, the status to
render and when to look again. Pure: no I/O, no clock, no randomness; unit-tested over a
table of situations (tests/unit/test_operator_decide.py).

The order of a session's life: deleting -> Terminating; ``spec.suspend`` -> Suspended
(pod deleted, everything else kept); sticky Culled/StartTimeout until resumed or the spec
changes; refused spec -> Failed/InvalidSpec; token, Service, NetworkPolicy and home volume
ensured; the home volume bound (or its class binding on first consumer); then the lab pod,
judged by :func:`status.judge`, culled by :func:`culling.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelsession.operator import builders, culling, naming, refusals
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Action,
    Create,
    CreateToken,
    Decision,
    Delete,
    DeletePod,
    Emit,
    Patch,
    RecordSpawn,
    WriteStatus,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.errors import PermanentError
from kernelsession.operator.observe import ChildView, Observation, resume_asked, spec_changed
from kernelsession.operator.podview import PodView
from kernelsession.operator.quotas import QUOTA_EXCEEDED, quota_message, quota_refusal

RESUME_HINT = (
    " To start it again: kubectl annotate ks/{name} -n {ns} "
    f'{naming.RESUME_ANNOTATION}="$(date +%s)" --overwrite'
)
UNSUSPEND_HINT = (
    " To start it again: kubectl patch ks/{name} -n {ns} --type merge "
    """-p '{{"spec":{{"suspend":false}}}}'"""
)


def decide(obs: Observation, cfg: Settings) -> Decision:
    """What to do about the observed session. Raises PermanentError when the spec lacks
    what the schema guarantees (never expected)."""
    meta = obs.body["metadata"]
    spec, current = obs.spec, obs.status
    live = [p for p in obs.pods if not p.deleting]
    delete_live: list[Action] = [DeletePod(p.name) for p in live]
    token_name = naming.token_secret_name(obs.name) if obs.token_uid else None

    if meta.get("deletionTimestamp"):
        verdict = st.Verdict(st.TERMINATING, "Deleting", "The session is being deleted.")
        return _finish(obs, [], verdict, requeue=cfg.cull_interval, token_name=None)

    if spec.get("suspend"):
        message = "The lab is stopped (spec.suspend is true); " + (
            "its token, Service and home volume are kept."
            if spec.get("home") is not None
            else "its token and Service are kept (files outside a spec.home volume are not)."
        )
        verdict = st.Verdict(
            st.SUSPENDED,
            "Suspended",
            message + UNSUSPEND_HINT.format(name=obs.name, ns=obs.namespace),
        )
        events: list[Action] = []
        if current.get("phase") != st.SUSPENDED:
            events.append(Emit("Suspended", "Stopped the lab (spec.suspend is true)."))
        token_name = naming.token_secret_name(obs.name) if current.get("tokenSecretName") else None
        return _finish(
            obs,
            delete_live,
            verdict,
            events=events,
            requeue=cfg.cull_interval,
            token_name=token_name,
        )

    asked = resume_asked(obs.body)
    changed = spec_changed(obs.body)
    sticky = current.get("reason") in st.STICKY_REASONS
    if sticky and not (asked or changed):
        return Decision(
            tuple(delete_live),
            phase=str(current.get("phase") or st.FAILED),
            requeue_after=cfg.cull_interval,
            warned=obs.warned,
        )
    warned = obs.warned and not (asked or (sticky and changed))
    events = []
    if asked:
        events.append(Emit("Resumed", "Starting the lab again on request."))
    elif current.get("phase") == st.SUSPENDED:
        events.append(Emit("Resumed", "Starting the lab again (spec.suspend is false)."))
    resume = (meta.get("annotations") or {}).get(naming.RESUME_ANNOTATION) if asked else None

    problems = refusals.refusals(spec)
    if problems:
        verdict = st.Verdict(
            st.FAILED, "InvalidSpec", "The spec cannot be run: " + "; ".join(problems) + "."
        )
        return _finish(
            obs,
            delete_live,
            verdict,
            events=events,
            requeue=cfg.cull_interval,
            token_name=token_name,
            resume=resume,
        )

    creates: list[Action] = []
    if not obs.has_service:
        creates.append(Create(builders.service(obs.body, cfg)))
    creates.extend(_kept(obs.policy, builders.network_policy(obs.body, cfg)))
    creates.extend(_kept(obs.ingress, builders.ingress(obs.body, cfg), kind="Ingress"))
    claim = builders.home_claim(obs.body)
    if claim is not None and obs.claim is None:
        creates.append(Create(claim))
    if obs.token_uid is None:
        # The pod's name depends on the Secret's uid: create it, then look again at once.
        return Decision(
            (CreateToken(), *creates),
            phase=str(current.get("phase") or st.PENDING),
            requeue_after=0.0,
            warned=warned,
        )

    home_verdict, home_unbound, home_gate = _home(obs, claim)
    if home_verdict is not None:
        return _finish(
            obs,
            creates,
            home_verdict,
            events=events,
            requeue=cfg.cull_interval,
            token_name=token_name,
            resume=resume,
        )

    try:
        desired = builders.lab_pod(obs.body, cfg, obs.token_uid)
    except KeyError as exc:  # the schema requires spec.user; defensive
        raise PermanentError(f"spec is missing {exc}") from None
    desired_name = desired["metadata"]["name"]
    mine = next((p for p in obs.pods if p.name == desired_name), None)
    stale = [p for p in obs.pods if p.name != desired_name]
    actions: list[Action] = [*creates, *(DeletePod(p.name) for p in stale if not p.deleting)]

    if mine is None:
        if desired_name in obs.rejected:
            verdict = st.pod_rejected(obs.rejected[desired_name])
            return _finish(
                obs,
                actions,
                verdict,
                events=events,
                requeue=cfg.cull_interval,
                token_name=token_name,
                resume=resume,
            )
        if home_gate:
            verdict = st.Verdict(st.PENDING, "HomePending", home_unbound or "")
            return _finish(
                obs,
                actions,
                verdict,
                events=events,
                requeue=cfg.home_interval,
                token_name=token_name,
                resume=resume,
            )
        actions.append(Create(desired))

    start_timeout = int(spec.get("startTimeoutSeconds") or cfg.default_start_timeout)
    verdict = st.judge(
        mine,
        image=spec.get("image") or cfg.default_image,
        probe_ok=obs.activity is not None,
        probe_error=obs.probe_error,
        now=obs.now,
        start_timeout=start_timeout,
        rolling=bool(stale),
        unschedulable_grace=cfg.unschedulable_grace,
        home_unbound=home_unbound,
    )
    pod: PodView | None = mine
    last_activity = culled_time = None
    if verdict.ready and obs.activity is not None and mine is not None:
        latest = obs.activity.latest()
        last_activity = st.fmt_time(latest) if latest else None
        idle_timeout, max_age = culling.limits(spec, cfg)
        cull = culling.decide(
            obs.activity,
            idle_timeout=idle_timeout,
            max_age=max_age,
            started=st.parse_time(mine.created),
            now=obs.now,
            warning=cfg.cull_warning,
            cull_connected=cfg.cull_connected,
        )
        if cull.action == "keep":
            warned = False
        elif cull.action == "warn":
            if not warned:
                events.append(Emit("CullingSoon", cull.message))
            warned = True
        else:
            message = cull.message + RESUME_HINT.format(name=obs.name, ns=obs.namespace)
            actions.append(DeletePod(mine.name, cull_reason=cull.reason))
            events.append(Emit("Culled", message))
            verdict = st.Verdict(st.CULLED, cull.reason, message)
            culled_time, pod = st.fmt_time(obs.now), None
    if verdict.phase == st.FAILED and verdict.reason == "StartTimeout" and mine is not None:
        actions.append(DeletePod(mine.name))
        pod = None
    settled = verdict.ready or verdict.phase == st.CULLED
    if settled:
        requeue = cfg.cull_interval
    elif verdict.reason == "HomePending":
        requeue = cfg.home_interval
    else:
        requeue = cfg.starting_interval
    return _finish(
        obs,
        actions,
        verdict,
        events=events,
        requeue=requeue,
        token_name=token_name,
        pod=pod,
        url=builders.lab_url(obs.body, cfg, pod.pod_ip if pod else None),
        external_url=builders.external_url(obs.body, cfg),
        last_activity=last_activity,
        culled_time=culled_time,
        resume=resume,
        warned=warned,
    )


def _kept(
    found: ChildView | None, desired: Mapping[str, Any] | None, *, kind: str = ""
) -> list[Action]:
    """Create a child that is missing, patch one out of shape, delete one not wanted."""
    if desired is None:
        return [Delete(kind, found.name)] if found is not None else []
    if found is None:
        return [Create(desired)]
    patch = builders.child_patch(desired, found.spec, found.annotations, found.resource_version)
    return [Patch(str(desired["kind"]), found.name, patch)] if patch is not None else []


def _home(
    obs: Observation, claim: Mapping[str, Any] | None
) -> tuple[st.Verdict | None, str | None, bool]:
    """(a verdict that stops here, why the volume is not bound, whether to wait for it
    before creating the pod)."""
    if claim is None:
        return None, None, False
    name = claim["metadata"]["name"]
    if name in obs.rejected and quota_refusal(obs.rejected[name]) is not None:
        refusal = quota_refusal(obs.rejected[name])
        assert refusal is not None
        message = quota_message(f"home volume {name}", refusal)
        return st.Verdict(st.PENDING, QUOTA_EXCEEDED, message), None, False
    if name in obs.rejected:
        return (
            st.Verdict(
                st.FAILED,
                "HomeUnavailable",
                f"The API server refused the home volume {name}: "
                f"{obs.rejected[name].rstrip('.')}. Check spec.home.",
            ),
            None,
            False,
        )
    if obs.claim is None:
        return None, f"Creating the home volume {name}.", True
    if obs.claim.phase == "Bound":
        return None, None, False
    if obs.claim.phase == "Lost":
        return (
            st.Verdict(
                st.FAILED,
                "HomeUnavailable",
                f"The home volume {name} lost its PersistentVolume. "
                "Ask the cluster administrator (kubectl describe pvc).",
            ),
            None,
            False,
        )
    home = obs.home
    class_name = obs.claim.storage_class
    if home is not None and class_name and not home.class_exists:
        return (
            st.Verdict(
                st.FAILED,
                "HomeUnavailable",
                f"The storage class {class_name!r} of the home volume does not exist. "
                "Check spec.home.storageClassName (kubectl get storageclass).",
            ),
            None,
            False,
        )
    where = f"storage class {class_name!r}" if class_name else "no storage class"
    event = f"; {home.event.rstrip('.')}" if home is not None and home.event else ""
    message = (
        f"Waiting for the home volume {name} to be bound ({obs.claim.phase}, {where}{event}). "
        f"See kubectl describe pvc/{name} -n {obs.namespace}."
    )
    first_consumer = home is not None and home.binding_mode == "WaitForFirstConsumer"
    return None, message, not first_consumer


def _finish(
    obs: Observation,
    actions: list[Action],
    verdict: st.Verdict,
    *,
    requeue: float,
    token_name: str | None,
    events: list[Action] | None = None,
    pod: PodView | None = None,
    url: str | None = None,
    external_url: str | None = None,
    last_activity: str | None = None,
    culled_time: str | None = None,
    resume: str | None = None,
    warned: bool = False,
) -> Decision:
    """Render the status for ``verdict``; add its write and the phase-change events."""
    current = obs.status
    generation = int(obs.body["metadata"].get("generation") or 1)
    reachable = pod is not None or verdict.phase not in (st.CULLED, st.FAILED, st.SUSPENDED)
    desired = st.render(
        current,
        verdict,
        now=obs.now,
        generation=generation,
        url=url if reachable else None,
        external_url=external_url if reachable else None,
        token_secret_name=token_name,
        pod=pod,
        last_activity=last_activity,
        culled_time=culled_time,
        resume_request=resume,
    )
    result = [*actions]
    patch = st.status_patch(current, desired)
    if patch is not None:
        previous = current.get("phase")
        result.append(WriteStatus(patch, verdict.phase, verdict.reason, previous))
        if previous != verdict.phase or current.get("reason") != verdict.reason:
            if verdict.ready and pod is not None:
                started = st.parse_time(pod.created)
                seconds = (obs.now - started).total_seconds() if started else 0.0
                result.append(RecordSpawn(seconds))
                result.append(
                    Emit("Ready", f"The lab answers its API ({seconds:.1f}s after pod creation)")
                )
            elif verdict.phase == st.FAILED or verdict.reason == "LabRestarting":
                result.append(Emit(verdict.reason, verdict.message, warning=True))
    result.extend(events or [])
    return Decision(
        tuple(result), phase=verdict.phase, requeue_after=requeue, warned=warned, status=desired
    )
