"""Decide: from an :class:`~observe.Observation` to the actions to take, the status to
render and when to look again. Pure: no I/O, no clock, no randomness; unit-tested over a
table of situations (tests/unit/test_operator_decide.py and its neighbours).

:func:`decide` runs ordered gates over one :class:`~gatepass.Pass` (the pass context:
the actions and events gathered so far, the token Secret's name, the resume request);
the first gate that knows the outcome returns the :class:`~actions.Decision`, with the
status and when to look again (:meth:`~gatepass.Pass.finish`). The desired lab pod is
the observation's (computed once, in :mod:`observe`). The gates, in order (:data:`GATES`):

1. deleting -> Terminating;
2. ``spec.suspend`` -> Suspended (pod deleted, everything else kept);
3. sticky Culled/StartTimeout until resumed or the spec changes (a resume is noted);
4. refused spec -> Failed/InvalidSpec;
5. token, Service, NetworkPolicy, Ingress and home claim ensured (no token yet: look
   again at once);
6. the home volume (:mod:`homevolume`): bound, or its class binding on first consumer;
7. a spec that breaks the namespace's session rules (:mod:`policy`) -> Failed/
   PolicyRejected, unless its lab runs already (then condition PolicyViolation);
8. the lab pod (:func:`labgates.lab_pod`): the desired one, or an outdated one kept
   running (:mod:`rollout`: an operator upgrade or settings change never restarts a
   lab; ``KERNELSESSION_ROLLOUT=idle`` replaces idle ones); pods of another spec
   deleted; the desired pod refused, waiting for its home, or created once the previous
   pod is gone;
9. the lab (:func:`labgates.lab`) judged by :func:`status.judge`, culled by
   :func:`culling.decide`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelsession.client.resources import Reason
from kernelsession.operator import builders, homevolume, labgates, naming, policy, refusals
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Action,
    Create,
    CreateToken,
    Decision,
    Delete,
    Emit,
    GrantTokenAccess,
    Patch,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.gatepass import Gate, Pass
from kernelsession.operator.observe import (
    ChildView,
    Observation,
    resume_asked,
    spec_changed,
    stopped_by,
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
    p.actions.extend(homevolume.claim_actions(obs))
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
    p.grants.extend(_token_readers(obs))
    return None


def _token_readers(obs: Observation) -> list[Action]:
    """Let the Kubernetes users that stand for spec.user read the token Secret (in a
    LabProfile's namespace the owner's RoleBinding does already: nothing to make)."""
    if obs.rules is None:
        return []
    user = str(obs.spec.get("user") or "")
    rules = obs.rules.rules or policy.Policy()
    subjects = tuple(policy.identities(user, rules))
    if obs.token_readers == subjects or rules.owner_reads(subjects):
        return []
    role, binding = builders.token_reader(obs.body, list(subjects))
    return [GrantTokenAccess(role, binding, subjects)]


def _policy(p: Pass) -> Decision | None:
    """No lab pod for a spec that breaks the namespace's session rules; a lab running
    it already (a rule tightened since) keeps running, with condition PolicyViolation."""
    obs = p.obs
    violations = obs.rules.violations(obs.name, obs.spec) if obs.rules is not None else []
    if not violations:
        return None
    # the desired pod, or one of an older template kept running (a resume asked for
    # does not stop it here: the lab pod gate replaces it)
    if obs.lab_pods(restart=False).current is not None:
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


#: The gates in order; the last one always decides.
GATES: tuple[Gate, ...] = (
    _deleting,
    _suspended,
    _sticky,
    _refused,
    _children,
    homevolume.gate,
    _policy,
    labgates.lab_pod,
    labgates.lab,
)
