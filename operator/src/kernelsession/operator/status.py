"""Pure status computation: from what the operator observed to the session's status.

``judge`` turns observations (pod, lab probe, clock) into a phase with a reason and a
message a user can act on; ``render`` turns that into the ``status`` object, keeping
``lastTransitionTime`` stable while the Ready condition does not change, so an
unchanged world renders an identical status and costs no write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kernelsession.client.resources import Phase, Reason
from kernelsession.operator.podview import (
    CONFIG_REASONS,
    CRASH_REASONS,
    IMAGE_REASONS,
    RUN_REASONS,
    PodView,
    config_error_is_transient,
)
from kernelsession.operator.quotas import QUOTA_EXCEEDED, quota_message, quota_refusal

# The phases (kernelsession.client.resources.Phase), by their short names.
PENDING, STARTING, READY = Phase.PENDING, Phase.STARTING, Phase.READY
FAILED, CULLED, SUSPENDED, TERMINATING = (
    Phase.FAILED,
    Phase.CULLED,
    Phase.SUSPENDED,
    Phase.TERMINATING,
)
PHASES = tuple(Phase)
# Phases that stay until the user changes the spec or asks to resume.
# A lab that exited with an error this many times and does not answer is crash-looping,
# also in the moments the kubelet has it running between back-offs.
CRASH_RESTARTS = 3
STICKY_REASONS = frozenset({Reason.START_TIMEOUT, Reason.IDLE_TIMEOUT, Reason.MAX_AGE})
PROGRESS_REASONS = frozenset({Reason.CREATING, Reason.POD_PENDING, Reason.LAB_STARTING})
"""The steps of a lab's normal start: nothing for its user to act on."""
TEMPLATE_CHANGED = "TemplateChanged"
OUTDATED_MESSAGE = (
    "The lab runs an older template (the operator was upgraded or its settings changed); "
    "the new one applies at its next start (a spec change, suspend and resume, or the "
    "resume annotation)."
)


@dataclass(frozen=True)
class Verdict:
    phase: str
    reason: str
    message: str

    @property
    def ready(self) -> bool:
        return self.phase == READY


def now_utc() -> datetime:
    return datetime.now(UTC)


def fmt_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def judge(
    pod: PodView | None,
    *,
    image: str,
    probe_ok: bool,
    probe_error: str | None,
    now: datetime,
    start_timeout: int,
    rolling: bool = False,
    unschedulable_grace: int = 0,
    home_unbound: str | None = None,
) -> Verdict:
    """Decide the phase of a session from its current pod and the lab probe.

    Failure reasons that a restart cannot fix are reported at once; anything else
    slower than ``start_timeout`` (counted from pod creation) is a StartTimeout. An
    unschedulable lab waits ``unschedulable_grace`` seconds for capacity first, and one
    whose home volume is not bound (``home_unbound`` says why) waits for the volume.
    """
    if pod is None:
        return Verdict(PENDING, Reason.CREATING, "Creating the lab pod.")
    if pod.deleting:
        return Verdict(PENDING, Reason.POD_TERMINATING, "Waiting for the previous lab pod to stop.")
    if pod.unschedulable:
        return _unschedulable(pod, pod.unschedulable, now, unschedulable_grace, home_unbound)
    reason = pod.waiting_reason
    detail = f": {pod.waiting_message.rstrip('.')}" if pod.waiting_message else ""
    if reason in IMAGE_REASONS:
        return Verdict(
            FAILED,
            Reason.IMAGE_PULL_FAILED,
            f"The lab image {image!r} cannot be pulled ({reason}){detail}. Check spec.image.",
        )
    created = parse_time(pod.created)
    overdue = created is not None and (now - created).total_seconds() > start_timeout
    # a kubelet catching up retries by itself (a missing Secret is then named): wait for
    # it, up to the start timeout
    if reason in CONFIG_REASONS and (overdue or not config_error_is_transient(pod.waiting_message)):
        names = f" ({', '.join(pod.env_refs)})" if pod.env_refs else ""
        return Verdict(
            FAILED,
            Reason.CONFIG_ERROR,
            f"The lab container cannot be configured{detail}. "
            f"Check that the Secrets and ConfigMaps named in spec.env exist{names}.",
        )
    if reason in RUN_REASONS:
        return Verdict(
            FAILED,
            Reason.CANNOT_RUN,
            f"The lab command cannot start ({reason}){detail}. "
            "Check that spec.image provides `jupyter server`.",
        )
    crashing = pod.restart_count >= CRASH_RESTARTS and not probe_ok and pod.last_exit_code
    if reason in CRASH_REASONS or crashing:
        code = pod.last_exit_code
        last = f"; last output: {pod.last_message.strip()[-300:]}" if pod.last_message else ""
        return Verdict(
            FAILED,
            Reason.CRASH_LOOP,
            f"The lab keeps exiting (restarts: {pod.restart_count}, last exit code: {code}){last}. "
            "Check spec.image, spec.env and spec.resources (memory limit).",
        )
    if pod.phase in ("Failed", "Succeeded"):
        return Verdict(
            FAILED,
            Reason.LAB_EXITED,
            f"The lab exited ({pod.terminated_reason or pod.phase}, "
            f"exit code {pod.terminated_exit_code}).",
        )
    if pod.ready and probe_ok:
        return Verdict(READY, Reason.LAB_READY, "")
    if overdue and not probe_ok and (pod.restart_count == 0 or not pod.running):
        return Verdict(
            FAILED,
            Reason.START_TIMEOUT,
            f"The lab did not answer its API within spec.startTimeoutSeconds "
            f"({start_timeout}s)"
            + (f"; last probe error: {probe_error}" if probe_error else "")
            + ". Check the lab's logs (kubectl logs) and spec.image.",
        )
    if rolling:
        return Verdict(STARTING, Reason.ROLLING, "Replacing the lab pod to apply the new spec.")
    if pod.phase == "Pending" or not pod.pod_ip:
        why = f" (the kubelet retries{detail})" if reason in CONFIG_REASONS else ""
        return Verdict(PENDING, Reason.POD_PENDING, f"Waiting for the lab pod to start{why}.")
    if pod.restart_count > 0 and not probe_ok:
        return Verdict(
            STARTING,
            Reason.LAB_RESTARTING,
            f"The lab stopped (restarts: {pod.restart_count}, last exit code: "
            f"{pod.last_exit_code}); waiting for it to answer again.",
        )
    msg = "Waiting for the lab to answer its API"
    return Verdict(
        STARTING, Reason.LAB_STARTING, msg + (f" ({probe_error})." if probe_error else ".")
    )


