"""Decide: from an :class:`~observe.Observation` to the actions to take, the status to
render and when to look again. Pure: no I/O, no clock, no randomness; unit-tested over a
table of situations (tests/unit/test_operator_decide.py).

:func:`decide` runs ordered gates over one :class:`Pass` (what the pass has gathered:
actions, events, the token Secret's name, the resume request); the first gate that
knows the outcome returns the :class:`Decision`:

1. deleting -> Terminating;
2. ``spec.suspend`` -> Suspended (pod deleted, everything else kept);
3. sticky Culled/StartTimeout until resumed or the spec changes;
4. refused spec -> Failed/InvalidSpec;
5. token, Service, NetworkPolicy, Ingress and home volume ensured (no token yet: look
   again at once);
6. the home volume bound (or its class binding on first consumer);
7. a spec that breaks the namespace's session rules (:mod:`policy`) -> Failed/
   PolicyRejected, unless its lab runs already (then condition PolicyViolation);
8. the lab pod: the desired one, or an outdated one kept running (:mod:`rollout`: an
   operator upgrade or settings change never restarts a lab; ``KERNELSESSION_ROLLOUT=idle``
   replaces idle ones); pods of another spec deleted; the desired pod refused, waiting
   for its home, or created once the previous pod is gone;
9. the lab judged by :func:`status.judge`, culled by :func:`culling.decide`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kernelsession.client.resources import Reason
from kernelsession.operator import builders, culling, naming, policy, refusals, rollout
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Action,
    Create,
    CreateToken,
    Decision,
    Delete,
    DeletePod,
    Emit,
    GrantTokenAccess,
    Patch,
    RecordSpawn,
    WriteStatus,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.observe import (
    ChildView,
    Observation,
    resume_asked,
    spec_changed,
    stopped_by,
)
from kernelsession.operator.podview import PodView
from kernelsession.operator.quotas import QUOTA_EXCEEDED, quota_message, quota_refusal

RESUME_HINT = (
    " To start it again: kubectl annotate ks/{name} -n {ns} "
    f'{naming.RESUME_ANNOTATION}="$(date +%s)" --overwrite'
)
NO_HOME_NOTE = (
    " Its files are gone with it: the session has no spec.home volume, so nothing written "
    "in the lab is kept."
)
UNSUSPEND_HINT = (
    " To start it again: kubectl patch ks/{name} -n {ns} --type merge "
    """-p '{{"spec":{{"suspend":false}}}}'"""
)


def decide(obs: Observation, cfg: Settings) -> Decision:
    """What to do about the observed session: the first gate that decides."""
    p = Pass(obs, cfg)
    for gate in GATES:
        decision = gate(p)
        if decision is not None:
            return decision
    raise AssertionError("the last gate always decides")  # pragma: no cover


@dataclass
class Pass:
    """One decision pass: the observation and what the gates gathered so far."""

    obs: Observation
    cfg: Settings
    actions: list[Action] = field(default_factory=list)
    """Child actions so far (creates, patches, deletions), in order."""
    events: list[Action] = field(default_factory=list)
    """Events to post after the status write."""
    token_name: str | None = None
    """``status.tokenSecretName`` to render."""
    resume: str | None = None
    """The resume request this pass acts on (``status.resumeRequest``)."""
    warned_before: bool = False
    """Whether CullingSoon was posted for the current idle stretch, as still valid."""
    home_unbound: str | None = None
    """Why the home volume is not bound yet (None: bound or none)."""
    home_gate: bool = False
    """Whether the pod waits for the home volume to be bound."""
    labs: rollout.LabPods | None = None
    """The session's lab pod and the pods to delete (set by ``_lab_pod``)."""
    rolled: str | None = None
    """The outdated pod the rollout policy replaces in this pass."""
    violation: str | None = None
    """Why the running lab's spec breaks the namespace's rules now (PolicyViolation)."""

    def __post_init__(self) -> None:
        if self.obs.token_uid:
            self.token_name = naming.token_secret_name(self.obs.name)

    def delete_live(self) -> list[Action]:
        """Delete every lab pod that is not already going."""
        return [DeletePod(p.name) for p in self.obs.pods if not p.deleting]

    def finish(
        self,
        verdict: st.Verdict,
        *,
        requeue: float,
        actions: list[Action] | None = None,
        pod: PodView | None = None,
        url: str | None = None,
        external_url: str | None = None,
        last_activity: str | None = None,
        culled_time: str | None = None,
        warned: bool = False,
        up_to_date: bool | None = None,
    ) -> Decision:
        """Render the status for ``verdict``; add its write and the phase-change events."""
        obs = self.obs
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
            token_secret_name=self.token_name,
            pod=pod,
            last_activity=last_activity,
            culled_time=culled_time,
            resume_request=self.resume,
            up_to_date=up_to_date,
            policy_violation=self.violation,
        )
        result = list(self.actions if actions is None else actions)
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
                        Emit(
                            "Ready", f"The lab answers its API ({seconds:.1f}s after pod creation)"
                        )
                    )
                elif verdict.phase == st.FAILED or verdict.reason == Reason.LAB_RESTARTING:
                    result.append(Emit(verdict.reason, verdict.message, warning=True))
        result.extend(self.events)
        return Decision(
            tuple(result), phase=verdict.phase, requeue_after=requeue, warned=warned, status=desired
        )


