"""Observe: a frozen snapshot of one session, its children and its lab's activity.

Read-only towards the cluster: it reads the watch-fed indexes, the token Secret (cached
in the session's state), the home volume's storage class and events while it is not
bound, and the lab's own API. What to do about it is :mod:`decide`'s business.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from kernelsession.operator import builders, labapi, naming
from kernelsession.operator import status as st
from kernelsession.operator.errors import PermanentError
from kernelsession.operator.podview import PodView, read_pod
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import HomeCheck, SessionState, TokenRecord

log = structlog.get_logger("kernelsession.operator")

# Cached tokens are re-read this many cull intervals apart (the operator may not watch
# Secrets), at once when the lab refuses the token, and when a pod is to be created
# (then a token read less than FRESH_TOKEN_AGE seconds ago will do).
TOKEN_RECHECK_INTERVALS = 10
FRESH_TOKEN_AGE = 30.0
# A refused child is not asked for again for this long (the API would refuse it again).
REJECTION_MEMORY = 60.0


@dataclass(frozen=True)
class ClaimView:
    """The session's home PersistentVolumeClaim as the watch shows it."""

    name: str
    phase: str
    storage_class: str | None


@dataclass(frozen=True)
class ChildView:
    """A child the operator keeps in shape (NetworkPolicy, Ingress) as the watch shows it."""

    name: str
    spec: Mapping[str, Any]
    annotations: Mapping[str, str]
    resource_version: str

    @classmethod
    def of(cls, found: Mapping[str, Any] | None) -> ChildView | None:
        """From an index entry (``handlers.child_entry``); None when there is none."""
        if found is None:
            return None
        return cls(
            name=str(found["name"]),
            spec=dict(found.get("spec") or {}),
            annotations=dict(found.get("annotations") or {}),
            resource_version=str(found.get("resourceVersion") or ""),
        )


@dataclass(frozen=True)
class HomeView:
    """Why a home volume is not bound, looked up while it is not."""

    class_name: str | None
    class_exists: bool
    binding_mode: str | None
    event: str | None


@dataclass(frozen=True)
class Observation:
    body: Mapping[str, Any]
    now: datetime
    pods: tuple[PodView, ...] = ()
    has_service: bool = False
    policy: ChildView | None = None
    ingress: ChildView | None = None
    token_uid: str | None = None
    """The token Secret's uid; None when it does not exist yet."""
    claim: ClaimView | None = None
    home: HomeView | None = None
    activity: labapi.LabActivity | None = None
    probe_error: str | None = None
    warned: bool = False
    rejected: Mapping[str, str] = field(default_factory=dict)
    """Children the API server refused recently, by name: the message."""
    desired_pod: Mapping[str, Any] | None = None
    """The lab pod the spec asks for (its name hashes the template and the token
    Secret's uid); None until the token Secret exists."""

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def spec(self) -> Mapping[str, Any]:
        spec: Mapping[str, Any] = self.body.get("spec") or {}
        return spec

    @property
    def status(self) -> Mapping[str, Any]:
        status: Mapping[str, Any] = self.body.get("status") or {}
        return status


def wants_lab(body: Mapping[str, Any]) -> bool:
    """Whether the session should have a running lab now (pure; shared with decide)."""
    meta = body["metadata"]
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp") or spec.get("suspend"):
        return False
    if status.get("reason") not in st.STICKY_REASONS:
        return True
    return resume_asked(body) or spec_changed(body)


def resume_asked(body: Mapping[str, Any]) -> bool:
    resume = (body["metadata"].get("annotations") or {}).get(naming.RESUME_ANNOTATION)
    return resume is not None and resume != (body.get("status") or {}).get("resumeRequest")


def spec_changed(body: Mapping[str, Any]) -> bool:
    generation = int(body["metadata"].get("generation") or 1)
    return (body.get("status") or {}).get("observedGeneration") not in (None, generation)


