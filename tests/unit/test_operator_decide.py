"""The decision, pure: every phase transition from a table of observed situations."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kernelsession.operator import builders, labpod, naming
from kernelsession.operator import status as st
from kernelsession.operator.actions import (
    Create,
    CreateToken,
    Decision,
    Delete,
    DeletePod,
    Emit,
    Patch,
    RecordSpawn,
    WriteStatus,
)
from kernelsession.operator.config import IngressSettings, Settings
from kernelsession.operator.decide import decide
from kernelsession.operator.labapi import KernelActivity, LabActivity
from kernelsession.operator.labgates import RECHECK_GROWTH
from kernelsession.operator.observe import (
    ChildView,
    ClaimView,
    HomeView,
    Observation,
    asks_lab,
    settled,
)
from kernelsession.operator.podview import read_pod

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
CFG = Settings(
    url_mode="pod-ip",
    cull_interval=30,
    starting_interval=1,
    home_interval=5,
    unschedulable_grace=120,
    default_idle_timeout=3600,
)
UID = "secret-uid-1"


def session(
    spec: dict[str, Any] | None = None,
    status: dict[str, Any] | None = None,
    *,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "alice",
        "namespace": "labs",
        "uid": "ks-uid",
        "generation": generation,
        "annotations": annotations or {},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-22T11:59:00Z"
    return {"metadata": meta, "spec": {"user": "alice", **(spec or {})}, "status": status or {}}


def desired_name(body: dict[str, Any], cfg: Settings = CFG) -> str:
    return str(labpod.lab_pod(body, cfg, UID)["metadata"]["name"])


def pod(
    body: dict[str, Any],
    *,
    name: str | None = None,
    ready: bool = True,
    phase: str = "Running",
    unschedulable: str | None = None,
    since: datetime | None = None,
    created: datetime = NOW - timedelta(seconds=10),
    deleting: bool = False,
    cfg: Settings = CFG,
    spec_hash: str | None = "",
) -> Any:
    """A lab pod of ``body`` as the watch shows it. Named other than the desired pod, it
    is a pod of another spec (``spec_hash`` "" picks "other-spec"); ``spec_hash`` None:
    a pod of an operator that did not label it."""
    conditions: list[dict[str, Any]] = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
                "lastTransitionTime": st.fmt_time(since or created),
            }
        )
    meta: dict[str, Any] = {
        "name": name or desired_name(body, cfg),
        "creationTimestamp": st.fmt_time(created),
    }
    if deleting:
        meta["deletionTimestamp"] = st.fmt_time(NOW)
    manifest = labpod.lab_pod(body, cfg, UID)
    labels = dict(manifest["metadata"]["labels"])
    if spec_hash is None:
        labels.pop(naming.SPEC_HASH_LABEL)
    elif spec_hash or name:
        labels[naming.SPEC_HASH_LABEL] = spec_hash or "other-spec"
    meta["labels"] = labels
    return read_pod(
        {
            "metadata": meta,
            "spec": manifest["spec"],
            "status": {
                "phase": "Pending" if unschedulable else phase,
                "podIP": None if unschedulable else "127.0.1.2",
                "conditions": conditions,
                "containerStatuses": []
                if unschedulable
                else [{"restartCount": 0, "state": {"running": {}}}],
            },
        }
    )


def idle(seconds: float) -> LabActivity:
    at = NOW - timedelta(seconds=seconds)
    return LabActivity(at, at, (KernelActivity("idle", 0, at),))


def view(manifest: dict[str, Any] | None, resource_version: str = "7") -> ChildView | None:
    """A child as the watch would show it, exactly as built."""
    if manifest is None:
        return None
    meta = manifest["metadata"]
    return ChildView(
        meta["name"], manifest["spec"], meta.get("annotations") or {}, resource_version
    )


def obs(body: dict[str, Any], cfg: Settings = CFG, **kw: Any) -> Observation:
    """The session with its Service, NetworkPolicy (and Ingress) in shape."""
    base: dict[str, Any] = {
        "body": body,
        "now": NOW,
        "has_service": True,
        "policy": view(builders.network_policy(body, cfg)),
        "ingress": view(builders.ingress(body, cfg)),
        "token_uid": UID,
    }
    fields = base | kw
    if fields["token_uid"] is not None and "desired_pod" not in fields:
        # observe() computes the desired pod once the token Secret exists
        fields["desired_pod"] = labpod.lab_pod(body, cfg, fields["token_uid"])
    return Observation(**fields)


def status_of(d: Decision) -> dict[str, Any]:
    assert d.status is not None
    return dict(d.status)


def kinds(d: Decision) -> list[str]:
    return [a.kind for a in d.of(Create)]


def deleted(d: Decision) -> list[str]:
    return [a.name for a in d.of(DeletePod)]


def emitted(d: Decision) -> list[str]:
    return [a.reason for a in d.of(Emit)]


# -- a new session ------------------------------------------------------------------
def test_new_session_creates_token_and_children_then_looks_again_at_once() -> None:
    d = decide(obs(session(), token_uid=None, has_service=False, policy=None), CFG)
    assert d.of(CreateToken)
    assert kinds(d) == ["Service", "NetworkPolicy"]
    assert d.requeue_after == 0
    assert not d.of(WriteStatus)  # no status until there is something to say


def test_token_exists_creates_the_pod_pending() -> None:
    body = session()
    d = decide(obs(body), CFG)
    assert kinds(d) == ["Pod"]
    assert status_of(d)["phase"] == st.PENDING
    assert status_of(d)["reason"] == "Creating"
    assert d.requeue_after == CFG.starting_recheck  # the new pod's events wake it


def test_ready_lab_writes_ready_with_spawn_time_and_event() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body),), activity=idle(1)), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.READY, "LabReady")
    assert s["url"] == "http://127.0.1.2:8888/"
    assert d.of(RecordSpawn)[0].seconds == pytest.approx(10)
    assert emitted(d) == ["Ready"]
    # idle 1 s of 3600: nothing is due before the longest gap between looks
    assert d.requeue_after == max(CFG.cull_interval, CFG.activity_resolution)


def test_a_ready_lab_is_looked_at_again_when_its_culling_falls_due() -> None:
    body = session(status={"phase": "Ready", "podName": "x"})
    warning = CFG.cull_warning
    near = 3600 - warning - 40  # its CullingSoon is 40 s away
    d = decide(obs(body, pods=(pod(body),), activity=idle(near)), CFG)
    assert d.requeue_after == pytest.approx(40, abs=0.2)
    assert "CullingSoon" not in emitted(d)
    warned = decide(obs(body, pods=(pod(body),), activity=idle(3600 - 15)), CFG)
    assert "CullingSoon" in emitted(warned)
    assert warned.requeue_after == pytest.approx(15, abs=0.2)  # then the cull
    culled = decide(obs(body, pods=(pod(body),), activity=idle(3600 - 15 + 15.1)), CFG)
    assert status_of(culled)["phase"] == st.CULLED


def test_a_ready_lab_with_a_client_on_an_idle_kernel_is_asked_every_cull_interval() -> None:
    body = session(status={"phase": "Ready", "podName": "x"})
    d = decide(obs(body, pods=(pod(body),), activity=connected(3000)), CFG)
    assert d.requeue_after == CFG.cull_interval
    busy_lab = decide(obs(body, pods=(pod(body),), activity=busy(3000)), CFG)
    # busy now: idle from now at the earliest, so nothing is due for an idle timeout
    assert busy_lab.requeue_after == max(CFG.cull_interval, CFG.activity_resolution)


def test_steady_ready_state_writes_nothing() -> None:
    body = session()
    first = decide(obs(body, pods=(pod(body),), activity=idle(1)), CFG)
    settled = session(status=dict(first.status or {}))
    again = decide(obs(settled, pods=(pod(settled),), activity=idle(1)), CFG)
    assert again.actions == ()
    assert again.phase == st.READY


def test_pod_not_answering_yet_is_starting() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body, ready=False),), probe_error="ConnectError"), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.STARTING, "LabStarting")


# -- a start's progress steps are held, its outcome is written at once ---------------
def _creating(generation: int = 1) -> dict[str, Any]:
    """A session whose status this process wrote as Pending/Creating."""
    first = decide(obs(session(generation=generation)), CFG)
    return session(status=dict(first.status or {}), generation=generation)


def test_a_progress_step_soon_after_the_last_write_is_held_until_it_lasts() -> None:
    body = _creating()
    starting = (pod(body, ready=False),)
    held = decide(obs(body, pods=starting, status_age=1.0), CFG)
    assert not held.of(WriteStatus)
    assert held.phase == st.STARTING  # known to this process, not written yet
    assert held.requeue_after == pytest.approx(CFG.status_hold - 1.0 + 0.1)
    due = decide(obs(body, pods=starting, status_age=CFG.status_hold), CFG)
    assert (status_of(due)["phase"], status_of(due)["reason"]) == (st.STARTING, "LabStarting")
    assert due.of(WriteStatus)


def test_a_lab_that_answers_while_its_start_is_held_is_written_ready_at_once() -> None:
    body = _creating()
    d = decide(obs(body, pods=(pod(body),), activity=idle(1), status_age=0.5), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.READY, "LabReady")
    assert d.of(WriteStatus)
    assert emitted(d) == ["Ready"]


def test_what_a_user_may_act_on_and_a_new_generation_are_never_held() -> None:
    body = _creating()
    gone = pod(body, ready=False, phase="Failed")
    failed = decide(obs(body, pods=(gone,), status_age=0.5), CFG)
    assert status_of(failed)["phase"] == st.FAILED
    assert failed.of(WriteStatus)
    later = session(status=dict(body["status"]), generation=2)  # the spec changed since
    d = decide(obs(later, pods=(pod(later, ready=False),), status_age=0.5), CFG)
    assert status_of(d)["observedGeneration"] == 2
    assert d.of(WriteStatus)
    assert d.requeue_after == CFG.starting_recheck


def test_a_new_sessions_first_status_waits_until_the_session_is_as_old_as_the_hold() -> None:
    young = session()
    young["metadata"]["creationTimestamp"] = st.fmt_time(NOW - timedelta(seconds=2))
    d = decide(obs(young), CFG)
    assert not d.of(WriteStatus)
    assert d.phase == st.PENDING  # known, written when it has lasted or is superseded
    assert kinds(d) == ["Pod"]  # the start itself is not held
    assert d.requeue_after <= CFG.status_hold - 2.0 + 0.1
    answered = decide(obs(young, pods=(pod(young),), activity=idle(1)), CFG)
    assert status_of(answered)["phase"] == st.READY  # an outcome: written at once
    assert answered.of(WriteStatus)
    old = session()
    old["metadata"]["creationTimestamp"] = st.fmt_time(NOW - timedelta(seconds=CFG.status_hold))
    assert status_of(decide(obs(old), CFG))["reason"] == "Creating"
    ahead = session()  # the API server's clock ahead of this one's: held no longer
    ahead["metadata"]["creationTimestamp"] = st.fmt_time(NOW + timedelta(seconds=60))
    late = decide(obs(ahead), CFG)
    assert not late.of(WriteStatus)
    assert late.requeue_after <= CFG.status_hold + 0.1


def test_a_new_session_that_queued_for_its_first_pass_is_held_from_that_pass() -> None:
    queued = session()  # created 40 s ago; this process gets to it only now
    queued["metadata"]["creationTimestamp"] = st.fmt_time(NOW - timedelta(seconds=40))
    first = decide(obs(queued, acting_age=0.0), CFG)
    assert not first.of(WriteStatus)
    assert kinds(first) == ["Pod"]
    assert first.requeue_after <= CFG.status_hold + 0.1
    ready = decide(obs(queued, pods=(pod(queued),), activity=idle(1), acting_age=3.0), CFG)
    assert [w.phase for w in ready.of(WriteStatus)] == [st.READY]  # one write for the start
    lasted = decide(obs(queued, acting_age=CFG.status_hold), CFG)
    assert status_of(lasted)["reason"] == "Creating"


def test_the_first_status_and_a_zero_hold_are_written_at_once() -> None:
    body = _creating()
    starting = (pod(body, ready=False),)
    assert decide(obs(body, pods=starting), CFG).of(WriteStatus)  # not written since start
    eager = replace(CFG, status_hold=0.0)
    assert decide(obs(body, eager, pods=starting, status_age=0.1), eager).of(WriteStatus)


# -- a replica that starts acting looks at settled sessions in turn ------------------
def _raw_pod(body: dict[str, Any], *, ready: bool = True, deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"name": desired_name(body), "creationTimestamp": st.fmt_time(NOW)}
    if deleting:
        meta["deletionTimestamp"] = st.fmt_time(NOW)
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    # what the pod index holds: the watched pod as read by read_pod
    return read_pod({"metadata": meta, "status": {"phase": "Running", "conditions": [condition]}})


def test_a_ready_session_whose_one_pod_is_ready_is_settled() -> None:
    body = session()
    ready = decide(obs(body, pods=(pod(body),), activity=idle(1)), CFG)
    done = session(status=dict(ready.status or {}))
    assert settled(done, [_raw_pod(done)])
    assert not settled(done, [])  # its pod was deleted meanwhile
    assert not settled(done, [_raw_pod(done, ready=False)])
    assert not settled(done, [_raw_pod(done, deleting=True)])
    assert not settled(done, [_raw_pod(done), replace(_raw_pod(done), name="x")])
    changed = session(status=dict(ready.status or {}), generation=2)
    assert not settled(changed, [_raw_pod(changed)])  # a spec change to act on
    resumed = session(status=dict(ready.status or {}), annotations={naming.RESUME_ANNOTATION: "9"})
    assert not settled(resumed, [_raw_pod(resumed)])
    assert not settled(session(), [])  # no status yet: a new session


def test_a_culled_or_suspended_session_without_a_pod_is_settled_unless_it_wants_one() -> None:
    body = session({"culling": {"idleTimeoutSeconds": 60}})
    culled = decide(obs(body, pods=(pod(body),), activity=idle(3600)), CFG)
    gone = session({"culling": {"idleTimeoutSeconds": 60}}, status=dict(culled.status or {}))
    assert gone["status"]["phase"] == st.CULLED
    assert settled(gone, [])
    assert not settled(gone, [_raw_pod(gone)])  # a pod still to delete
    suspended = decide(obs(session({"suspend": True})), CFG)
    resting = session({"suspend": True}, status=dict(suspended.status or {}))
    assert settled(resting, [])
    woken = session({"suspend": False}, status=dict(suspended.status or {}))
    assert not settled(woken, [])  # unsuspended while this replica stood by


# -- a starting lab is followed by its pod's events, not by polling ------------------
def test_the_lab_api_is_asked_only_once_its_pod_is_ready() -> None:
    body = session()
    assert asks_lab(pod(body))
    assert not asks_lab(pod(body, ready=False))  # the kubelet's probe asks it meanwhile
    assert not asks_lab(pod(body, ready=False, phase="Pending"))
    assert not asks_lab(pod(body, deleting=True))
    assert not asks_lab(None)


def test_a_lab_whose_pod_is_not_ready_is_looked_at_again_only_as_a_fallback() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body, ready=False),)), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.STARTING, "LabStarting")
    assert d.requeue_after == CFG.starting_recheck  # the pod's Ready event wakes it


def test_the_fallback_look_at_a_slow_start_backs_off_with_the_pod_s_age() -> None:
    body = session(spec={"user": "alice", "startTimeoutSeconds": 3600})
    minutes = pod(body, ready=False, created=NOW - timedelta(seconds=100))
    d = decide(obs(body, pods=(minutes,)), CFG)
    assert d.requeue_after == pytest.approx(100)  # its age (looks double), not every 30 s
    ages = pod(body, ready=False, created=NOW - timedelta(seconds=3000))
    capped = decide(obs(body, pods=(ages,)), CFG)
    assert capped.requeue_after == pytest.approx(RECHECK_GROWTH * CFG.starting_recheck)
    near = session(spec={"user": "alice", "startTimeoutSeconds": 240})
    due = decide(
        obs(near, pods=(pod(near, ready=False, created=NOW - timedelta(seconds=200)),)), CFG
    )
    assert 40 < due.requeue_after < 41  # the start timeout comes first


def test_a_lab_whose_pod_is_ready_but_does_not_answer_is_asked_again_soon() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body),), probe_error="no answer within 0.25s"), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.STARTING, "LabStarting")
    assert "0.25s" in status_of(d)["message"]
    assert d.requeue_after == CFG.starting_interval  # no event would tell


def test_a_starting_lab_is_looked_at_when_its_start_timeout_falls_due() -> None:
    body = session({"startTimeoutSeconds": 15})
    starting = pod(body, ready=False, created=NOW - timedelta(seconds=10))
    d = decide(obs(body, pods=(starting,)), CFG)
    assert status_of(d)["reason"] == "LabStarting"
    assert 5 < d.requeue_after < CFG.starting_recheck  # just past the 15 s
    later = replace(obs(body, pods=(starting,)), now=NOW + timedelta(seconds=d.requeue_after))
    assert status_of(decide(later, CFG))["reason"] == "StartTimeout"


def test_an_unschedulable_lab_is_looked_at_when_its_grace_ends() -> None:
    body = session()
    waiting = pod(body, ready=False, unschedulable=UNSCHED, since=NOW - timedelta(seconds=110))
    d = decide(obs(body, pods=(waiting,)), CFG)
    assert status_of(d)["reason"] == "WaitingForCapacity"
    assert 10 < d.requeue_after < CFG.starting_recheck  # just past the 120 s grace
    later = replace(obs(body, pods=(waiting,)), now=NOW + timedelta(seconds=d.requeue_after))
    assert status_of(decide(later, CFG))["reason"] == "Unschedulable"


def test_a_failed_lab_is_not_polled() -> None:
    body = session({"image": "nope:1"})
    failing = pod(body, ready=False, phase="Failed")
    d = decide(obs(body, pods=(failing,)), CFG)
    assert status_of(d)["phase"] == st.FAILED
    assert d.requeue_after == CFG.starting_recheck


def test_spec_change_rolls_the_pod() -> None:
    body = session({"image": "new:2"}, {"phase": "Ready", "observedGeneration": 1}, generation=2)
    old = pod(body, name="alice-lab-old")
    d = decide(obs(body, pods=(old,)), CFG)
    assert deleted(d) == ["alice-lab-old"]
    assert not kinds(d)  # the new pod once the old one is gone


def test_deleting_session_is_terminating_and_touches_nothing() -> None:
    d = decide(obs(session(deleting=True)), CFG)
    assert [type(a) for a in d.actions] == [WriteStatus]
    assert status_of(d)["phase"] == st.TERMINATING


def test_missing_service_and_policy_are_recreated() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body),), activity=idle(1), has_service=False), CFG)
    assert "Service" in kinds(d)


# -- culling ------------------------------------------------------------------------
def test_idle_past_timeout_is_culled_with_resume_hint() -> None:
    body = session({"culling": {"idleTimeoutSeconds": 60}}, {"phase": "Ready"})
    p = pod(body, created=NOW - timedelta(seconds=600))
    d = decide(obs(body, pods=(p,), activity=idle(120)), CFG)
    assert d.of(DeletePod)[0].cull_reason == "IdleTimeout"
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.CULLED, "IdleTimeout")
    assert naming.RESUME_ANNOTATION in s["message"]
    assert "Culled" in emitted(d)


def test_a_cull_writes_culled_before_it_deletes_the_pod() -> None:
    # a status write that fails leaves the pod (the next pass culls again); a write that
    # lands makes the reason sticky, so a failed delete cannot get the lab started again
    body = session({"culling": {"idleTimeoutSeconds": 60}}, {"phase": "Ready"})
    p = pod(body, created=NOW - timedelta(seconds=600))
    d = decide(obs(body, pods=(p,), activity=idle(120)), CFG)
    order = [type(a) for a in d.actions if isinstance(a, (WriteStatus, DeletePod))]
    assert order == [WriteStatus, DeletePod]
    culled = session(
        {"culling": {"idleTimeoutSeconds": 60}},
        {"phase": st.CULLED, "reason": "IdleTimeout", "observedGeneration": 1},
    )
    again = decide(obs(culled, pods=(pod(culled),)), CFG)
    assert deleted(again) == [pod(culled).name]
    assert not kinds(again)  # nothing created: the lab is not started again


def test_idle_soon_warns_once() -> None:
    body = session({"culling": {"idleTimeoutSeconds": 600}})
    p = pod(body, created=NOW - timedelta(seconds=900))
    first = decide(obs(body, pods=(p,), activity=idle(400)), CFG)
    assert "CullingSoon" in emitted(first)
    assert first.warned
    second = decide(obs(body, pods=(p,), activity=idle(410), warned=True), CFG)
    assert "CullingSoon" not in emitted(second)
    assert second.warned


def test_culled_is_sticky_until_resumed() -> None:
    status = {"phase": "Culled", "reason": "IdleTimeout", "observedGeneration": 1}
    body = session(status=status)
    leftover = pod(body)
    d = decide(obs(body, pods=(leftover,)), CFG)
    assert deleted(d) == [leftover.name]
    assert not d.of(WriteStatus)
    assert d.phase == st.CULLED

    resumed = session(status=status, annotations={naming.RESUME_ANNOTATION: "7"})
    d = decide(obs(resumed), CFG)
    assert kinds(d) == ["Pod"]
    assert status_of(d)["resumeRequest"] == "7"
    assert "Resumed" in emitted(d)


def test_start_timeout_deletes_the_pod_and_fails() -> None:
    body = session({"startTimeoutSeconds": 30})
    p = pod(body, ready=False, created=NOW - timedelta(seconds=60))
    d = decide(obs(body, pods=(p,), probe_error="ConnectError"), CFG)
    assert deleted(d) == [p.name]
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.FAILED, "StartTimeout")


# -- suspend ------------------------------------------------------------------------
def test_suspend_deletes_the_pod_keeps_the_rest() -> None:
    body = session(
        {"suspend": True, "home": {"size": "1Gi"}},
        {"phase": "Ready", "tokenSecretName": "alice-token"},
        generation=2,
    )
    p = pod(body)
    d = decide(obs(body, pods=(p,), token_uid=None), CFG)
    assert deleted(d) == [p.name]
    assert not d.of(Create)
    assert not d.of(CreateToken)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.SUSPENDED, "Suspended")
    assert s["tokenSecretName"] == "alice-token"
    assert "url" not in s
    assert "podName" not in s
    assert '"suspend":false' in s["message"]
    assert emitted(d) == ["Suspended"]


def test_suspended_with_pod_gone_writes_nothing() -> None:
    body = session({"suspend": True})
    first = decide(obs(body), CFG)
    settled = session({"suspend": True}, dict(first.status or {}))
    assert decide(obs(settled), CFG).actions == ()


def test_resume_annotation_does_not_override_suspend() -> None:
    status = {"phase": "Suspended", "reason": "Suspended", "observedGeneration": 1}
    body = session({"suspend": True}, status, annotations={naming.RESUME_ANNOTATION: "1"})
    d = decide(obs(body), CFG)
    assert not d.of(Create)
    assert "resumeRequest" not in status_of(d)  # left for when it is unsuspended


def test_unsuspend_starts_the_lab_again() -> None:
    status = {"phase": "Suspended", "reason": "Suspended", "observedGeneration": 1}
    body = session({"suspend": False}, status, generation=2)
    d = decide(obs(body), CFG)
    assert kinds(d) == ["Pod"]
    assert status_of(d)["phase"] == st.PENDING
    assert "Resumed" in emitted(d)


def test_a_deleted_profile_stops_the_lab_without_its_spec() -> None:
    """The annotation the profile controller puts on a session whose LabProfile was
    deleted (Retain) stops the lab like spec.suspend; taking it away starts it again."""
    stopped = {naming.STOPPED_ANNOTATION: "erin"}
    body = session({"home": {"size": "1Gi"}}, {"phase": "Ready"}, annotations=stopped)
    p = pod(body)
    d = decide(obs(body, pods=(p,)), CFG)
    assert deleted(d) == [p.name]
    assert not d.of(Create)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.SUSPENDED, "ProfileDeleted")
    assert "LabProfile erin was deleted" in s["message"]
    assert "home volume are kept" in s["message"]
    assert emitted(d) == ["Suspended"]

    settled = session({"home": {"size": "1Gi"}}, dict(s), annotations=stopped)
    assert decide(obs(settled), CFG).actions == ()

    back = decide(obs(session({}, dict(s))), CFG)
    assert kinds(back) == ["Pod"]
    assert status_of(back)["phase"] == st.PENDING
    assert "Resumed" in emitted(back)


def test_suspend_then_resume_keeps_the_same_pod_name() -> None:
    """Same spec and token Secret: the same pod (hash) comes back, token unchanged."""
    (first,) = decide(obs(session()), CFG).of(Create)
    status = {
        "phase": "Suspended",
        "reason": "Suspended",
        "observedGeneration": 2,
        "tokenSecretName": "alice-token",
    }
    resumed = decide(obs(session({"suspend": False}, status, generation=3)), CFG)
    assert [c.name for c in resumed.of(Create)] == [first.name]
    assert not resumed.of(CreateToken)


# -- capacity -----------------------------------------------------------------------
UNSCHED = "0/1 nodes are available: 1 Insufficient cpu."


def test_unschedulable_waits_for_capacity_naming_the_request() -> None:
    body = session({"resources": {"requests": {"cpu": "64"}}})
    p = pod(body, unschedulable=UNSCHED, since=NOW - timedelta(seconds=30))
    d = decide(obs(body, pods=(p,)), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.PENDING, "WaitingForCapacity")
    assert "cpu=64" in s["message"]
    assert "Insufficient cpu" in s["message"]
    assert "120s" in s["message"]
    assert not deleted(d)


def test_unschedulable_after_grace_fails() -> None:
    body = session({"resources": {"requests": {"cpu": "64"}}})
    p = pod(body, unschedulable=UNSCHED, since=NOW - timedelta(seconds=121))
    d = decide(obs(body, pods=(p,)), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "Unschedulable")
    assert "cpu=64" in s["message"]
    assert "Unschedulable" in emitted(d)


def test_capacity_freed_within_grace_lets_it_start() -> None:
    body = session({"resources": {"requests": {"cpu": "2"}}})
    waiting = {"phase": "Pending", "reason": "WaitingForCapacity"}
    body["status"] = waiting
    d = decide(obs(body, pods=(pod(body),), activity=idle(1)), CFG)
    assert status_of(d)["phase"] == st.READY


def test_zero_grace_fails_at_once() -> None:
    body = session()
    p = pod(body, unschedulable=UNSCHED, since=NOW)
    d = decide(obs(body, pods=(p,)), replace(CFG, unschedulable_grace=0))
    assert status_of(d)["reason"] == "Unschedulable"


# -- home volume --------------------------------------------------------------------
HOME = {"home": {"size": "2Gi", "storageClassName": "fast"}}


def test_home_claim_is_created_and_the_pod_waits_for_it() -> None:
    body = session(HOME)
    d = decide(obs(body), CFG)
    assert kinds(d) == ["PersistentVolumeClaim"]
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.PENDING, "HomePending")


def test_unbound_immediate_claim_shows_its_event() -> None:
    body = session(HOME)
    claim = ClaimView("alice-home", "Pending", "fast", user="alice")
    home = HomeView("fast", True, "Immediate", "ProvisioningFailed: disk quota exceeded")
    d = decide(obs(body, claim=claim, home=home), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.PENDING, "HomePending")
    assert "disk quota exceeded" in s["message"]
    assert "alice-home" in s["message"]
    assert not kinds(d)
    assert d.requeue_after == CFG.home_interval


def test_wait_for_first_consumer_creates_the_pod() -> None:
    body = session(HOME)
    claim = ClaimView("alice-home", "Pending", "fast", user="alice")
    home = HomeView("fast", True, "WaitForFirstConsumer", None)
    d = decide(obs(body, claim=claim, home=home), CFG)
    assert kinds(d) == ["Pod"]


def test_pod_unschedulable_for_an_unbound_claim_is_home_pending() -> None:
    body = session(HOME)
    claim = ClaimView("alice-home", "Pending", "fast", user="alice")
    home = HomeView("fast", True, "WaitForFirstConsumer", None)
    p = pod(body, unschedulable="pod has unbound immediate PersistentVolumeClaims")
    d = decide(obs(body, claim=claim, home=home, pods=(p,)), CFG)
    assert status_of(d)["reason"] == "HomePending"


def test_missing_storage_class_says_so() -> None:
    body = session(HOME)
    claim = ClaimView("alice-home", "Pending", "fast", user="alice")
    d = decide(obs(body, claim=claim, home=HomeView("fast", False, None, None)), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "HomeUnavailable")
    assert "'fast'" in s["message"]
    assert "spec.home.storageClassName" in s["message"]
    assert not kinds(d)


def test_lost_claim_is_home_unavailable_and_no_pod_starts() -> None:
    body = session(HOME)
    claim = ClaimView("alice-home", "Lost", "fast", user="alice")
    d = decide(obs(body, claim=claim), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "HomeUnavailable")
    assert "alice-home lost its PersistentVolume" in s["message"]
    assert not kinds(d)
    assert "HomeUnavailable" in emitted(d)


def test_refused_claim_is_home_unavailable() -> None:
    body = session(HOME)
    d = decide(obs(body, rejected={"alice-home": "exceeded quota: storage"}), CFG)
    assert status_of(d)["reason"] == "HomeUnavailable"
    assert "exceeded quota" in status_of(d)["message"]


def test_bound_home_runs_the_lab_and_is_never_deleted() -> None:
    body = session(HOME, {"phase": "Ready"})
    claim = ClaimView("alice-home", "Bound", "fast", user="alice")
    p = pod(body, created=NOW - timedelta(seconds=9000))
    d = decide(obs(body, claim=claim, pods=(p,), activity=idle(5000)), CFG)
    assert status_of(d)["phase"] == st.CULLED
    assert deleted(d) == [p.name]  # only the pod: decisions never delete a claim
    assert not kinds(d)


def test_home_mount_colliding_with_a_volume_mount_is_refused() -> None:
    body = session(
        {
            "home": {"size": "1Gi"},
            "volumes": [{"name": "x", "emptyDir": {}}],
            "volumeMounts": [{"name": "x", "mountPath": "/home/jovyan/"}],
        }
    )
    d = decide(obs(body), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "InvalidSpec")
    assert "spec.volumeMounts[0].mountPath" in s["message"]
    assert not kinds(d)


def test_rejected_pod_fails_naming_the_field_and_is_not_recreated() -> None:
    body = session({"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}})
    d = decide(obs(body, rejected={desired_name(body): "spec.containers[0].resources: bad"}), CFG)
    assert status_of(d)["reason"] == "PodRejected"
    assert "spec.resources" in status_of(d)["message"]
    assert not kinds(d)


def test_new_pod_starting_beside_the_old_one_is_rolling() -> None:
    body = session({"image": "new:2"}, {"phase": "Ready", "observedGeneration": 1}, generation=2)
    old = pod(body, name="alice-lab-old")
    new = pod(body, ready=False)
    d = decide(obs(body, pods=(old, new), probe_error="ConnectError"), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.STARTING, "Rolling")
    assert deleted(d) == ["alice-lab-old"]
    assert not kinds(d)  # the new pod exists
    assert d.requeue_after == CFG.starting_recheck  # its events (Ready) wake the session


def test_desired_pod_still_terminating_is_waited_for() -> None:
    """The pod of the same template is still going (e.g. resumed right after a cull):
    wait for it, neither create it again nor delete it twice."""
    body = session()
    d = decide(obs(body, pods=(pod(body, deleting=True),)), CFG)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.PENDING, "PodTerminating")
    assert not kinds(d)
    assert not deleted(d)


def test_lab_that_exited_fails_with_a_warning() -> None:
    body = session({}, {"phase": "Ready", "reason": "LabReady"})
    d = decide(obs(body, pods=(pod(body, phase="Succeeded", ready=False),)), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "LabExited")
    assert "The lab exited (Succeeded" in s["message"]
    (warning,) = [e for e in d.of(Emit) if e.warning]
    assert (warning.reason, warning.message) == ("LabExited", s["message"])
    assert not kinds(d)  # a failed lab is not started again on its own


def test_terminating_old_pod_while_rolling() -> None:
    body = session({"image": "new:2"}, generation=2)
    old = pod(body, name="alice-lab-old", deleting=True)
    d = decide(obs(body, pods=(old,)), CFG)
    assert not deleted(d)  # already going
    assert not kinds(d)  # the new pod once the old one is gone


# -- an Ingress per session ------------------------------------------------------------
ROUTED = replace(
    CFG,
    ingress=IngressSettings(controller_namespace="edge", class_name="traefik", host="labs.test"),
)


def test_with_ingress_a_new_session_gets_its_route() -> None:
    new = obs(session(), ROUTED, token_uid=None, has_service=False, policy=None, ingress=None)
    d = decide(new, ROUTED)
    assert kinds(d) == ["Service", "NetworkPolicy", "Ingress"]


def test_ready_lab_behind_an_ingress_reports_both_urls() -> None:
    body = session()
    mine = pod(body, cfg=ROUTED)
    d = decide(obs(body, ROUTED, pods=(mine,), activity=idle(5)), ROUTED)
    status = status_of(d)
    assert status["phase"] == st.READY
    assert status["externalURL"] == "http://labs.test/labs/labs/alice/"
    assert status["url"] == "http://127.0.1.2:8888/labs/labs/alice/"


def test_an_edited_ingress_is_patched_back() -> None:
    body = session()
    good = builders.ingress(body, ROUTED)
    assert good is not None
    edited = json.loads(json.dumps(good))
    edited["spec"]["rules"][0]["host"] = "elsewhere.test"
    d = decide(obs(body, ROUTED, ingress=view(edited, "42")), ROUTED)
    (patch,) = d.of(Patch)
    assert (patch.kind, patch.name) == ("Ingress", "alice")
    assert patch.patch["spec"]["rules"] == good["spec"]["rules"]
    assert patch.patch["metadata"]["resourceVersion"] == "42"


def test_turning_ingresses_on_patches_the_policy_and_off_deletes_the_route() -> None:
    body = session()
    old_policy = view(builders.network_policy(body, CFG))
    on = decide(obs(body, ROUTED, policy=old_policy, ingress=None), ROUTED)
    (patch,) = on.of(Patch)
    assert patch.kind == "NetworkPolicy"
    assert len(patch.patch["spec"]["ingress"][0]["from"]) == 3
    assert kinds(on) == ["Ingress", "Pod"]  # and the pod rolls onto its base_url
    route = view(builders.ingress(body, ROUTED))
    off = decide(obs(body, CFG, ingress=route), CFG)
    assert [(a.kind, a.name) for a in off.of(Delete)] == [("Ingress", "alice")]
    assert "externalURL" not in status_of(off)


def test_a_suspended_session_keeps_its_route() -> None:
    body = session({"suspend": True})
    d = decide(obs(body, ROUTED, pods=()), ROUTED)
    assert not d.of(Delete)
    assert not d.of(Patch)
    assert not d.of(Create)


# -- operator upgrades and settings changes (rollout) ----------------------------------
OLD = replace(CFG, lab_extra_args=("--ServerApp.shutdown_no_activity_timeout=0",))
"""The operator's settings before a change: its labs' template differs from CFG's."""