Gate = Callable[[Pass], Decision | None]


def _deleting(p: Pass) -> Decision | None:
    if not p.obs.body["metadata"].get("deletionTimestamp"):
        return None
    p.token_name = None
    verdict = st.Verdict(st.TERMINATING, Reason.DELETING, "The session is being deleted.")
    return p.finish(verdict, requeue=p.cfg.cull_interval)


def _suspended(p: Pass) -> Decision | None:
    """``spec.suspend`` (the user's) or the stop an admin's act put on the session (its
    LabProfile deleted: :data:`naming.STOPPED_ANNOTATION`)."""
    obs, spec, current = p.obs, p.obs.spec, p.obs.status
    profile = stopped_by(obs.body)
    if not spec.get("suspend") and profile is None:
        return None
    kept = (
        "its token, Service and home volume are kept."
        if spec.get("home") is not None
        else "its token and Service are kept (files outside a spec.home volume are not)."
    )
    if profile is not None:
        why = f"its LabProfile {profile} was deleted"
        verdict = st.Verdict(
            st.SUSPENDED,
            Reason.PROFILE_DELETED,
            f"The lab is stopped ({why}); {kept} It starts again when an admin re-creates "
            "the profile.",
        )
    else:
        why = "spec.suspend is true"
        verdict = st.Verdict(
            st.SUSPENDED,
            Reason.SUSPENDED,
            f"The lab is stopped ({why}); {kept}"
            + UNSUSPEND_HINT.format(name=obs.name, ns=obs.namespace),
        )
    if current.get("phase") != st.SUSPENDED:
        p.events.append(Emit("Suspended", f"Stopped the lab ({why})."))
    p.token_name = naming.token_secret_name(obs.name) if current.get("tokenSecretName") else None
    return p.finish(verdict, requeue=p.cfg.cull_interval, actions=p.delete_live())


def _sticky(p: Pass) -> Decision | None:
    """Culled and StartTimeout stay until resumed or the spec changes; a resume is noted."""
    obs, current = p.obs, p.obs.status
    asked = resume_asked(obs.body)
    changed = spec_changed(obs.body)
    sticky = current.get("reason") in st.STICKY_REASONS
    if sticky and not (asked or changed):
        return Decision(
            tuple(p.delete_live()),
            phase=str(current.get("phase") or st.FAILED),
            requeue_after=p.cfg.cull_interval,
            warned=obs.warned,
        )
    p.warned_before = obs.warned and not (asked or (sticky and changed))
    if asked:
        p.events.append(Emit("Resumed", "Starting the lab again on request."))
    elif current.get("reason") == Reason.PROFILE_DELETED:
        p.events.append(Emit("Resumed", "Starting the lab again (its LabProfile is back)."))
    elif current.get("phase") == st.SUSPENDED:
        p.events.append(Emit("Resumed", "Starting the lab again (spec.suspend is false)."))
    if asked:
        p.resume = (obs.body["metadata"].get("annotations") or {}).get(naming.RESUME_ANNOTATION)
    return None


def _refused(p: Pass) -> Decision | None:
    problems = refusals.refusals(p.obs.spec)
    if not problems:
        return None
    verdict = st.Verdict(
        st.FAILED, Reason.INVALID_SPEC, "The spec cannot be run: " + "; ".join(problems) + "."
    )
    return p.finish(verdict, requeue=p.cfg.cull_interval, actions=p.delete_live())