def _unschedulable(
    pod: PodView, why: str, now: datetime, grace: int, home_unbound: str | None
) -> Verdict:
    if home_unbound:
        return Verdict(PENDING, Reason.HOME_PENDING, home_unbound)
    asks = ", ".join(f"{k}={v}" for k, v in pod.requests)
    wanted = f" The lab requests {asks}." if asks else ""
    since = parse_time(pod.unschedulable_since) or parse_time(pod.created)
    waited = (now - since).total_seconds() if since else float(grace)
    if waited < grace:
        return Verdict(
            PENDING,
            Reason.WAITING_FOR_CAPACITY,
            f"No node can run the lab yet: {why.rstrip('.')}.{wanted} Waiting up to "
            f"{grace}s for capacity (a cluster autoscaler may add a node) before failing.",
        )
    waited_note = f" (waited {grace}s for capacity)" if grace else ""
    return Verdict(
        FAILED,
        Reason.UNSCHEDULABLE,
        f"No node can run the lab: {why.rstrip('.')}{waited_note}.{wanted} "
        "Check spec.nodeSelector, spec.tolerations and spec.resources.",
    )


# Where a pod-level rejection points in the session's spec (first match wins per field).
_POD_FIELD_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("spec.volumeMounts", re.compile(r"volumeMounts")),
    ("spec.volumes", re.compile(r'spec\.volumes|volume types?|\bvolume "')),
    ("spec.resources", re.compile(r"resources|\b(cpu|memory) (limit|request)")),
    ("spec.env", re.compile(r"\.env\b|\.env\[")),
    ("spec.nodeSelector", re.compile(r"nodeSelector")),
    ("spec.tolerations", re.compile(r"tolerations")),
    ("spec.podLabels", re.compile(r"metadata\.labels")),
)
_ALL_POD_FIELDS = "spec.resources, spec.volumes and spec.volumeMounts"


def pod_rejected(message: str) -> Verdict:
    """Failed/PodRejected for an API rejection of the lab pod, naming the session
    field(s) the rejection points at (all candidates when it cannot tell); a quota's
    refusal is Pending/QuotaExceeded instead (it passes when other labs stop)."""
    refusal = quota_refusal(message)
    if refusal is not None:
        return Verdict(PENDING, QUOTA_EXCEEDED, quota_message("lab pod", refusal))
    fields = [name for name, pattern in _POD_FIELD_HINTS if pattern.search(message)]
    where = " and ".join(fields) if fields else _ALL_POD_FIELDS
    return Verdict(
        FAILED,
        Reason.POD_REJECTED,
        f"The API server rejected the lab pod: {message.rstrip('.')}. Check {where}.",
    )


