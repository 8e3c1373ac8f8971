"""A typed reading of a lab pod's status: what the operator needs to judge it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kernelsession.operator.naming import SPEC_HASH_LABEL

# Waiting reasons that mean the lab cannot start without a change by the user.
IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_REASONS = frozenset({"CreateContainerConfigError"})
# CreateContainerConfigError messages of a kubelet that has not caught up yet (its Secret
# and ConfigMap caches not synced, the Services not listed since it started, e.g. right
# after a node or API server restart): the kubelet retries by itself, so these wait
# (bounded by spec.startTimeoutSeconds) instead of failing the session.
TRANSIENT_CONFIG_MESSAGES = ("failed to sync", "have not yet been read")


def config_error_is_transient(message: str | None) -> bool:
    """Whether a CreateContainerConfigError's message is the kubelet catching up."""
    return any(part in (message or "") for part in TRANSIENT_CONFIG_MESSAGES)


RUN_REASONS = frozenset({"RunContainerError", "ContainerCannotRun", "CreateContainerError"})
CRASH_REASONS = frozenset({"CrashLoopBackOff"})
BASE_URL_ARG = "--ServerApp.base_url="


@dataclass(frozen=True, slots=True)
class PodView:
    name: str
    phase: str
    created: str | None
    pod_ip: str | None
    ready: bool
    deleting: bool
    restart_count: int
    waiting_reason: str | None
    waiting_message: str | None
    running: bool
    terminated_reason: str | None
    terminated_exit_code: int | None
    last_exit_code: int | None
    last_message: str | None
    unschedulable: str | None
    unschedulable_since: str | None = None
    """When the scheduler first said so (the PodScheduled condition's transition time)."""
    requests: tuple[tuple[str, str], ...] = ()
    """The lab container's resource requests, e.g. (("cpu", "4"), ("memory", "8Gi"))."""
    claims: tuple[str, ...] = ()
    """PersistentVolumeClaims the pod mounts."""
    env_refs: tuple[str, ...] = ()
    """The Secrets and ConfigMaps the user's env names (not the token), e.g. ("Secret db",)."""
    spec_hash: str | None = None
    """The session spec digest the pod was built from (None: a pod of an older operator)."""
    base_path: str = "/"
    """The lab's base_url as the pod was started (its ``--ServerApp.base_url``)."""


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            result: Mapping[str, Any] = cond
            return result
    return None


def read_pod(pod: Mapping[str, Any]) -> PodView:
    """Summarise a pod manifest (as served by the API) for status computation."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    cs: Mapping[str, Any] = statuses[0] if statuses else {}
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or {}
    last_terminated = (cs.get("lastState") or {}).get("terminated") or {}
    ready_cond = _condition(status, "Ready")
    sched = _condition(status, "PodScheduled")
    unschedulable = unschedulable_since = None
    if sched and sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        unschedulable = str(sched.get("message") or "no node matches the pod")
        unschedulable_since = sched.get("lastTransitionTime") or meta.get("creationTimestamp")
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or [{}]
    requests = ((containers[0].get("resources") or {}).get("requests")) or {}
    claims = tuple(
        str(v["persistentVolumeClaim"]["claimName"])
        for v in spec.get("volumes") or []
        if (v.get("persistentVolumeClaim") or {}).get("claimName")
    )
    refs: list[str] = []
    for env in containers[0].get("env") or []:
        if env.get("name") == "JUPYTER_TOKEN":  # the operator's own token Secret
            continue
        source = env.get("valueFrom") or {}
        for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
            if (source.get(key) or {}).get("name"):
                refs.append(f"{kind} {source[key]['name']}")
    for env_from in containers[0].get("envFrom") or []:
        for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
            if (env_from.get(key) or {}).get("name"):
                refs.append(f"{kind} {env_from[key]['name']}")
    base = "/"
    for arg in containers[0].get("args") or []:
        if isinstance(arg, str) and arg.startswith(BASE_URL_ARG):
            base = arg[len(BASE_URL_ARG) :] or "/"
    labels = meta.get("labels") or {}
    return PodView(
        name=str(meta.get("name", "")),
        phase=str(status.get("phase") or "Pending"),
        created=meta.get("creationTimestamp"),
        pod_ip=status.get("podIP") or None,
        ready=bool(ready_cond and ready_cond.get("status") == "True"),
        deleting=bool(meta.get("deletionTimestamp")),
        restart_count=int(cs.get("restartCount") or 0),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        running="running" in state,
        terminated_reason=terminated.get("reason"),
        terminated_exit_code=terminated.get("exitCode"),
        last_exit_code=last_terminated.get("exitCode"),
        last_message=last_terminated.get("message") or terminated.get("message"),
        unschedulable=unschedulable,
        unschedulable_since=unschedulable_since,
        requests=tuple(sorted((str(k), str(v)) for k, v in requests.items())),
        claims=claims,
        env_refs=tuple(dict.fromkeys(refs)),
        spec_hash=labels.get(SPEC_HASH_LABEL),
        base_path=base,
    )


class PodNews:
    """The last view of each lab pod this replica woke its session for: a pod event that
    leaves the view as it was (the scheduler's binding, the kubelet's bookkeeping of
    conditions and times) changes nothing a pass reads, so it wakes nobody."""

    def __init__(self) -> None:
        self._views: dict[tuple[str, str], dict[str, PodView]] = {}

    def news(self, session: tuple[str, str], pod: Mapping[str, Any], deleted: bool) -> bool:
        """Whether this event of ``pod`` (a lab pod of ``session``) tells a pass anything."""
        name = str((pod.get("metadata") or {}).get("name", ""))
        views = self._views.get(session, {})
        if deleted:
            views.pop(name, None)
            if not views:
                self._views.pop(session, None)
            return True
        view = read_pod(pod)
        if views.get(name) == view:
            return False
        self._views.setdefault(session, {})[name] = view
        return True

    def forget(self, session: tuple[str, str]) -> None:
        """The session is gone: its pods' last views too (a missed DELETED leaks nothing)."""
        self._views.pop(session, None)

    def __len__(self) -> int:
        return sum(len(views) for views in self._views.values())
