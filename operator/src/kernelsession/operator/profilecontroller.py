"""The LabProfile controller: kopf watches feed indexes; one pass at a time per profile,
only on the active replica (the Lease holder), as for sessions.

A pass observes (the profile and the indexed namespace objects), decides
(:func:`profileplan.plan`, pure) and acts: it creates what is missing, patches back what
was edited (with a resourceVersion precondition, and a ``Restored`` Event), and writes
the status. The operator manages the profile's finalizer itself (no kopf progress
annotations, nothing written by a standby): deleting a profile first removes the
owner's RoleBinding, then stops their labs (an annotation on each session, never its
spec), then lets the profile go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
import structlog

from kernelsession.operator import naming, policy, profiles
from kernelsession.operator.errors import RetryLater
from kernelsession.operator.kube import ChildRejected
from kernelsession.operator.observe import stopped_by
from kernelsession.operator.passslots import Priority
from kernelsession.operator.profilekube import ProfileKube
from kernelsession.operator.profileplan import ObjectKey, Plan, Step, plan, retire
from kernelsession.operator.profileplan import status_patch as make_status_patch
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.status import now_utc

log = structlog.get_logger("kernelsession.operator")
MAX_BACKOFF = 60.0
PROFILE_FILTER = {profiles.PROFILE_LABEL: kopf.PRESENT}
PROFILE_PRIORITY: Priority = ("", "", "")
"""A profile's pass goes before any session's (they are few, and a profile's namespace
is what its sessions wait for)."""
KINDS = ("Namespace", "RoleBinding", "ResourceQuota", "LimitRange", "ConfigMap", "NetworkPolicy")


@dataclass
class ProfileEntry:
    body: dict[str, Any]
    task: asyncio.Task[None] | None = None
    dirty: bool = False


@dataclass
class Profiles:
    """What this replica knows of the profiles, and the watch-fed indexes of their objects."""

    entries: dict[str, ProfileEntry] = field(default_factory=dict)
    by_namespace: dict[str, str] = field(default_factory=dict)
    """Namespace -> the profile whose it is (from the last pass)."""
    indexes: dict[str, Any] = field(default_factory=dict)
    """kind -> kopf index {(namespace, name): body}."""
    api: ProfileKube | None = None


def _profiles(rt: Runtime) -> Profiles:
    if rt.profiles is None:
        rt.profiles = Profiles(api=ProfileKube(rt.kube))
    state: Profiles = rt.profiles
    return state


def kick(rt: Runtime, name: str) -> None:
    """Run a pass for profile ``name`` (again, when one runs) if this replica is active."""
    state = _profiles(rt)
    entry = state.entries.get(name)
    if entry is None or not rt.active or len(state.indexes) < len(KINDS):
        return
    if entry.task is not None and not entry.task.done():
        entry.dirty = True
        return
    entry.task = asyncio.get_running_loop().create_task(_loop(rt, name), name=f"labprofile {name}")


def start_all(rt: Runtime) -> None:
    """This replica became active: a pass for every known profile."""
    for name in list(_profiles(rt).entries):
        kick(rt, name)


def stop_all(rt: Runtime) -> None:
    """This replica stands by (or stops): cancel every pass."""
    for entry in _profiles(rt).entries.values():
        if entry.task is not None:
            entry.task.cancel()
            entry.task = None


async def _loop(rt: Runtime, name: str) -> None:
    state = _profiles(rt)
    backoff = 1.0
    while rt.active:
        entry = state.entries.get(name)
        if entry is None:
            return
        entry.dirty = False
        try:
            async with rt.passes.slot(PROFILE_PRIORITY):
                await reconcile(rt, state, entry.body)
            backoff = 1.0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad profile never stops the operator
            log.warning("labprofile pass failed", profile=name, error=str(exc), retry_in=backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        if not entry.dirty:
            return


def _existing(state: Profiles) -> dict[ObjectKey, Mapping[str, Any]]:
    found: dict[ObjectKey, Mapping[str, Any]] = {}
    for kind, index in state.indexes.items():
        for (namespace, name), bodies in index.items():
            for body in bodies:
                found[(kind, namespace or "", name)] = body
    return found


async def reconcile(rt: Runtime, state: Profiles, body: Mapping[str, Any]) -> None:
    """One pass over one profile."""
    api = state.api
    assert api is not None
    meta = body["metadata"]
    name = meta["name"]
    finalizers = list(meta.get("finalizers") or [])
    if meta.get("deletionTimestamp"):
        if profiles.FINALIZER in finalizers:
            await _retire(rt, api, body)
            finalizers.remove(profiles.FINALIZER)
            await api.patch_profile(
                name,
                {
                    "metadata": {
                        "finalizers": finalizers,
                        "resourceVersion": meta["resourceVersion"],
                    }
                },
                status=False,
            )
        return
    if profiles.FINALIZER not in finalizers:
        patch = {
            "metadata": {
                "finalizers": [*finalizers, profiles.FINALIZER],
                "resourceVersion": meta["resourceVersion"],
            }
        }
        await api.patch_profile(name, patch, status=False)
        return  # the watch brings the new version, and with it the next pass
    result = plan(body, rt.settings, _existing(state))
    if result.ready or result.reason == "QuotaPending":
        state.by_namespace[result.namespace] = name
        result = await _act(api, body, result)
    if result.ready:
        await _restart_stopped(rt, api, name, result.namespace)
    status = make_status_patch(body, result, now_utc())
    if status is not None:
        await api.patch_profile(name, {"status": status}, status=True)
        log.info("labprofile status", profile=name, ready=result.ready, reason=result.reason)


# What each of the operator's own RoleBindings lets it do, checked before it relies on it.
_ACCESS = {
    "kernelsession-operator": ("list", "", "pods"),
    "kernelsession-operator-profile": ("create", "", "resourcequotas"),
}
ACCESS_WAIT = 10.0


async def _await_access(api: ProfileKube, namespace: str, binding: str) -> None:
    """Wait until a RoleBinding the operator just gave itself takes effect (the API
    server's authorizer follows RoleBindings through a watch): no request of the
    operator's is ever refused for it.

    Raises:
        RetryLater: it did not take effect within ACCESS_WAIT seconds.
    """
    verb, group, resource = _ACCESS[binding]
    deadline = asyncio.get_running_loop().time() + ACCESS_WAIT
    while not await api.allowed(verb, group, resource, namespace):
        if asyncio.get_running_loop().time() > deadline:
            raise RetryLater(f"RoleBinding {namespace}/{binding} has not taken effect")
        await asyncio.sleep(0.05)


async def _act(api: ProfileKube, body: Mapping[str, Any], result: Plan) -> Plan:
    """Carry out the plan's steps; a refusal makes the profile not Ready, naming it."""
    name = body["metadata"]["name"]
    for step in result.steps:
        kind, namespace, obj = step.key
        if kind == "RoleBinding" and obj in _ACCESS and step.verb in ("create", "replace"):
            await _create_own_binding(api, body, step)
            continue
        try:
            if step.verb == "replace":
                await api.delete(kind, namespace, obj)
                await api.create(step.manifest)
            elif step.verb == "create":
                exists = not await api.create(step.manifest)
                if exists and not await _repair_unindexed(api, body, step):
                    message = (
                        f"Namespace {obj} exists and is not this profile's; the operator "
                        "never takes over a namespace it did not make. Set spec.namespace."
                    )
                    return Plan(
                        result.namespace, ready=False, reason="NamespaceConflict", message=message
                    )
                if not exists:
                    log.info("labprofile object created", profile=name, kind=kind, name=obj)
            elif step.patch is not None and await api.patch(kind, namespace, obj, step.patch):
                log.info("labprofile object restored", profile=name, kind=kind, name=obj)
                await api.event(body, "Restored", f"Put {kind} {obj} back into shape")
        except ChildRejected as exc:
            message = f"The API server refused {kind} {obj}: {exc.message}"
            await api.event(body, "Rejected", message, warning=True)
            return Plan(result.namespace, ready=False, reason="Rejected", message=message)
    return result


async def _create_own_binding(api: ProfileKube, body: Mapping[str, Any], step: Step) -> None:
    kind, namespace, obj = step.key
    if step.verb == "replace":
        await api.delete(kind, namespace, obj)
    if not await api.create(step.manifest):
        await _repair_unindexed(api, body, step)
    await _await_access(api, namespace, obj)


async def _repair_unindexed(api: ProfileKube, body: Mapping[str, Any], step: Step) -> bool:
    """An object exists but not in the index (someone removed our label, or the watch
    lags): read and repair it. False when it is a namespace that is not this profile's."""
    kind, namespace, obj = step.key
    current = await api.read(kind, namespace, obj)
    if current is None:
        return True
    if kind == "Namespace":
        labels = (current.get("metadata") or {}).get("labels") or {}
        if labels.get(profiles.PROFILE_LABEL) not in (None, body["metadata"]["name"]):
            return False  # another profile's
        if profiles.PROFILE_LABEL not in labels and not _managed(current):
            return False  # never take over a namespace the operator did not make
    try:
        patch = profiles.repair(step.manifest, current)
    except ValueError:
        await api.delete(kind, namespace, obj)
        await api.create(step.manifest)
        return True
    if patch is not None and await api.patch(kind, namespace, obj, patch):
        await api.event(body, "Restored", f"Put {kind} {obj} back into shape")
    return True


def _managed(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(naming.MANAGED_BY) == naming.MANAGER)


async def _retire(rt: Runtime, api: ProfileKube, body: Mapping[str, Any]) -> None:
    """The profile is being deleted: the owner loses access first, then their labs stop
    (stopped: pods deleted, token Secrets, Services and homes kept)."""
    namespace, step = retire(body, rt.settings)
    name = body["metadata"]["name"]
    kind, ns, obj = step.key
    await api.delete(kind, ns, obj)
    if body["spec"].get("deletionPolicy") == "Delete":
        log.info("labprofile deleted; its namespace goes with it", profile=name, namespace=ns)
        return
    stopped = 0
    for state in list(rt.sessions):
        session_ns, session = state.key
        if (
            session_ns == namespace
            and stopped_by(state.body) != name
            and await api.stop_session(session_ns, session, name)
        ):
            stopped += 1
    log.info("labprofile retired", profile=name, namespace=namespace, stopped=stopped)
    await api.event(
        body,
        "Retired",
        f"Removed {kind} {obj} and stopped {stopped} lab(s); namespace {namespace} and its "
        "home volumes stay (deletionPolicy Retain)",
    )


async def _restart_stopped(rt: Runtime, api: ProfileKube, name: str, namespace: str) -> None:
    """The profile is back in shape: labs its earlier deletion stopped may start again."""
    for state in list(rt.sessions):
        session_ns, session = state.key
        if session_ns == namespace and stopped_by(state.body) == name:
            await api.stop_session(session_ns, session, None)
            log.info("labprofile lab released", profile=name, session=session)


# -- kopf handlers ---------------------------------------------------------------------
def _runtime(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


@kopf.on.event(naming.GROUP, naming.VERSION, profiles.PLURAL)
async def profile_event(
    name: str | None, type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """Every profile event (the initial listing included) feeds its entry and a pass."""
    if not name:
        return
    rt = _runtime(memo)
    state = _profiles(rt)
    if not state.indexes:
        state.indexes = {
            "Namespace": kwargs["profile_namespaces"],
            "RoleBinding": kwargs["profile_rolebindings"],
            "ResourceQuota": kwargs["profile_quotas"],
            "LimitRange": kwargs["profile_limitranges"],
            "ConfigMap": kwargs["profile_configmaps"],
            "NetworkPolicy": kwargs["profile_networkpolicies"],
        }
    if type == "DELETED":
        entry = state.entries.pop(name, None)
        if entry is not None and entry.task is not None:
            entry.task.cancel()
        return
    entry = state.entries.setdefault(name, ProfileEntry(dict(body)))
    entry.body = dict(body)
    kick(rt, name)


def _entry(namespace: str | None, name: str, body: kopf.Body) -> Any:
    return {(namespace, name): dict(body)}


@kopf.index("namespaces", labels=PROFILE_FILTER)
async def profile_namespaces(name: str, body: kopf.Body, **_: Any) -> Any:
    return _entry("", name, body)


@kopf.index("rbac.authorization.k8s.io", "v1", "rolebindings", labels=PROFILE_FILTER)
async def profile_rolebindings(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return _entry(namespace, name, body)


@kopf.index("resourcequotas", labels=PROFILE_FILTER)
async def profile_quotas(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return _entry(namespace, name, body)


@kopf.index("limitranges", labels=PROFILE_FILTER)
async def profile_limitranges(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return _entry(namespace, name, body)


@kopf.index("configmaps", labels=PROFILE_FILTER)
async def profile_configmaps(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    return _entry(namespace, name, body)


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=PROFILE_FILTER)
async def profile_networkpolicies(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> Any:
    return _entry(namespace, name, body)


_NAMES = {
    "RoleBinding": {profiles.OWNER_BINDING, *profiles.OPERATOR_ROLES},
    "ResourceQuota": {profiles.QUOTA_NAME},
    "LimitRange": {profiles.LIMITS_NAME},
    "ConfigMap": {policy.CONFIGMAP},
    "NetworkPolicy": {profiles.DEFAULT_POLICY_NAME},
}


def _wake(rt: Runtime, namespace: str | None, kind: str, name: str) -> None:
    state = _profiles(rt)
    if kind == "Namespace":
        owner = state.by_namespace.get(name)
    elif namespace and name in _NAMES[kind]:
        owner = state.by_namespace.get(namespace)
    else:
        owner = None
    if owner is not None:
        kick(rt, owner)


# Not filtered by label: an object whose label someone removed is still noticed.
@kopf.on.event("namespaces")
async def namespace_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(_runtime(memo), None, "Namespace", name)


@kopf.on.event("rbac.authorization.k8s.io", "v1", "rolebindings")
async def rolebinding_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(_runtime(memo), namespace, "RoleBinding", name)


@kopf.on.event("resourcequotas")
async def quota_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(_runtime(memo), namespace, "ResourceQuota", name)


@kopf.on.event("limitranges")
async def limitrange_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    _wake(_runtime(memo), namespace, "LimitRange", name)


@kopf.on.event("configmaps")
async def configmap_changed(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    rt = _runtime(memo)
    if namespace and name == policy.CONFIGMAP:
        rt.rules.forget(namespace)  # the sessions' next passes read the new rules
        # and they come now: a Ready lab is otherwise looked at only when its culling
        # falls due, and a tightened rule must show on it (PolicyViolation) at once
        for state in rt.sessions.in_namespace(namespace):
            state.policy = None
            state.wake_for("ConfigMap")
    _wake(rt, namespace, "ConfigMap", name)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies")
async def networkpolicy_changed(
    namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    _wake(_runtime(memo), namespace, "NetworkPolicy", name)
