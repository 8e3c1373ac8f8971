"""Observe: a frozen snapshot of one session, its children and its lab's activity.

Read-only towards the cluster: it reads the watch-fed indexes, the token Secret (cached
in the session's state), the home volume's storage class and events while it is not
bound, and the lab's own API. What to do about it is :mod:`decide`'s business.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from kernelsession.operator import builders, labapi, labpod, naming, policy, rollout
from kernelsession.operator import status as st
from kernelsession.operator.errors import PermanentError
from kernelsession.operator.podview import PodView
from kernelsession.operator.runtime import Runtime
from kernelsession.operator.state import HomeCheck, PolicyRecord, SessionState, TokenRecord

log = structlog.get_logger("kernelsession.operator")

# Cached tokens are re-read at once when the lab refuses the token, when a pod is to be
# created (then a token read less than FRESH_TOKEN_AGE seconds ago, or one this process
# created and made no pod with, will do), and else
# every TOKEN_RECHECK seconds (the operator may not watch Secrets): a read per session
# an hour (at 3,000 sessions, every 300 s was 10 reads/s, a fifth of the API budget).
TOKEN_RECHECK = 3600.0
# The session's rules (its policy view) are looked at again this many cull intervals
# apart (the ConfigMap itself: once per namespace, see nscache).
RULES_RECHECK_INTERVALS = 10
FRESH_TOKEN_AGE = 30.0
# A refused child is not asked for again for this long (the API would refuse it again).
REJECTION_MEMORY = 60.0
# Before saying Ready the Service is tried in attempts this short, each on a new
# connection, for at most this long (kube-proxy may not have programmed it yet).
SERVICE_ATTEMPT = 0.25
SERVICE_WITHIN = 3.0


class StaleToken(Exception):
    """The token Secret belongs to an earlier session of the same name (``uid``: its own)."""

    def __init__(self, uid: str) -> None:
        super().__init__(uid)
        self.uid = uid


@dataclass(frozen=True)
class ClaimView:
    """The session's home PersistentVolumeClaim as the watch shows it."""

    name: str
    phase: str
    storage_class: str | None
    user: str | None = None
    """Its ``kernelsession.dev/user`` label: whose files it holds."""
    owners: tuple[str, ...] = ()
    """uids of its ownerReferences (the session's when it goes with the session)."""
    resource_version: str = ""


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
class PolicyView:
    """The namespace's rules and what was looked up for the spec's references."""

    rules: policy.Policy | None
    """None when the ConfigMap is malformed (``error`` says how)."""
    lookups: policy.Lookups = field(default_factory=policy.Lookups)
    error: str | None = None

    def violations(self, session: str, spec: Mapping[str, Any]) -> list[str]:
        """What ``spec`` breaks (pure; :mod:`decide`'s policy gate)."""
        if self.rules is None:
            return [f"ConfigMap {policy.CONFIGMAP} is malformed: {self.error}"]
        return policy.violations(session, spec, self.rules, self.lookups)


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
    stale_token_uid: str | None = None
    """A token Secret of an earlier session of the same name (another owner uid): the
    garbage collector removes it; never used for this session."""
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
    rollout_slots: int = 0
    """How many more outdated labs the rollout policy may replace now."""
    rules: PolicyView | None = None
    """The tenancy rules as looked up (None: not looked up, nothing to start)."""
    token_readers: tuple[str, ...] | None = None
    """The users let read the token Secret: by this process, else as its RoleBinding shows
    (None: no RoleBinding known; a new leader does not grant again what is granted)."""
    status_age: float | None = None
    acting_age: float | None = None
    """Seconds since this process's first pass over the session (None: unknown)."""
    """Seconds since this process last wrote the status (None: not since it started)."""

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

    @functools.cached_property
    def labs(self) -> rollout.LabPods:
        """The session's lab pod (the desired one, or an outdated one kept running) and
        the pods to delete, the resume annotation asking for a fresh start."""
        return self.lab_pods(restart=resume_asked(self.body))

    def lab_pods(self, *, restart: bool) -> rollout.LabPods:
        """:func:`rollout.choose` against the desired pod (every pod stale until the
        desired pod is known, i.e. before the token Secret exists)."""
        if self.desired_pod is None:
            return rollout.LabPods(None, self.pods)
        meta = self.desired_pod["metadata"]
        digest = str(meta["labels"][naming.SPEC_HASH_LABEL])
        return rollout.choose(self.pods, str(meta["name"]), digest, restart=restart)


def wants_lab(body: Mapping[str, Any]) -> bool:
    """Whether the session should have a running lab now (pure; shared with decide)."""
    meta = body["metadata"]
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp") or spec.get("suspend") or stopped_by(body):
        return False
    if status.get("reason") not in st.STICKY_REASONS:
        return True
    return resume_asked(body) or spec_changed(body)


def stopped_by(body: Mapping[str, Any]) -> str | None:
    """The LabProfile whose deletion stopped this lab (:data:`naming.STOPPED_ANNOTATION`),
    or None."""
    value = (body["metadata"].get("annotations") or {}).get(naming.STOPPED_ANNOTATION)
    return str(value) if value else None


