"""Pure status computation: phases, reasons and a status that is stable when nothing changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kernelsession.operator import status as st
from kernelsession.operator.podview import read_pod

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def pod(
    *,
    phase: str = "Running",
    ip: str | None = "127.0.1.2",
    ready: bool = True,
    waiting: tuple[str, str] | None = None,
    restarts: int = 0,
    created: datetime = NOW - timedelta(seconds=5),
    unschedulable: str | None = None,
    last_exit: int | None = None,
) -> Any:
    state: dict[str, Any] = {"running": {"startedAt": "x"}}
    if waiting:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": unschedulable,
            }
        )
    cs: dict[str, Any] = {"restartCount": restarts, "state": state}
    if last_exit is not None:
        cs["lastState"] = {"terminated": {"exitCode": last_exit, "message": "boom"}}
    return read_pod(
        {
            "metadata": {"name": "alice-lab-abc", "creationTimestamp": st.fmt_time(created)},
            "status": {
                "phase": phase,
                "podIP": ip,
                "conditions": conditions,
                "containerStatuses": [cs],
            },
        }
    )


def judge(p: Any, probe_ok: bool = True, timeout: int = 300) -> st.Verdict:
    return st.judge(
        p,
        image="img:1",
        probe_ok=probe_ok,
        probe_error=None if probe_ok else "ConnectError",
        now=NOW,
        start_timeout=timeout,
    )


def test_ready_needs_pod_ready_and_the_api_answering() -> None:
    assert judge(pod()).phase == st.READY
    assert judge(pod(), probe_ok=False).phase == st.STARTING
    assert judge(pod(ready=False)).phase == st.STARTING
    assert judge(None).phase == st.PENDING
    assert judge(pod(phase="Pending", ip=None, ready=False), probe_ok=False).phase == st.PENDING


def test_failure_reasons_are_immediate_and_actionable() -> None:
    cases = {
        ("ErrImagePull", "not found"): ("ImagePullFailed", "spec.image"),
        ("ImagePullBackOff", "back-off"): ("ImagePullFailed", "spec.image"),
        ("CreateContainerConfigError", 'secret "x" not found'): ("ConfigError", "spec.env"),
        ("RunContainerError", "exec: jupyter: not found"): ("CannotRun", "spec.image"),
        ("CrashLoopBackOff", "back-off 10s"): ("CrashLoop", "restarts"),
    }
    for waiting, (reason, hint) in cases.items():
        v = judge(pod(waiting=waiting, ready=False, restarts=3, last_exit=1), probe_ok=False)
        assert (v.phase, v.reason) == (st.FAILED, reason), waiting
        assert hint in v.message
    v = judge(pod(unschedulable="0/1 nodes match", phase="Pending", ip=None), probe_ok=False)
    assert (v.phase, v.reason) == (st.FAILED, "Unschedulable")
    assert "0/1 nodes match" in v.message
    assert "spec.nodeSelector" in v.message


@pytest.mark.parametrize(
    "message",
    [
        "failed to sync secret cache: timed out waiting for the condition",
        "failed to sync configmap cache: timed out waiting for the condition",
        "services have not yet been read at least once, cannot construct envvars",
    ],
)
def test_a_kubelet_catching_up_is_waited_for_not_failed(message: str) -> None:
    # seen in CI: a kubelet just started (make run) could not sync its Secret cache in
    # time for the token Secret; it retries by itself and the lab then starts
    waiting = ("CreateContainerConfigError", message)
    young = pod(phase="Pending", ip=None, ready=False, waiting=waiting)
    v = judge(young, probe_ok=False)
    assert (v.phase, v.reason) == (st.PENDING, "PodPending")
    assert message in v.message
    # bounded by the start timeout, then the user's to check
    old = pod(
        phase="Pending",
        ip=None,
        ready=False,
        waiting=waiting,
        created=NOW - timedelta(seconds=400),
    )
    v = judge(old, probe_ok=False)
    assert (v.phase, v.reason) == (st.FAILED, "ConfigError")
    assert message in v.message
    assert "spec.env" in v.message
    # a missing Secret is still the user's to fix, at once
    missing = ("CreateContainerConfigError", "couldn't find key k in Secret labs/db")
    v = judge(pod(phase="Pending", ip=None, ready=False, waiting=missing), probe_ok=False)
    assert (v.phase, v.reason) == (st.FAILED, "ConfigError")


def test_start_timeout_counts_from_pod_creation() -> None:
    young = pod(ready=False, created=NOW - timedelta(seconds=10))
    old = pod(ready=False, created=NOW - timedelta(seconds=400))
    assert judge(young, probe_ok=False).phase == st.STARTING
    v = judge(old, probe_ok=False)
    assert (v.phase, v.reason) == (st.FAILED, "StartTimeout")
    assert "300s" in v.message
    assert "ConnectError" in v.message


def test_restarted_lab_leaves_ready_with_reason() -> None:
    v = judge(pod(ready=False, restarts=1, last_exit=137), probe_ok=False)
    assert (v.phase, v.reason) == (st.STARTING, "LabRestarting")
    assert "137" in v.message


def test_render_is_stable_and_keeps_transition_time() -> None:
    p = pod()
    first = st.render(
        {}, judge(p), now=NOW, generation=2, url="http://x/", token_secret_name="alice-token", pod=p
    )
    assert first["phase"] == "Ready"
    assert first["observedGeneration"] == 2
    (cond,) = first["conditions"]
    assert cond["type"] == "Ready"
    assert cond["status"] == "True"
    assert first["readyTime"] == st.fmt_time(NOW)
    later = NOW + timedelta(minutes=5)
    second = st.render(
        first,
        judge(p),
        now=later,
        generation=2,
        url="http://x/",
        token_secret_name="alice-token",
        pod=p,
    )
    assert second == first
    assert st.status_patch(first, second) is None
    failed = st.render(
        first,
        judge(p, probe_ok=False),
        now=later,
        generation=2,
        url="http://x/",
        token_secret_name="alice-token",
        pod=p,
    )
    assert failed["conditions"][0]["lastTransitionTime"] == st.fmt_time(later)
    patch = st.status_patch(first, failed)
    assert patch is not None
    assert patch["phase"] == "Starting"


def test_status_patch_removes_vanished_fields() -> None:
    assert st.status_patch({"a": 1, "b": 2}, {"a": 1}) == {"b": None}
    assert st.status_patch({"a": 1}, {"a": 1}) is None


def test_pod_rejection_names_the_session_field() -> None:
    """The API server's words about the pod map to the session field to fix."""
    cases = {
        'pods "x" is forbidden: violates PodSecurity "restricted:latest": restricted volume '
        'types (volume "host" uses restricted volume type "hostPath")': "spec.volumes",
        'Pod "x" is invalid: spec.containers[0].resources.requests: Invalid value: "2": '
        "must be less than or equal to cpu limit of 1": "spec.resources",
        'Pod "x" is invalid: spec.containers[0].volumeMounts[0].name: Not found: "nope"': (
            "spec.volumeMounts"
        ),
        'Pod "x" is invalid: spec.volumes[0].nfs.server: Required value': "spec.volumes",
        "something unexpected": "spec.resources, spec.volumes and spec.volumeMounts",
    }
    for message, where in cases.items():
        verdict = st.pod_rejected(message)
        assert (verdict.phase, verdict.reason) == (st.FAILED, "PodRejected")
        assert verdict.message.endswith(f"Check {where}."), verdict.message
        assert message.rstrip(".") in verdict.message