def busy(seconds: float = 1) -> LabActivity:
    at = NOW - timedelta(seconds=seconds)
    return LabActivity(at, at, (KernelActivity("busy", 1, at),))


def connected(seconds: float = 1) -> LabActivity:
    at = NOW - timedelta(seconds=seconds)
    return LabActivity(at, at, (KernelActivity("idle", 1, at),))


def condition(d: Decision, kind: str) -> dict[str, Any]:
    return next(c for c in status_of(d)["conditions"] if c["type"] == kind)


def test_an_outdated_lab_waiting_for_idle_is_asked_every_cull_interval() -> None:
    body = session(status={"phase": "Ready", "observedGeneration": 1})
    running = pod(body, cfg=OLD)
    rolling = replace(CFG, rollout="idle")
    d = decide(obs(body, pods=(running,), activity=busy(), rollout_slots=0), rolling)
    assert not d.of(DeletePod)
    assert d.requeue_after == CFG.cull_interval  # it may turn idle at any moment
    kept = decide(obs(body, pods=(running,), activity=busy()), CFG)  # rollout never
    assert kept.requeue_after == max(CFG.cull_interval, CFG.activity_resolution)


def test_settings_change_keeps_the_running_lab_and_says_it_is_outdated() -> None:
    body = session(status={"phase": "Ready", "observedGeneration": 1})
    running = pod(body, cfg=OLD)
    assert running.name != desired_name(body)  # the template did change
    d = decide(obs(body, pods=(running,), activity=busy()), CFG)
    assert not deleted(d)
    assert not kinds(d)
    s = status_of(d)
    assert (s["phase"], s["podName"]) == (st.READY, running.name)
    up = condition(d, "UpToDate")
    assert (up["status"], up["reason"]) == ("False", "TemplateChanged")


