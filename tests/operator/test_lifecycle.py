"""A session end to end on the local cluster, with the operator under its own RBAC."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers import (
    INGRESS_HOST,
    LABS,
    apply_session,
    children,
    events_for,
    get_ks,
    lab_path,
    pod_condition,
    wait_for,
    wait_phase,
)

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SAMPLES = Path(__file__).parents[2] / "manifests" / "samples"


async def test_sample_becomes_ready_and_runs_code(
    installed: LocalCluster, operator: InClusterOperator, ks: KernelSessionClient
) -> None:
    installed.apply(SAMPLES / "minimal.yaml")
    try:
        waited = installed.kubectl(
            "-n", LABS, "wait", "--for=condition=Ready", "ks/alice", "--timeout=90s", timeout=120
        )
        assert "condition met" in waited.stdout
        status = (await ks.get("alice")).raw["status"]
        assert status["phase"] == "Ready"
        assert status["url"] == f"http://alice.labs.svc.cluster.local:8888{lab_path('alice')}"
        assert status["externalURL"] == f"http://{INGRESS_HOST}{lab_path('alice')}"
        assert status["tokenSecretName"] == "alice-token"
        assert status["observedGeneration"] == 1
        for key in ("podName", "startTime", "readyTime"):
            assert status[key]
        manager = await ks.lab_session("alice")
        async with manager as lab:
            assert await lab.run_python("print('hello from', 6 * 7)") == "hello from 42\n"

        kids = children(installed, "alice")
        assert sorted(kids) == ["Ingress", "NetworkPolicy", "Pod", "Secret", "Service"]
        assert len(kids["Pod"]) == 1
        uid = get_ks(installed, "alice")["metadata"]["uid"]
        for kind, objs in kids.items():
            for obj in objs:
                labels = obj["metadata"]["labels"]
                assert labels["app.kubernetes.io/managed-by"] == "kernelsession-operator", kind
                assert labels["kernelsession.dev/user"] == "alice", kind
                (ref,) = obj["metadata"]["ownerReferences"]
                assert (ref["uid"], ref["controller"]) == (uid, True), kind

        pod = kids["Pod"][0]
        assert pod["spec"]["automountServiceAccountToken"] is False
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"

        # The token is in the Secret and nowhere else.
        token = base64.b64decode(kids["Secret"][0]["data"]["token"]).decode()
        assert len(token) >= 40
        session_json = json.dumps(get_ks(installed, "alice"))
        assert token not in session_json
        assert token not in json.dumps(pod)
        assert token not in json.dumps(events_for(installed, "alice"))
        assert token not in operator.logs()
        lab_log = installed.pod_logs(LABS, pod["metadata"]["name"])
        assert "ServerApp" in lab_log  # the lab's own log, read for real
        assert token not in lab_log
        reasons = {e["reason"] for e in events_for(installed, "alice")}
        assert "Ready" in reasons
        assert "Created" not in reasons  # a first lab pod is announced by Ready
    finally:
        installed.kubectl("-n", LABS, "delete", "ks", "alice", "--wait=true", timeout=60)
    wait_for(lambda: not children(installed, "alice"), timeout=60, what="children collected")


async def test_status_columns_and_short_name(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "carol"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    out = installed.kubectl("-n", LABS, "get", "ks", session_name).stdout
    header, row = out.splitlines()[:2]
    for column in ("NAME", "USER", "PHASE", "READY", "AGE"):
        assert column in header
    assert "carol" in row
    assert "Ready" in row
    assert "True" in row


async def test_children_recreated_and_spec_change_rolls_pod(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "dave"})
    first = wait_phase(installed, session_name, "Ready", timeout=90)
    svc = children(installed, session_name)["Service"][0]["metadata"]["name"]
    installed.kubectl("-n", LABS, "delete", "service", svc)
    installed.kubectl("-n", LABS, "delete", "networkpolicy", f"{session_name}-lab")
    wait_for(
        lambda: {"Service", "NetworkPolicy"} <= set(children(installed, session_name)),
        timeout=30,
        what="service and network policy recreated",
    )

    apply_session(
        installed, session_name, {"user": "dave", "env": [{"name": "ROLL", "value": "1"}]}
    )

    def rolled() -> dict | None:
        status = get_ks(installed, session_name).get("status") or {}
        ok = (
            status.get("observedGeneration") == 2
            and status.get("phase") == "Ready"
            and status.get("podName") != first["podName"]
        )
        return status if ok else None

    second = wait_for(rolled, timeout=90, what="pod rolled to the new spec")
    pods = wait_for(
        lambda: (
            [
                p
                for p in children(installed, session_name).get("Pod", [])
                if not p["metadata"].get("deletionTimestamp")
            ]
            or None
        ),
        timeout=30,
        what="pods",
    )
    assert [p["metadata"]["name"] for p in pods] == [second["podName"]]
    env = pods[0]["spec"]["containers"][0]["env"]
    assert {"name": "ROLL", "value": "1"} in env


async def test_deleted_pod_is_recreated(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "erin"})
    status = wait_phase(installed, session_name, "Ready", timeout=90)
    installed.kubectl("-n", LABS, "delete", "pod", status["podName"], "--wait=true", timeout=60)
    again = wait_phase(installed, session_name, "Ready", timeout=90)
    assert again["podName"] == status["podName"]  # same spec, same name: never a duplicate
    assert len(children(installed, session_name)["Pod"]) == 1
    made = wait_for(
        lambda: (
            [e["message"] for e in events_for(installed, session_name) if e["reason"] == "Created"]
            or None
        ),
        timeout=60,
        what="the Created event of the pod made again",
    )
    assert made == [f"Created lab pod {status['podName']}"]  # one, for the pod made again


async def test_delete_while_operator_down_leaves_no_children(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "frank"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    operator.stop()
    try:
        installed.kubectl("-n", LABS, "delete", "ks", session_name, "--wait=true", timeout=60)
        wait_for(
            lambda: not children(installed, session_name),
            timeout=60,
            what="children garbage-collected without the operator",
        )
    finally:
        operator.start()


def test_metrics_and_health(installed: LocalCluster, operator: InClusterOperator) -> None:
    text = operator.metrics()
    for name in (
        "kernelsession_sessions",
        "kernelsession_spawn_seconds_bucket",
        "kernelsession_culls_total",
        "kernelsession_reconcile_errors_total",
    ):
        assert name in text or name.replace("_total", "") in text, name
    assert 'kernelsession_sessions{phase="Ready"}' in text
    # health: the active pod's /healthz answers 200 (answered from its own thread, from
    # what the event loop last recorded, once a second), and the kubelet's probes of it
    # hold the pod Ready. The Lease names the holder a moment before its loop records
    # that it acts, so "active" is waited for, not read once.
    pod = operator.leader_pod()

    def healthz() -> dict[str, object]:
        url = f"http://{pod['status']['podIP']}:8080/healthz"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
            answer: dict[str, object] = json.loads(r.read())
        return answer

    assert healthz()["started"] is True
    wait_for(lambda: healthz()["active"] is True, timeout=30, what="/healthz says active")
    ready = pod_condition(pod, "Ready")
    assert ready is not None, pod["status"]
    assert ready["status"] == "True", pod["status"]
    with pytest.raises(urllib.error.URLError):  # a port that serves nothing does not pass
        urllib.request.urlopen(f"http://{pod['status']['podIP']}:8081/healthz", timeout=5)
