"""Decide what a LabProfile needs (pure): the creates and repairs that put its namespace
in shape, what its deletion does, and its status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kernelsession.operator import profiles
from kernelsession.operator.config import Settings
from kernelsession.operator.status import fmt_time

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name); a Namespace's namespace is ``""``."""


@dataclass(frozen=True)
class Step:
    """``create`` (``manifest``), ``repair`` (merge ``patch`` of an existing object),
    ``replace`` (delete and create: a RoleBinding's roleRef cannot change) or ``delete``."""

    verb: str
    manifest: Mapping[str, Any]
    patch: Mapping[str, Any] | None = None

    @property
    def key(self) -> ObjectKey:
        meta = self.manifest["metadata"]
        return (self.manifest["kind"], meta.get("namespace", ""), meta["name"])


@dataclass(frozen=True)
class Plan:
    namespace: str
    steps: list[Step] = field(default_factory=list)
    ready: bool = True
    reason: str = "Ready"
    message: str = ""


def key_of(manifest: Mapping[str, Any]) -> ObjectKey:
    meta = manifest["metadata"]
    return (manifest["kind"], meta.get("namespace", ""), meta["name"])


def step_for(desired: Mapping[str, Any], existing: Mapping[str, Any] | None) -> Step | None:
    """The step taking ``existing`` (None: missing) to ``desired``; None when in shape."""
    if existing is None:
        return Step("create", desired)
    try:
        patch = profiles.repair(desired, existing)
    except ValueError:
        return Step("replace", desired)
    return Step("repair", desired, patch) if patch else None


def plan(
    profile: Mapping[str, Any],
    settings: Settings,
    existing: Mapping[ObjectKey, Mapping[str, Any]],
) -> Plan:
    """What to do for a live profile, given what exists (by :func:`key_of`)."""
    name = profile["metadata"]["name"]
    ns = profiles.namespace_for(profile, settings)
    if not profiles.served(ns, settings):
        patterns = ",".join(settings.namespaces)
        return Plan(
            ns,
            ready=False,
            reason="NamespaceNotServed",
            message=f"The operator serves namespaces {patterns!r}, not {ns!r}: set "
            f"spec.namespace to a name they cover (or the operator's "
            f"KERNELSESSION_NAMESPACES to cover it).",
        )
    current = existing.get(("Namespace", "", ns))
    if current is not None:
        labels = (current.get("metadata") or {}).get("labels") or {}
        if labels.get(profiles.PROFILE_LABEL) != name:
            holder = labels.get(profiles.PROFILE_LABEL)
            whose = f"LabProfile {holder!r}" if holder else "someone else (not this operator)"
            return Plan(
                ns,
                ready=False,
                reason="NamespaceConflict",
                message=f"Namespace {ns} exists and belongs to {whose}; the operator never "
                "takes over a namespace it did not make for this profile. Set spec.namespace.",
            )
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            return Plan(
                ns,
                ready=False,
                reason="NamespaceTerminating",
                message=f"Namespace {ns} is being deleted; it is made again once it is gone.",
            )
    steps: list[Step] = []
    for desired in [profiles.namespace(profile, settings), *profiles.desired(profile, settings)]:
        step = step_for(desired, existing.get(key_of(desired)))
        if step is not None:
            steps.append(step)
    quota = existing.get(("ResourceQuota", ns, profiles.QUOTA_NAME))
    hard = dict(profile["spec"].get("quota") or {})
    # status.used, not status.hard: the quota controller counts an object kind (a CRD's
    # count/...) only once its discovery has found it
    counted = ((quota or {}).get("status") or {}).get("used") or {}
    if set(hard) - set(counted):
        # until the quota controller has counted, the API server refuses every object
        # the quota limits ("status unknown for quota"): not ready for the owner yet,
        # whether the quota was just made (by these steps) or changed
        return Plan(
            ns,
            steps,
            ready=False,
            reason="QuotaPending",
            message=f"Waiting for the quota controller to count {', '.join(sorted(hard))} "
            f"in namespace {ns}.",
        )
    return Plan(ns, steps, message=f"Namespace {ns} is ready for {_owner(profile)}.")


def _owner(profile: Mapping[str, Any]) -> str:
    owner = profile["spec"]["owner"]
    return f"{owner['kind']} {owner['name']}"


def retire(profile: Mapping[str, Any], settings: Settings) -> tuple[str, Step]:
    """On deletion: (the namespace, the step removing the owner's access). The labs are
    stopped after it; the namespace stays under Retain and goes with the profile (the
    garbage collector, through its ownerReference) under Delete."""
    return (
        profiles.namespace_for(profile, settings),
        Step("delete", profiles.owner_binding(profile, settings)),
    )


def status_patch(profile: Mapping[str, Any], result: Plan, now: datetime) -> dict[str, Any] | None:
    """The status patch for ``result``; None when the status says so already."""
    status: Mapping[str, Any] = profile.get("status") or {}
    generation = profile["metadata"].get("generation")
    previous = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "True" if result.ready else "False"
    same = (
        previous is not None
        and previous.get("status") == state
        and previous.get("reason") == result.reason
        and previous.get("message") == result.message
    )
    if (
        same
        and status.get("namespace") == result.namespace
        and (status.get("observedGeneration") == generation)
    ):
        return None
    since = (
        previous["lastTransitionTime"]
        if previous and previous.get("status") == state and previous.get("lastTransitionTime")
        else fmt_time(now)
    )
    condition = {
        "type": "Ready",
        "status": state,
        "reason": result.reason,
        "message": result.message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }
    return {
        "namespace": result.namespace,
        "observedGeneration": generation,
        "conditions": [condition],
    }