def test_config_error_names_the_env_references_when_the_kubelet_does_not() -> None:
    """The kubelet's watch-based secret cache says only "failed to sync secret cache";
    the verdict names what spec.env references (never the token Secret)."""
    from datetime import UTC, datetime

    from kernelsession.operator.podview import read_pod
    from kernelsession.operator.status import judge

    pod = read_pod(
        {
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "containers": [
                    {
                        "env": [
                            {
                                "name": "JUPYTER_TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": "s-token", "key": "token"}},
                            },
                            {
                                "name": "X",
                                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}},
                            },
                        ],
                        "envFrom": [{"configMapRef": {"name": "settings"}}],
                    }
                ]
            },
            "status": {
                "containerStatuses": [
                    {
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": "failed to sync secret cache: timed out",
                            }
                        }
                    }
                ]
            },
        }
    )
    # created long ago: a cache that never syncs is the user's to check once the start
    # timeout is over (before, the kubelet is waited for: its retry names the Secret)
    verdict = judge(
        pod,
        image="lab",
        probe_ok=False,
        probe_error=None,
        now=datetime.now(UTC),
        start_timeout=60,
    )
    assert verdict.reason == "ConfigError"
    assert "Secret nope, ConfigMap settings" in verdict.message
    assert "s-token" not in verdict.message


def test_first_start_is_only_before_any_pod_was_named_or_ready() -> None:
    assert st.first_start({})  # nothing written yet
    assert st.first_start({"phase": st.PENDING, "reason": "Creating"})
    assert not st.first_start({"phase": st.PENDING, "podName": "lab-1"})  # made again
    assert not st.first_start({"phase": st.STARTING})
    assert not st.first_start({"phase": st.CULLED, "readyTime": "2026-12-05T10:00:00Z"})
    assert not st.first_start({"phase": st.READY, "podName": "lab-1"})


def test_last_activity_is_written_once_per_resolution() -> None:
    written = "2026-12-05T10:00:00.000000Z"
    base = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
    assert st.activity_to_write(written, base + timedelta(seconds=299), 300) == written
    moved = st.activity_to_write(written, base + timedelta(seconds=300), 300)
    assert moved == st.fmt_time(base + timedelta(seconds=300))
    assert st.activity_to_write(None, base, 300) == st.fmt_time(base)  # the first one
    assert st.activity_to_write(written, None, 300) == written  # nothing known: kept
    earlier = base - timedelta(seconds=10)  # a new lab pod's activity: written as it is
    assert st.activity_to_write(written, earlier, 300) == st.fmt_time(earlier)
    assert st.activity_to_write(written, base + timedelta(seconds=1), 0) != written
