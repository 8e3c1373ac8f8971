"""Home volume decisions (pure): the claim created and given the owners its reclaim
policy asks for, and whether the lab may start on it: bound (or its class binds on first
consumer), still another session's or another user's, refused, lost, or of a missing
storage class. :func:`gate` is :mod:`decide`'s home volume gate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelsession.client.resources import Reason
from kernelsession.operator import homeclaim
from kernelsession.operator import status as st
from kernelsession.operator.actions import Action, Create, Decision, Patch
from kernelsession.operator.gatepass import Pass
from kernelsession.operator.observe import Observation
from kernelsession.operator.quotas import QUOTA_EXCEEDED, quota_message, quota_refusal


def claim_actions(obs: Observation) -> list[Action]:
    """Create the home claim when missing; give one that is this user's and no other
    session's the owners its ``reclaimPolicy`` asks for."""
    claim = homeclaim.home_claim(obs.body)
    if claim is None:
        return []
    if obs.claim is None:
        return [Create(claim)]
    if not is_ours(obs):
        return []
    owners = homeclaim.claim_owner_patch(obs.body, obs.claim.owners, obs.claim.resource_version)
    return [] if owners is None else [Patch("PersistentVolumeClaim", obs.claim.name, owners)]


def gate(p: Pass) -> Decision | None:
    """Stop on a home volume that can never serve (Failed) or is over quota (Pending);
    note why it is not bound yet and whether the pod waits for it."""
    verdict, p.home_unbound, p.home_gate = _verdict(p.obs, homeclaim.home_claim(p.obs.body))
    if verdict is None:
        return None
    return p.finish(verdict, requeue=p.cfg.cull_interval)


def _verdict(
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
    if found is not None and not is_ours(obs):
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


def is_ours(obs: Observation) -> bool:
    """The claim is this user's and no other (earlier) session owns it."""
    found = obs.claim
    uid = str(obs.body["metadata"].get("uid") or "")
    return (
        found is not None
        and found.user == obs.spec.get("user")
        and all(owner == uid for owner in found.owners)
    )