def test_current_lab_is_up_to_date() -> None:
    body = session()
    d = decide(obs(body, pods=(pod(body),), activity=idle(1)), CFG)
    assert condition(d, "UpToDate")["status"] == "True"


def test_pod_of_an_operator_that_did_not_label_spec_hash_is_kept() -> None:
    body = session(status={"phase": "Ready"})
    legacy = pod(body, cfg=OLD, spec_hash=None)
    d = decide(obs(body, pods=(legacy,), activity=idle(1)), CFG)
    assert not deleted(d)
    assert not kinds(d)
    assert status_of(d)["podName"] == legacy.name


def test_spec_change_replaces_an_outdated_lab() -> None:
    before = session()
    running = pod(before, cfg=OLD)
    after = session({"image": "new:2"}, {"phase": "Ready", "observedGeneration": 1}, generation=2)
    d = decide(obs(after, pods=(running,), activity=busy()), CFG)
    assert deleted(d) == [running.name]
    assert not kinds(d)  # the new pod once the old one is gone


def test_culling_or_start_timeout_change_never_restarts_the_lab() -> None:
    before = session()
    running = pod(before)
    after = session(
        {"culling": {"idleTimeoutSeconds": 60000}, "startTimeoutSeconds": 900},
        {"phase": "Ready", "observedGeneration": 1},
        generation=2,
    )
    d = decide(obs(after, pods=(running,), activity=idle(1)), CFG)
    assert not deleted(d)
    assert not kinds(d)
    assert condition(d, "UpToDate")["status"] == "False"  # the probe settings apply later


