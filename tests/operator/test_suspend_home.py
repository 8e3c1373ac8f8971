"""spec.suspend, spec.home and the capacity grace, end to end (failover of the operator:
test_failover.py).

Parts that need a real node (volumes that keep data, a scheduler that counts resources,
the operator running as a two-replica Deployment) skip unless ``cluster.real_node``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import (
    LABS,
    apply_session,
    children,
    events_for,
    get_ks,
    requires,
    wait_for,
    wait_phase,
)

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _patch(cluster: LocalCluster, name: str, spec: dict[str, object]) -> None:
    cluster.kubectl(
        "-n", LABS, "patch", f"ks/{name}", "--type", "merge", "-p", json.dumps({"spec": spec})
    )


def _secret_data(cluster: LocalCluster, name: str) -> dict[str, str]:
    secret = cluster.get_json("-n", LABS, f"secret/{name}-token")
    return dict(secret["data"])


@pytest.fixture
def no_provisioner_class(installed: LocalCluster) -> Iterator[str]:
    """A storage class nothing provisions (Immediate binding): claims stay Pending."""
    name = f"ks-noprov-{uuid.uuid4().hex[:6]}"
    installed.apply(
        [
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate",
            }
        ]
    )
    yield name
    installed.kubectl("delete", "storageclass", name, "--ignore-not-found", check=False)


async def test_suspend_keeps_children_and_resume_keeps_the_token(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    ks: KernelSessionClient,
) -> None:
    apply_session(installed, session_name, {"user": "sue"})
    ready = wait_phase(installed, session_name, "Ready", timeout=90)
    token = _secret_data(installed, session_name)

    _patch(installed, session_name, {"suspend": True})
    status = wait_phase(installed, session_name, "Suspended", timeout=30, reason="Suspended")
    assert '"suspend":false' in status["message"]
    assert "url" not in status
    ready_cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready_cond["status"] == "False"
    wait_for(
        lambda: "Pod" not in children(installed, session_name),
        timeout=30,
        what="suspended lab pod deleted",
    )
    kept = children(installed, session_name)
    assert {"Secret", "Service", "NetworkPolicy"} <= set(kept)
    assert "Suspended" in [e["reason"] for e in events_for(installed, session_name)]
    out = installed.kubectl("-n", LABS, "get", "ks", session_name).stdout
    assert "Suspended" in out

    _patch(installed, session_name, {"suspend": False})
    again = wait_phase(installed, session_name, "Ready", timeout=90)
    assert _secret_data(installed, session_name) == token
    assert again["tokenSecretName"] == ready["tokenSecretName"]
    assert again["readyTime"] >= ready["readyTime"]
    async with await ks.lab_session(session_name) as lab:
        assert await lab.run_python("print('back')") == "back\n"


def test_unschedulable_waits_for_capacity_then_fails(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """KERNELSESSION_UNSCHEDULABLE_GRACE is 4 s for the test operator."""
    apply_session(installed, session_name, {"user": "una", "nodeSelector": {"pool": "gpu"}})
    waiting = wait_phase(installed, session_name, "Pending", 30, reason="WaitingForCapacity")
    assert "Waiting up to 4s" in waiting["message"]
    assert "selector" in waiting["message"]
    assert "cpu=" in waiting["message"]  # the lab's requests are named
    failed = wait_phase(installed, session_name, "Failed", 30, reason="Unschedulable")
    assert "waited 4s" in failed["message"]


def test_home_claim_is_an_owned_labelled_child_and_waits_visibly(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    no_provisioner_class: str,
) -> None:
    apply_session(
        installed,
        session_name,
        {"user": "hank", "home": {"size": "2Gi", "storageClassName": no_provisioner_class}},
    )
    wait_phase(installed, session_name, "Pending", 60, reason="HomePending")
    claim_name = f"{session_name}-home"

    # first "Creating the home volume ...", then the claim's own event names the class
    def names_class() -> dict[str, Any] | None:
        current: dict[str, Any] = get_ks(installed, session_name)["status"]
        return current if no_provisioner_class in current.get("message", "") else None

    status = wait_for(names_class, timeout=60, what="the status message naming the class")
    assert status["reason"] == "HomePending"
    assert claim_name in status["message"]
    (claim,) = children(installed, session_name)["PersistentVolumeClaim"]
    labels = claim["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "kernelsession-operator"
    assert labels["kernelsession.dev/user"] == "hank"
    # reclaimPolicy Retain (the default): no owner, so deleting the session keeps it
    assert not claim["metadata"].get("ownerReferences")
    assert labels["kernelsession.dev/session"] == session_name
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert "Pod" not in children(installed, session_name)  # no pod that cannot schedule

    # Suspending and resuming never touch the claim.
    _patch(installed, session_name, {"suspend": True})
    wait_phase(installed, session_name, "Suspended", 30)
    _patch(installed, session_name, {"suspend": False})
    wait_phase(installed, session_name, "Pending", 30, reason="HomePending")
    (same,) = children(installed, session_name)["PersistentVolumeClaim"]
    assert same["metadata"]["uid"] == claim["metadata"]["uid"]

    installed.kubectl("-n", LABS, "delete", "ks", session_name, "--timeout=60s")
    # reclaimPolicy Retain (the default): the claim outlives its session, unchanged
    (kept,) = [
        c
        for c in installed.get_json(
            "-n", LABS, "pvc", "-l", f"kernelsession.dev/session={session_name}"
        )["items"]
    ]
    assert kept["metadata"]["uid"] == claim["metadata"]["uid"]
    assert not kept["metadata"].get("deletionTimestamp")
    installed.kubectl("-n", LABS, "delete", "pvc", claim_name, "--wait=false")


def test_missing_storage_class_is_reported(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(
        installed, session_name, {"user": "ike", "home": {"storageClassName": "no-such-class"}}
    )
    status = wait_phase(installed, session_name, "Failed", 60, reason="HomeUnavailable")
    assert "'no-such-class' of the home volume does not exist" in status["message"]
    assert "spec.home.storageClassName" in status["message"]


def test_operator_refuses_a_mount_over_the_home(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """The schema cannot compare spec.volumeMounts with spec.home; the operator does."""
    apply_session(
        installed,
        session_name,
        {
            "user": "ned",
            "home": {"size": "1Gi"},
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/home/jovyan"}],
        },
    )
    status = wait_phase(installed, session_name, "Failed", 60, reason="InvalidSpec")
    assert "spec.volumeMounts[0].mountPath" in status["message"]
    assert not {"Pod", "PersistentVolumeClaim"} & set(children(installed, session_name))


# -- on the real node (after merge) -----------------------------------------------------
async def test_home_files_survive_suspend_culling_and_operator_restart(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    ks: KernelSessionClient,
) -> None:
    requires(installed, "real_node", "the process kubelet does not mount volumes")
    apply_session(
        installed,
        session_name,
        # not culled while the test runs (86400: the labs namespace's maxIdleTimeoutSeconds)
        {"user": "jo", "home": {"size": "64Mi"}, "culling": {"idleTimeoutSeconds": 86400}},
    )
    wait_phase(installed, session_name, "Ready", timeout=180)
    async with await ks.lab_session(session_name) as lab:
        code = "open('/home/jovyan/keep.txt', 'w').write('kept'); import os; print(os.getuid())"
        assert await lab.run_python(code) == "1000\n"

    async def read_back() -> None:
        wait_phase(installed, session_name, "Ready", timeout=180)
        async with await ks.lab_session(session_name) as lab:
            assert await lab.run_python("print(open('/home/jovyan/keep.txt').read())") == ("kept\n")

    _patch(installed, session_name, {"suspend": True})
    wait_phase(installed, session_name, "Suspended", 60)
    _patch(installed, session_name, {"suspend": False})
    await read_back()
    operator.restart()
    await read_back()
    _patch(installed, session_name, {"culling": {"idleTimeoutSeconds": 6}})
    wait_phase(installed, session_name, "Culled", 60)  # idle for 6 s
    installed.kubectl(
        "-n", LABS, "annotate", "ks", session_name, "kernelsession.dev/resume=1", "--overwrite"
    )
    await read_back()
    (claim,) = children(installed, session_name)["PersistentVolumeClaim"]
    assert claim["status"]["phase"] == "Bound"


def _millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def test_capacity_freed_within_the_grace_lets_the_lab_start(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """A first session takes all free CPU; a second waits for capacity; deleting the
    first frees it within the grace and the second starts."""
    requires(installed, "real_node", "the process kubelet does not count resource requests")
    node = installed.get_json("nodes")["items"][0]
    free = _millicores(node["status"]["allocatable"]["cpu"])
    for pod in installed.get_json("pods", "-A")["items"]:
        if pod["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in pod["spec"]["containers"]:
            free -= _millicores(((c.get("resources") or {}).get("requests") or {}).get("cpu", "0"))
    hog = f"{session_name}-hog"
    apply_session(
        installed,
        hog,
        {"user": "hog", "resources": _cpu(f"{free - 100}m")},
    )
    try:
        wait_phase(installed, hog, "Ready", timeout=120)
        apply_session(installed, session_name, {"user": "kim", "resources": _cpu("500m")})
        waiting = wait_phase(installed, session_name, "Pending", 60, reason="WaitingForCapacity")
        assert "cpu=500m" in waiting["message"]
    finally:
        installed.kubectl("-n", LABS, "delete", "ks", hog, "--wait=false", check=False)
    wait_phase(installed, session_name, "Ready", timeout=120)


def _cpu(amount: str) -> dict[str, Any]:
    """Resources asking for ``amount`` of CPU, with the limits the labs namespace's
    session rules require (manifests/admission.yaml: maxCPU, maxMemory)."""
    return {"requests": {"cpu": amount}, "limits": {"cpu": amount, "memory": "512Mi"}}