async def observe(
    rt: Runtime,
    state: SessionState,
    pods: Iterable[Mapping[str, Any]],
    has_service: bool,
    policy: ChildView | None,
    ingress: ChildView | None,
    claim: Mapping[str, Any] | None,
) -> Observation:
    """Snapshot the session ``state`` describes, with its children from the indexes.

    Raises:
        PermanentError: a Secret with the token Secret's name belongs to something else.
    """
    body = copy.deepcopy(state.body)
    pod_views = tuple(read_pod(p) for p in pods)
    for name in [p.name for p in pod_views] + [
        *([naming.service_name(state.key[1])] if has_service else []),
        *([policy.name] if policy else []),
        *([ingress.name] if ingress else []),
        *([str(claim["name"])] if claim else []),
    ]:
        state.seen(name)
    claim_view = (
        ClaimView(str(claim["name"]), str(claim.get("phase") or "Pending"), claim.get("class"))
        if claim
        else None
    )
    obs = Observation(
        body=body,
        now=st.now_utc(),
        pods=pod_views,
        has_service=has_service,
        policy=policy,
        ingress=ingress,
        claim=claim_view,
        warned=state.warned,
        rejected=state.recent_rejections(REJECTION_MEMORY),
    )
    if not wants_lab(body):  # deleting, suspended, or culled/timed out: nothing to read
        return obs
    live = [p for p in pod_views if not p.deleting]
    token = await _token(rt, state, fresh=not live)
    if token is None:
        return obs
    try:
        desired = builders.lab_pod(body, rt.settings, token.uid)
    except KeyError as exc:  # the schema requires spec.user; defensive
        raise PermanentError(f"spec is missing {exc}") from None
    home = await _home(rt, state, claim_view) if body.get("spec", {}).get("home") else None
    activity, probe_error = await _probe(rt, state, body, token, pod_views, desired)
    return dataclasses.replace(
        obs,
        token_uid=token.uid,
        desired_pod=desired,
        home=home,
        activity=activity,
        probe_error=probe_error,
    )


async def _token(rt: Runtime, state: SessionState, *, fresh: bool) -> TokenRecord | None:
    """The session's token (None when its Secret does not exist yet).

    Read from the API when not cached, or when the cache is older than
    ``FRESH_TOKEN_AGE`` (``fresh``) or ``TOKEN_RECHECK_INTERVALS`` cull intervals.
    """
    cached = state.token
    cfg = rt.settings
    max_age = FRESH_TOKEN_AGE if fresh else TOKEN_RECHECK_INTERVALS * cfg.cull_interval
    if cached and time.monotonic() - cached.checked < max_age:
        return cached
    ns, name = state.key
    secret_name = naming.token_secret_name(name)
    found = await rt.kube.read_token(ns, secret_name)
    if found is None:
        state.token = None
        return None
    uid, token, labels = found
    if labels.get(naming.SESSION_LABEL) != name or not token:
        raise PermanentError(f"Secret {secret_name} exists but is not this session's token Secret")
    state.token = TokenRecord(uid=uid, token=token, checked=time.monotonic())
    return state.token


async def _home(rt: Runtime, state: SessionState, claim: ClaimView | None) -> HomeView | None:
    """Storage class and newest event of a home volume that is not bound (throttled)."""
    if claim is None or claim.phase == "Bound":
        state.home = None
        return None
    check = state.home
    if check is None or time.monotonic() - check.checked >= rt.settings.home_interval:
        mode = await rt.kube.storage_class(claim.storage_class) if claim.storage_class else None
        event = await rt.kube.latest_event(state.key[0], "PersistentVolumeClaim", claim.name)
        check = state.home = HomeCheck(
            checked=time.monotonic(),
            class_name=claim.storage_class,
            binding_mode=mode,
            class_exists=mode is not None,
            event=event,
        )
    return HomeView(check.class_name, check.class_exists, check.binding_mode, check.event)


async def _probe(
    rt: Runtime,
    state: SessionState,
    body: Mapping[str, Any],
    token: TokenRecord,
    pods: tuple[PodView, ...],
    desired: Mapping[str, Any],
) -> tuple[labapi.LabActivity | None, str | None]:
    """Ask the current lab pod (``desired``, the one the spec asks for) how active it is."""
    pod = next((p for p in pods if p.name == desired["metadata"]["name"]), None)
    if pod is None or not pod.pod_ip or not pod.running or pod.deleting:
        return None, None
    # The operator probes the pod itself (the NetworkPolicy admits it); clients use the URL.
    url = f"http://{pod.pod_ip}:{rt.settings.lab_port}{builders.base_path(body, rt.settings)}"
    try:
        return await labapi.activity(rt.http, url, token.token), None
    except labapi.LabUnreachable as exc:
        if exc.token_refused:
            state.token = None  # re-read the Secret on the next pass
        return None, str(exc)