def test_resume_annotation_starts_an_outdated_lab_with_the_new_template() -> None:
    body = session(
        status={"phase": "Ready", "resumeRequest": "1"},
        annotations={naming.RESUME_ANNOTATION: "2"},
    )
    running = pod(body, cfg=OLD)
    d = decide(obs(body, pods=(running,), activity=idle(1)), CFG)
    assert deleted(d) == [running.name]
    assert not kinds(d)  # the new pod once the old one is gone


def test_outdated_pod_that_does_not_run_is_replaced() -> None:
    body = session()
    stuck = pod(body, cfg=OLD, ready=False, phase="Failed")
    d = decide(obs(body, pods=(stuck,)), CFG)
    assert deleted(d) == [stuck.name]
    assert not kinds(d)  # the new pod once the old one is gone


IDLE_ROLLOUT = replace(CFG, rollout="idle", rollout_max=2)


def test_idle_rollout_replaces_an_idle_outdated_lab_with_an_event() -> None:
    body = session(status={"phase": "Ready"})
    running = pod(body, cfg=OLD)
    d = decide(
        obs(body, IDLE_ROLLOUT, pods=(running,), activity=idle(5), rollout_slots=1), IDLE_ROLLOUT
    )
    assert [(a.name, a.rollout) for a in d.of(DeletePod)] == [(running.name, True)]
    assert not kinds(d)  # the new pod once the old one is gone
    assert "RollingOut" in emitted(d)
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.STARTING, "Rolling")