def _children(p: Pass) -> Decision | None:
    """Service, NetworkPolicy, Ingress and home claim in shape; the token Secret first."""
    obs, cfg = p.obs, p.cfg
    if not obs.has_service:
        p.actions.append(Create(builders.service(obs.body, cfg)))
    p.actions.extend(_kept(obs.policy, builders.network_policy(obs.body, cfg)))
    p.actions.extend(_kept(obs.ingress, builders.ingress(obs.body, cfg), kind="Ingress"))
    claim = builders.home_claim(obs.body)
    if claim is not None and obs.claim is None:
        p.actions.append(Create(claim))
    elif claim is not None and obs.claim is not None and _home_is_ours(obs):
        owners = builders.claim_owner_patch(obs.body, obs.claim.owners, obs.claim.resource_version)
        if owners is not None:  # the owners its reclaimPolicy asks for
            p.actions.append(Patch("PersistentVolumeClaim", obs.claim.name, owners))
    if obs.stale_token_uid:
        # A token left by an earlier session of this name: never used (a new session, a
        # new token: whoever held the old one cannot open the new lab). The garbage
        # collector removes it (its owner is gone); the operator may not delete Secrets.
        p.token_name = None
        verdict = st.Verdict(
            st.PENDING,
            Reason.TOKEN_PENDING,
            f"Waiting for the token Secret {naming.token_secret_name(obs.name)} of an earlier "
            "session of this name to be removed by the garbage collector.",
        )
        return p.finish(verdict, requeue=cfg.home_interval)
    if obs.token_uid is None:
        # The pod's name depends on the Secret's uid: create it, then look again at once.
        return Decision(
            (CreateToken(), *p.actions),
            phase=str(obs.status.get("phase") or st.PENDING),
            requeue_after=0.0,
            warned=p.warned_before,
        )
    p.actions.extend(_token_readers(obs))
    return None


def _token_readers(obs: Observation) -> list[Action]:
    """Let the Kubernetes users that stand for spec.user read the token Secret."""
    if obs.rules is None:
        return []
    user = str(obs.spec.get("user") or "")
    rules = obs.rules.rules or policy.Policy()
    subjects = tuple(policy.identities(user, rules))
    if obs.token_readers == subjects:
        return []
    role, binding = builders.token_reader(obs.body, list(subjects))
    return [GrantTokenAccess(role, binding, subjects)]


def _home_volume(p: Pass) -> Decision | None:
    verdict, p.home_unbound, p.home_gate = _home(p.obs, builders.home_claim(p.obs.body))
    if verdict is None:
        return None
    return p.finish(verdict, requeue=p.cfg.cull_interval)


def _policy(p: Pass) -> Decision | None:
    """No lab pod for a spec that breaks the namespace's session rules; a lab running
    it already (a rule tightened since) keeps running, with condition PolicyViolation."""
    obs = p.obs
    violations = obs.rules.violations(obs.name, obs.spec) if obs.rules is not None else []
    if not violations:
        return None
    desired = obs.desired_pod["metadata"]["name"] if obs.desired_pod else None
    runs = (
        desired is not None
        and obs.token_uid is not None
        and (
            rollout.choose(
                obs.pods, desired, builders.spec_hash(obs.body, obs.token_uid), restart=False
            ).current
            is not None
        )
    )  # the desired pod, or one of an older template kept running
    if runs:
        p.violation = policy_message(violations)
        return None
    running = [pod.name for pod in obs.pods if not pod.deleting]
    return p.finish(policy_rejected(violations, running), requeue=p.cfg.cull_interval)


def policy_message(violations: list[str]) -> str:
    return "The spec breaks the namespace's session rules: " + "; ".join(violations) + "."


def policy_rejected(violations: list[str], running: list[str]) -> st.Verdict:
    """Failed/PolicyRejected: no lab starts with this spec until it is fixed (or the
    namespace's ConfigMap kernelsession-policy allows it)."""
    kept = (
        f" The lab started before ({', '.join(running)}) keeps running until it stops."
        if running
        else ""
    )
    return st.Verdict(
        st.FAILED, Reason.POLICY_REJECTED, policy_message(violations) + " Fix the spec." + kept
    )


def _lab_pod(p: Pass) -> Decision | None:
    """The session's lab: the desired pod, or an outdated one kept running (replaced by
    the rollout policy only when idle); delete the others; create the desired one once
    they are gone, unless the API refused it or it waits for its home volume."""
    obs = p.obs
    desired = obs.desired_pod
    assert desired is not None  # observed with the token (checked by _children)
    desired_name = desired["metadata"]["name"]
    assert obs.token_uid is not None
    labs = rollout.choose(
        obs.pods,
        desired_name,
        builders.spec_hash(obs.body, obs.token_uid),
        restart=resume_asked(obs.body),
    )
    mine = labs.current
    if (
        mine is not None
        and labs.outdated
        and mine.ready
        and rollout.may_replace_idle(p.cfg, obs.activity, obs.rollout_slots)
    ):
        p.rolled = mine.name
        p.events.append(Emit("RollingOut", rollout.ROLLING_MESSAGE.format(pod=mine.name)))
        labs = rollout.LabPods(None, (*labs.stale, mine))
    p.labs = labs
    p.actions.extend(
        DeletePod(pod.name, rollout=pod.name == p.rolled) for pod in labs.stale if not pod.deleting
    )
    if labs.current is not None:
        return None
    if desired_name in obs.rejected:
        return p.finish(st.pod_rejected(obs.rejected[desired_name]), requeue=p.cfg.cull_interval)
    if p.home_gate:
        verdict = st.Verdict(st.PENDING, Reason.HOME_PENDING, p.home_unbound or "")
        return p.finish(verdict, requeue=p.cfg.home_interval)
    if not labs.stale:
        # Only once the previous pod is gone: two labs never share the home volume, and
        # the node starts the new one with the current token Secret (its cache of a
        # Secret deleted and created again under the same name can lag, and a lab
        # started with the old token refuses the new one for good).
        p.actions.append(Create(desired))
    return None


