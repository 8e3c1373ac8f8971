"""The context one decision pass shares between :mod:`decide`'s gates: what the pass
has gathered so far (child actions, events, the token Secret's name, the resume request,
the home volume's and the lab pod's findings), and :meth:`Pass.finish`, which renders the
status for a verdict and gives the :class:`~actions.Decision` (with when to look again).
Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kernelsession.client.resources import Reason
from kernelsession.operator import naming, rollout
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Action,
    Decision,
    DeletePod,
    Emit,
    RecordSpawn,
    WriteStatus,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.observe import Observation
from kernelsession.operator.podview import PodView

DEADLINE_MARGIN = 0.1
"""Seconds past a deadline at which its pass is due (the clock's ticks)."""


@dataclass
class Pass:
    """One decision pass: the observation and what the gates gathered so far."""

    obs: Observation
    cfg: Settings
    actions: list[Action] = field(default_factory=list)
    """Child actions so far (creates, patches, deletions), in order."""
    grants: list[Action] = field(default_factory=list)
    """Access to the token Secret for the session's users: after the lab pod's create
    (the lab starts two requests sooner; nothing in it waits for them)."""
    after_status: list[Action] = field(default_factory=list)
    """Child actions that must follow the status write: a cull's pod deletion. Should the
    write fail, the pod stays and the next pass decides the cull again; written first,
    ``Culled`` (a sticky reason) keeps the next pass from starting the lab again when
    the deletion fails instead."""
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
    """The session's lab pod and the pods to delete (set by :func:`labgates.lab_pod`)."""
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
        result = [*self.actions, *self.grants] if actions is None else list(actions)
        patch = st.status_patch(current, desired)
        created = st.parse_time(obs.body["metadata"].get("creationTimestamp"))
        wait = st.held_for(
            current,
            verdict,
            generation,
            obs.status_age,
            self.cfg.status_hold,
            (obs.now - created).total_seconds() if created else None,
            obs.acting_age,
        )
        if patch is not None and wait is not None:
            patch = None  # a progress step: written when it has lasted, or superseded
            requeue = min(requeue, wait + DEADLINE_MARGIN)
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
        result.extend(self.after_status)
        result.extend(self.events)
        return Decision(
            tuple(result), phase=verdict.phase, requeue_after=requeue, warned=warned, status=desired
        )


Gate = Callable[[Pass], Decision | None]
"""A gate: the decision when it knows the outcome, else None (the next gate decides)."""