def _ready_condition(
    current: Mapping[str, Any], verdict: Verdict, now: datetime, generation: int
) -> dict[str, Any]:
    status = "True" if verdict.ready else "False"
    previous = next((c for c in current.get("conditions") or [] if c.get("type") == "Ready"), None)
    since = (
        previous.get("lastTransitionTime")
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else fmt_time(now)
    )
    return {
        "type": "Ready",
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message or "The lab answers its API with the token.",
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _up_to_date_condition(
    current: Mapping[str, Any], up_to_date: bool, now: datetime, generation: int
) -> dict[str, Any]:
    """``UpToDate``: False (``TemplateChanged``) while the lab runs an older template."""
    status = "True" if up_to_date else "False"
    previous = next(
        (c for c in current.get("conditions") or [] if c.get("type") == "UpToDate"), None
    )
    since = (
        previous.get("lastTransitionTime")
        if previous and previous.get("status") == status and previous.get("lastTransitionTime")
        else fmt_time(now)
    )
    return {
        "type": "UpToDate",
        "status": status,
        "reason": "TemplateCurrent" if up_to_date else TEMPLATE_CHANGED,
        "message": "The lab runs the operator's current template."
        if up_to_date
        else OUTDATED_MESSAGE,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _violation_condition(
    current: Mapping[str, Any], message: str | None, now: datetime, generation: int
) -> list[dict[str, Any]]:
    if message is None:
        return []
    previous = next(
        (c for c in current.get("conditions") or [] if c.get("type") == "PolicyViolation"), None
    )
    return [
        {
            "type": "PolicyViolation",
            "status": "True",
            "reason": "PolicyViolation",
            "message": message + " The lab keeps running; it will not start again so.",
            "lastTransitionTime": (previous or {}).get("lastTransitionTime") or fmt_time(now),
            "observedGeneration": generation,
        }
    ]


def render(
    current: Mapping[str, Any],
    verdict: Verdict,
    *,
    now: datetime,
    generation: int,
    url: str | None,
    token_secret_name: str | None,
    pod: PodView | None,
    external_url: str | None = None,
    last_activity: str | None = None,
    culled_time: str | None = None,
    resume_request: str | None = None,
    up_to_date: bool | None = None,
    policy_violation: str | None = None,
) -> dict[str, Any]:
    """The full ``status`` object for ``verdict``, stable when nothing changed.

    ``up_to_date``: whether the lab pod runs the current template (None: no pod).
    ``policy_violation``: why the running lab's spec breaks the namespace's rules now
    (condition PolicyViolation; the lab keeps running and is refused at its next start).
    """
    ready_time = current.get("readyTime")
    if verdict.ready and (not ready_time or current.get("podName") != (pod.name if pod else None)):
        ready_time = fmt_time(now)
    if pod is None and verdict.phase not in (CULLED, SUSPENDED):
        ready_time = None
    status: dict[str, Any] = {
        "phase": verdict.phase,
        "reason": verdict.reason,
        "message": verdict.message,
        "observedGeneration": generation,
        "conditions": [
            _ready_condition(current, verdict, now, generation),
            *(
                [_up_to_date_condition(current, up_to_date, now, generation)]
                if up_to_date is not None
                else []
            ),
            *_violation_condition(current, policy_violation, now, generation),
        ],
        "url": url,
        "externalURL": external_url,
        "tokenSecretName": token_secret_name,
        "podName": pod.name if pod else None,
        "startTime": pod.created if pod else current.get("startTime"),
        "readyTime": ready_time,
        "lastActivity": last_activity or current.get("lastActivity"),
        "restarts": pod.restart_count if pod else 0,
        "culledTime": culled_time,
        "resumeRequest": resume_request or current.get("resumeRequest"),
    }
    return {k: v for k, v in status.items() if v is not None}


def activity_to_write(
    written: str | None, latest: datetime | None, resolution: float
) -> str | None:
    """``status.lastActivity`` for a lab last active at ``latest`` (pure): the written
    value until the lab's activity is ``resolution`` seconds past it (or went back), so a
    lab in use costs a status write per ``resolution``, not per look."""
    if latest is None:
        return written
    before = parse_time(written)
    if before is not None and 0 <= (latest - before).total_seconds() < resolution:
        return written
    return fmt_time(latest)


def first_start(status: Mapping[str, Any]) -> bool:
    """Whether ``status`` is of a session whose first lab has not been Ready or had a
    pod named in status yet: the pod made now is its first (pure)."""
    return (
        not status.get("podName")
        and not status.get("readyTime")
        and status.get("phase") in (None, PENDING)
    )


def held_for(
    current: Mapping[str, Any],
    verdict: Verdict,
    generation: int,
    age: float | None,
    hold: float,
    created_age: float | None = None,
    acting_age: float | None = None,
) -> float | None:
    """Seconds the status write for ``verdict`` waits (None: written now).

    A progress step of a start (:data:`PROGRESS_REASONS`) waits until the status this
    process wrote last (``age`` seconds ago) is ``hold`` seconds old, and a new
    session's first status until the session is (``created_age``) and this process has
    been acting on it that long (``acting_age``: a session that queued for its first
    pass behind a burst of others does not get a `Pending` written just before its
    `Ready`): a lab that answers sooner costs one status write for its start, Ready. A
    new spec generation and every other reason are written at once, and so is a step
    whose age is not known.
    """
    if verdict.reason not in PROGRESS_REASONS:
        return None
    if not current.get("phase"):
        since = created_age
        if since is not None and acting_age is not None:
            since = min(since, acting_age)
    elif current.get("reason") in PROGRESS_REASONS and (
        current.get("observedGeneration") == generation
    ):
        since = age
    else:
        return None
    if since is None or since >= hold:
        return None
    return hold - max(since, 0.0)  # a clock ahead of this one never holds longer


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch taking ``current`` to ``desired`` (None when nothing differs)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if current.get(key) != value:
            patch[key] = value
    for key in current:
        if key not in desired and key != "kopf":
            patch[key] = None
    return patch or None