def _lab(p: Pass) -> Decision:
    """Judge the lab pod; cull an idle lab; fail one that never answered."""
    obs, cfg, spec = p.obs, p.cfg, p.obs.spec
    labs = p.labs or rollout.LabPods(None, obs.pods)
    mine, outdated = labs.current, labs.outdated
    start_timeout = int(spec.get("startTimeoutSeconds") or cfg.default_start_timeout)
    verdict = st.judge(
        mine,
        image=spec.get("image") or cfg.default_image,
        probe_ok=obs.activity is not None,
        probe_error=obs.probe_error,
        now=obs.now,
        start_timeout=start_timeout,
        rolling=bool(labs.stale),
        unschedulable_grace=cfg.unschedulable_grace,
        home_unbound=p.home_unbound,
    )
    if p.rolled is not None:
        verdict = st.Verdict(
            st.STARTING, Reason.ROLLING, "Replacing the idle lab pod to apply the new template."
        )
    pod: PodView | None = mine
    warned = p.warned_before
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
                p.events.append(Emit("CullingSoon", cull.message))
            warned = True
        else:
            message = cull.message + RESUME_HINT.format(name=obs.name, ns=obs.namespace)
            if spec.get("home") is None:
                message += NO_HOME_NOTE
            p.actions.append(DeletePod(mine.name, cull_reason=cull.reason))
            p.events.append(Emit("Culled", message))
            verdict = st.Verdict(st.CULLED, cull.reason, message)
            culled_time, pod = st.fmt_time(obs.now), None
    if verdict.phase == st.FAILED and verdict.reason == Reason.START_TIMEOUT and mine is not None:
        p.actions.append(DeletePod(mine.name))
        pod = None
    if verdict.ready or verdict.phase == st.CULLED:
        requeue = cfg.cull_interval
    elif verdict.reason == Reason.HOME_PENDING:
        requeue = cfg.home_interval
    else:
        requeue = cfg.starting_interval
    # The route serves the path the operator's settings give; a lab started under other
    # settings serves its own until its next start: no external URL that would not reach it.
    external = builders.external_url(obs.body, cfg)
    if pod is not None and pod.base_path != builders.base_path(obs.body, cfg):
        external = None
    return p.finish(
        verdict,
        requeue=requeue,
        pod=pod,
        url=builders.lab_url(
            obs.body, cfg, pod.pod_ip if pod else None, base=pod.base_path if pod else None
        ),
        external_url=external,
        last_activity=last_activity,
        culled_time=culled_time,
        warned=warned,
        up_to_date=None if pod is None else not outdated,
    )


#: The gates in order; the last one always decides.
GATES: tuple[Gate, ...] = (
    _deleting,
    _suspended,
    _sticky,
    _refused,
    _children,
    _home_volume,
    _policy,
    _lab_pod,
    _lab,
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
    found = obs.claim
    if found is not None and found.user != obs.spec.get("user"):
        return (
            st.Verdict(
                st.FAILED,
                Reason.HOME_CONFLICT,
                f"The home volume {name} holds the files of user {found.user!r}, not "
                f"{obs.spec.get('user')!r} (spec.user): it is not mounted. Name the session "
                "differently, or have an administrator move or delete that claim.",
            ),
            None,
            False,
        )
    if found is not None and not _home_is_ours(obs):
        return (
            None,
            f"The home volume {name} still belongs to an earlier session of this name "
            "that is being deleted (spec.home.reclaimPolicy: Delete); waiting for it to go.",
            True,
        )
    if name in obs.rejected and quota_refusal(obs.rejected[name]) is not None:
        refusal = quota_refusal(obs.rejected[name])
        assert refusal is not None
        message = quota_message(f"home volume {name}", refusal)
        return st.Verdict(st.PENDING, QUOTA_EXCEEDED, message), None, False
    if name in obs.rejected:
        return (
            st.Verdict(
                st.FAILED,
                Reason.HOME_UNAVAILABLE,
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
                Reason.HOME_UNAVAILABLE,
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
                Reason.HOME_UNAVAILABLE,
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


def _home_is_ours(obs: Observation) -> bool:
    """The claim is this user's and no other (earlier) session owns it."""
    found = obs.claim
    uid = str(obs.body["metadata"].get("uid") or "")
    return (
        found is not None
        and found.user == obs.spec.get("user")
        and all(owner == uid for owner in found.owners)
    )