@pytest.mark.parametrize(
    ("activity", "slots"),
    [(busy(), 1), (connected(), 1), (idle(5), 0), (None, 1)],
    ids=["busy", "connected", "no-slot", "not-answering"],
)
def test_idle_rollout_never_replaces_a_busy_connected_or_unseen_lab(
    activity: LabActivity | None, slots: int
) -> None:
    body = session(status={"phase": "Ready"})
    running = pod(body, cfg=OLD)
    d = decide(
        obs(body, IDLE_ROLLOUT, pods=(running,), activity=activity, rollout_slots=slots),
        IDLE_ROLLOUT,
    )
    assert not deleted(d)
    assert not kinds(d)
    assert "RollingOut" not in emitted(d)


def test_without_a_rollout_policy_an_idle_outdated_lab_is_kept() -> None:
    body = session(status={"phase": "Ready"})
    running = pod(body, cfg=OLD)
    d = decide(obs(body, pods=(running,), activity=idle(5), rollout_slots=5), CFG)
    assert not deleted(d)
    assert not kinds(d)


def test_outdated_lab_keeps_its_own_base_path_when_ingresses_are_turned_on() -> None:
    body = session(status={"phase": "Ready"})
    running = pod(body, cfg=CFG)
    d = decide(obs(body, ROUTED, pods=(running,), activity=idle(1)), ROUTED)
    assert not deleted(d)
    assert status_of(d)["url"] == "http://127.0.1.2:8888/"
    # its route's path is not where it serves: no external URL until its next start
    assert "externalURL" not in status_of(d)
    routed = pod(body, cfg=ROUTED)
    d = decide(obs(body, ROUTED, pods=(routed,), activity=idle(1)), ROUTED)
    assert status_of(d)["externalURL"].endswith("/labs/labs/alice/")