def asks_lab(pod: PodView | None) -> bool:
    """Whether a pass asks the lab's API (pure). Only once its pod is Ready: until then
    the kubelet's readiness probe asks it (``GET /api``), and the pod's events (Ready
    among them) wake the session; a pass about a pod that is not Ready asks nothing."""
    return pod is not None and bool(pod.pod_ip) and pod.running and pod.ready and not pod.deleting


def settled(body: Mapping[str, Any], pods: Iterable[PodView]) -> bool:
    """Whether the session's status and its pods (as the watch shows them) agree on a
    steady state for its current spec (pure): Ready with its one lab pod Ready, or
    Culled/Suspended with no lab pod and none wanted. A replica that starts acting looks
    at such sessions when it gets to them, not all at once."""
    meta = body["metadata"]
    status = body.get("status") or {}
    if meta.get("deletionTimestamp") or spec_changed(body) or resume_asked(body):
        return False
    if status.get("observedGeneration") is None:
        return False
    live = [p for p in pods if not p.deleting]
    phase = status.get("phase")
    if phase == st.READY:
        return (
            wants_lab(body)
            and len(live) == 1
            and live[0].name == status.get("podName")
            and live[0].ready
        )
    return phase in (st.CULLED, st.SUSPENDED) and not wants_lab(body) and not live


def _rollout_slots(rt: Runtime, state: SessionState) -> int:
    """Free rollout slots for this session (a look at every session: only when the
    rollout policy is on, not on every pass of thousands of sessions)."""
    if rt.settings.rollout != "idle":
        return 0
    others = sum(1 for s in rt.sessions if s.rolling_out and s.key != state.key)
    return rt.settings.rollout_max - others


def resume_asked(body: Mapping[str, Any]) -> bool:
    resume = (body["metadata"].get("annotations") or {}).get(naming.RESUME_ANNOTATION)
    return resume is not None and resume != (body.get("status") or {}).get("resumeRequest")


def spec_changed(body: Mapping[str, Any]) -> bool:
    generation = int(body["metadata"].get("generation") or 1)
    return (body.get("status") or {}).get("observedGeneration") not in (None, generation)


async def observe(
    rt: Runtime,
    state: SessionState,
    pods: Iterable[PodView],
    has_service: bool,
    policy: ChildView | None,
    ingress: ChildView | None,
    claim: Mapping[str, Any] | None,
    token_readers: tuple[str, ...] | None = None,
) -> Observation:
    """Snapshot the session ``state`` describes, with its children from the indexes
    (``token_readers``: the users its token-reader RoleBinding names, as the watch shows
    it; what this process granted itself counts first, the watch may lag).

    Raises:
        PermanentError: a Secret with the token Secret's name belongs to something else.
    """
    body = copy.deepcopy(state.body)
    pod_views = tuple(pods)
    for name in [p.name for p in pod_views] + [
        *([naming.service_name(state.key[1])] if has_service else []),
        *([policy.name] if policy else []),
        *([ingress.name] if ingress else []),
        *([str(claim["name"])] if claim else []),
    ]:
        state.seen(name)
    claim_view = (
        ClaimView(
            str(claim["name"]),
            str(claim.get("phase") or "Pending"),
            claim.get("class"),
            user=claim.get("user"),
            owners=tuple(claim.get("owners") or ()),
            resource_version=str(claim.get("resourceVersion") or ""),
        )
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
        rollout_slots=_rollout_slots(rt, state),
        token_readers=state.token_readers if state.token_readers is not None else token_readers,
        status_age=state.status_age(),
        acting_age=state.acting_age(),
    )
    if not wants_lab(body):  # deleting, suspended, or culled/timed out: nothing to read
        return obs
    live = [p for p in pod_views if not p.deleting]
    try:
        token = await _token(rt, state, fresh=not live)
    except StaleToken as exc:
        return dataclasses.replace(obs, stale_token_uid=exc.uid)
    if token is None:
        return obs
    try:
        desired = labpod.lab_pod(body, rt.settings, token.uid)
    except KeyError as exc:  # the schema requires spec.user; defensive
        raise PermanentError(f"spec is missing {exc}") from None
    obs = dataclasses.replace(obs, token_uid=token.uid, desired_pod=desired)
    home = await _home(rt, state, claim_view) if body.get("spec", {}).get("home") else None
    rules = await _rules(rt, state, body, fresh=not live)
    activity, probe_error = await _probe(rt, state, body, token, obs.labs.current)
    return dataclasses.replace(
        obs, home=home, activity=activity, probe_error=probe_error, rules=rules
    )