def test_cull_of_a_lab_without_home_says_its_files_are_gone() -> None:
    body = session({"culling": {"idleTimeoutSeconds": 60}}, {"phase": "Ready"})
    p = pod(body, created=NOW - timedelta(seconds=600))
    d = decide(obs(body, pods=(p,), activity=idle(120)), CFG)
    assert "files are gone" in status_of(d)["message"]
    culled = next(a for a in d.of(Emit) if a.reason == "Culled")
    assert "files are gone" in culled.message
    with_home = session({"culling": {"idleTimeoutSeconds": 60}, "home": {}}, {"phase": "Ready"})
    p = pod(with_home, created=NOW - timedelta(seconds=600))
    d = decide(
        obs(
            with_home,
            pods=(p,),
            activity=idle(120),
            claim=ClaimView("alice-home", "Bound", None, user="alice"),
        ),
        CFG,
    )
    assert "files are gone" not in status_of(d)["message"]


# -- a token left by an earlier session of the same name --------------------------------
def test_token_of_an_earlier_session_is_never_used_and_waited_for() -> None:
    body = session()
    d = decide(obs(body, token_uid=None, stale_token_uid="old-secret-uid"), CFG)
    assert not d.of(CreateToken)
    assert not [a for a in d.of(Create) if a.kind == "Pod"]
    assert (status_of(d)["phase"], status_of(d)["reason"]) == (st.PENDING, "TokenPending")
    assert "tokenSecretName" not in status_of(d)
    again = decide(obs(body, token_uid=None), CFG)  # the garbage collector removed it
    assert again.of(CreateToken)


# -- home volumes outlive sessions ------------------------------------------------------
def test_retained_home_of_the_same_user_is_mounted_again() -> None:
    body = session({"home": {}})
    claim = ClaimView("alice-home", "Bound", None, user="alice")
    d = decide(obs(body, claim=claim), CFG)
    assert kinds(d) == ["Pod"]
    assert not d.of(Patch)


def test_home_of_another_user_is_a_conflict_and_never_mounted() -> None:
    body = session({"home": {}})
    claim = ClaimView("alice-home", "Bound", None, user="bob")
    d = decide(obs(body, claim=claim), CFG)
    s = status_of(d)
    assert (s["phase"], s["reason"]) == (st.FAILED, "HomeConflict")
    assert "'bob'" in s["message"]
    assert not kinds(d)
    assert not d.of(Patch)


def test_claim_owned_by_the_session_loses_its_owner_under_retain() -> None:
    body = session({"home": {}})
    claim = ClaimView(
        "alice-home", "Bound", None, user="alice", owners=("ks-uid",), resource_version="4"
    )
    d = decide(obs(body, claim=claim), CFG)
    (patch,) = d.of(Patch)
    assert patch.kind == "PersistentVolumeClaim"
    assert patch.patch["metadata"]["ownerReferences"] is None


def test_claim_of_an_earlier_session_being_deleted_is_waited_for() -> None:
    body = session({"home": {}})
    claim = ClaimView("alice-home", "Bound", None, user="alice", owners=("old-ks-uid",))
    d = decide(obs(body, claim=claim), CFG)
    assert not kinds(d)
    assert not d.of(Patch)
    assert status_of(d)["reason"] == "HomePending"