async def _rules(
    rt: Runtime, state: SessionState, body: Mapping[str, Any], *, fresh: bool
) -> PolicyView:
    """The namespace's policy ConfigMap and the lookups the spec's references need:
    whether the session's user may ``get`` each Secret/ConfigMap the allowlists do not
    name (asked as each identity ``userMapping`` maps to that user), and each claim's
    user label. Cached like the token: re-read when the spec changes, before a pod is
    created (``fresh``), and every ``RULES_RECHECK_INTERVALS`` cull intervals; the
    ConfigMap itself is read once per namespace for all its sessions (:attr:`rt.rules`),
    at most as old as this pass may take it."""
    generation = int(body["metadata"].get("generation") or 1)
    cached = state.policy
    max_age = FRESH_TOKEN_AGE if fresh else RULES_RECHECK_INTERVALS * rt.settings.cull_interval
    if (
        cached is not None
        and cached.generation == generation
        and time.monotonic() - cached.checked < max_age
    ):
        view: PolicyView = cached.view
        return view
    ns, name = state.key
    spec: Mapping[str, Any] = body.get("spec") or {}
    data = await rt.rules.get(ns, max_age)
    try:
        rules = policy.parse(data)
    except policy.PolicyConfigError as exc:
        view = PolicyView(None, error=str(exc))
    else:
        readable: set[tuple[str, str]] = set()
        claims: dict[str, str | None] = {}
        user = str(spec.get("user") or "")
        for ref in policy.to_look_up(spec, rules, name):
            if ref.kind == "PersistentVolumeClaim":
                if ref.name not in claims:
                    claims[ref.name] = await rt.kube.claim_user(ns, ref.name)
                continue
            if (ref.kind, ref.name) in readable:
                continue
            resource = "secrets" if ref.kind == "Secret" else "configmaps"
            for identity in policy.identities(user, rules):
                if await rt.kube.may_get(ns, identity, resource, ref.name):
                    readable.add((ref.kind, ref.name))
                    break
        view = PolicyView(rules, policy.Lookups(frozenset(readable), claims))
    state.policy = PolicyRecord(checked=time.monotonic(), generation=generation, view=view)
    return view


async def _token(rt: Runtime, state: SessionState, *, fresh: bool) -> TokenRecord | None:
    """The session's token (None when its Secret does not exist yet).

    Read from the API when not cached, or when the cache is older than
    ``FRESH_TOKEN_AGE`` (``fresh``) or ``TOKEN_RECHECK``; a token this process created
    and made no pod with yet (``TokenRecord.unused``) is not read again, however long the
    start queued, and a new session's is not read before it is created (a read per start
    saved each).
    """
    cached = state.token
    max_age = FRESH_TOKEN_AGE if fresh else TOKEN_RECHECK
    if cached and (cached.unused or time.monotonic() - cached.checked < max_age):
        return cached
    if cached is None and not state.token_create_tried and not _has_phase(state.body):
        # A new session (no one wrote its status yet): its Secret is made, not read. One
        # that exists already (left by an earlier session of the name, or made before a
        # restart) answers the create with 409, and the next pass reads it.
        return None
    ns, name = state.key
    secret_name = naming.token_secret_name(name)
    found = await rt.kube.read_token(ns, secret_name)
    if found is None:
        state.token = None
        return None
    uid, token, labels, owners = found
    if labels.get(naming.SESSION_LABEL) != name or not token:
        raise PermanentError(f"Secret {secret_name} exists but is not this session's token Secret")
    session_uid = str(state.body["metadata"].get("uid") or "")
    if session_uid not in owners:
        if owners:  # an earlier session of this name: its token must not open this lab
            state.token = None
            raise StaleToken(uid)
        raise PermanentError(f"Secret {secret_name} exists but is not owned by this session")
    state.token = TokenRecord(uid=uid, token=token, checked=time.monotonic())
    return state.token


def _has_phase(body: Mapping[str, Any]) -> bool:
    return bool((body.get("status") or {}).get("phase"))


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
    pod: PodView | None,
) -> tuple[labapi.LabActivity | None, str | None]:
    """Ask the session's lab pod how active it is (``Observation.labs``: the desired
    pod, or an outdated one kept running)."""
    if pod is None or not asks_lab(pod):
        return None, None
    # The operator probes the pod itself (the NetworkPolicy admits it); clients use the URL.
    url = f"http://{pod.pod_ip}:{rt.settings.lab_port}{pod.base_path}"
    deadline = rt.settings.probe_timeout
    try:
        found = await labapi.activity(rt.http, url, token.token, deadline=deadline)
        status = body.get("status") or {}
        service = builders.lab_url(body, rt.settings, pod.pod_ip, base=pod.base_path)
        if (
            service
            and service != url
            and (status.get("phase") != st.READY or status.get("podName") != pod.name)
        ):
            # Before saying Ready: the URL clients get (the Service) reaches this lab, so
            # Ready never precedes the Service's endpoints and kube-proxy's rules (short
            # attempts: a connection made before the rules are there would hang).
            await labapi.reaches(
                rt.http, service, token.token, attempt=SERVICE_ATTEMPT, within=SERVICE_WITHIN
            )
    except labapi.LabUnreachable as exc:
        if exc.token_refused:
            state.token = None  # re-read the Secret on the next pass
        return None, str(exc)
    return found, None