def test_the_new_pod_is_created_once_the_old_one_is_gone() -> None:
    body = session({"image": "new:2"}, {"phase": "Starting"}, generation=2)
    going = pod(body, name="alice-lab-old", deleting=True)
    assert not kinds(decide(obs(body, pods=(going,)), CFG))
    assert kinds(decide(obs(body, pods=()), CFG)) == ["Pod"]


# -- the lab pod, chosen once in the observation -------------------------------------
def test_observation_chooses_the_lab_pod_the_probe_and_the_gates_share() -> None:
    body = session(status={"phase": "Ready"})
    running = pod(body, cfg=OLD)  # an outdated template, the same spec
    seen = obs(body, pods=(running,))
    assert (seen.labs.current, seen.labs.outdated) == (running, True)
    resumed = session(
        status={"phase": "Ready", "resumeRequest": "1"},
        annotations={naming.RESUME_ANNOTATION: "2"},
    )
    asked = obs(resumed, pods=(running,))
    assert asked.labs.current is None  # a resume starts the new template
    assert asked.labs.stale == (running,)
    assert asked.lab_pods(restart=False).current == running  # it still runs meanwhile


def test_before_the_token_every_pod_is_stale() -> None:
    body = session()
    leftover = pod(body)
    seen = obs(body, pods=(leftover,), token_uid=None)
    assert seen.desired_pod is None
    assert (seen.labs.current, seen.labs.stale) == (None, (leftover,))
