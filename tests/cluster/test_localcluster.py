"""The local cluster: CRD validation, pods run by the real kubelet with containerd and runc
(from the lab image ``make images`` built), garbage collection, namespaces, RBAC, kubectl,
probes, and API-server and kubelet restarts."""

from __future__ import annotations

import asyncio
import os
import subprocess
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import WaitTimeoutError, async_wait_for, pod_condition, wait_for
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.api_client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from kernelsession.localcluster.cluster import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TEST_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kernelsession.dev
spec:
  group: test.kernelsession.dev
  names: {kind: Widget, plural: widgets, singular: widget}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"""


LAB_IMAGE = ""  # set by the autouse fixture below: the lab image ref built by `make images`


@pytest.fixture(autouse=True)
def _lab_image(cluster: LocalCluster) -> None:
    global LAB_IMAGE
    LAB_IMAGE = cluster.image_refs["lab"]


def pod_manifest(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": LAB_IMAGE, "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec},
    }


async def read_pod(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    pod = await client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    return dict(api.sanitize_for_serialization(pod))


async def create_pod(api: ApiClient, namespace: str, manifest: dict[str, Any]) -> None:
    await client.CoreV1Api(api).create_namespaced_pod(namespace, manifest)


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return dict(statuses[0])


async def test_crd_rejects_invalid_object_with_422(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    cluster.apply(TEST_CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=30s", "crd/widgets.test.kernelsession.dev"
    )
    objects = client.CustomObjectsApi(kube_api)

    async def create(spec: dict[str, Any]) -> Any:
        body = {
            "apiVersion": "test.kernelsession.dev/v1",
            "kind": "Widget",
            "metadata": {"name": f"w-{uuid.uuid4().hex[:6]}"},
            "spec": spec,
        }
        return await objects.create_namespaced_custom_object(
            "test.kernelsession.dev", "v1", namespace, "widgets", body
        )

    # the discovery of a fresh CRD may lag "Established" by a moment
    await async_wait_for(lambda: create({"size": 2}), timeout=30, what="a valid Widget")
    with pytest.raises(ApiException) as err:
        await create({"size": 0})
    assert err.value.status == 422
    assert "spec.size" in err.value.body
    with pytest.raises(ApiException) as err:
        await create({})
    assert err.value.status == 422
    assert "spec.size" in err.value.body


async def test_pod_becomes_ready_and_serves_http_on_its_pod_ip(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    manifest = pod_manifest(
        "web",
        ["python", "-m", "http.server", "--bind", "$(POD_IP)", "8080"],
        container={
            "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        },
    )
    await create_pod(kube_api, namespace, manifest)

    async def ready() -> dict[str, Any] | None:
        pod = await read_pod(kube_api, namespace, "web")
        cond = pod_condition(pod, "Ready")
        return pod if cond and cond["status"] == "True" else None

    pod = await async_wait_for(ready, timeout=30, what="pod web Ready")
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["podIP"].startswith("10.244.0.")
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    assert status["hostIP"] == cluster.node_ip
    assert pod["spec"]["nodeName"] == cluster.node_name
    cs = container_status(pod)
    assert cs["ready"] is True
    assert cs["started"] is True
    assert "running" in cs["state"]
    for ctype in ("PodScheduled", "Initialized", "ContainersReady"):
        cond = pod_condition(pod, ctype)
        assert cond is not None
        assert cond["status"] == "True"

    def get() -> int:
        with urllib.request.urlopen(f"http://{status['podIP']}:8080/", timeout=5) as resp:
            return int(resp.status)

    assert await asyncio.to_thread(get) == 200


async def test_missing_command_surfaces_waiting_reason(kube_api: ApiClient, namespace: str) -> None:
    await create_pod(kube_api, namespace, pod_manifest("nocmd", ["no-such-command-xyz"]))

    async def waiting() -> dict[str, Any] | None:
        cs = container_status(await read_pod(kube_api, namespace, "nocmd"))
        w = (cs.get("state") or {}).get("waiting") or {}
        return w if w.get("reason") == "RunContainerError" else None

    w = await async_wait_for(waiting, timeout=30, what="waiting reason RunContainerError")
    assert "no-such-command-xyz" in w["message"]
    assert "not found" in w["message"] or "no such file" in w["message"]

    await create_pod(
        kube_api,
        namespace,
        pod_manifest("nocmd-never", ["no-such-command-xyz"], restartPolicy="Never"),
    )

    async def failed() -> dict[str, Any] | None:
        pod = await read_pod(kube_api, namespace, "nocmd-never")
        return pod if pod["status"].get("phase") == "Failed" else None

    pod = await async_wait_for(failed, timeout=30, what="phase Failed")
    term = container_status(pod)["state"]["terminated"]
    assert term["reason"] == "StartError"
    assert term["exitCode"] == 128
    assert "no-such-command-xyz" in term["message"]


async def test_crashing_pod_goes_crashloopbackoff(kube_api: ApiClient, namespace: str) -> None:
    await create_pod(
        kube_api, namespace, pod_manifest("crash", ["python", "-c", "import sys; sys.exit(3)"])
    )

    async def looping() -> dict[str, Any] | None:
        cs = container_status(await read_pod(kube_api, namespace, "crash"))
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        return cs if reason == "CrashLoopBackOff" and cs["restartCount"] >= 2 else None

    cs = await async_wait_for(looping, timeout=45, what="CrashLoopBackOff, restartCount >= 2")
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert cs["ready"] is False
    first = cs["restartCount"]
    await async_wait_for(
        lambda: _restart_count_above(kube_api, namespace, "crash", first),
        timeout=30,
        what="restartCount increasing",
    )


async def _restart_count_above(api: ApiClient, namespace: str, name: str, n: int) -> bool:
    return bool(container_status(await read_pod(api, namespace, name))["restartCount"] > n)


ENV_CHECK = """
import os, sys
want = {"A": "secret-value", "B": "pre-secret-value", "C": "cm-value", "NS": sys.argv[2],
        "NAME": "envpod"}
bad = {k: os.environ.get(k) for k, v in want.items() if os.environ.get(k) != v}
# (written without "$(" as the code itself is a container argument and gets expanded)
expected = "x-secret-value-$" + "(NOPE)-$" + "(A)"
bad.update({"argv1": sys.argv[1]} if sys.argv[1] != expected else {})
bad.update({"OPT": "set"} if "OPT" in os.environ else {})
print(bad)
sys.exit(1 if bad else 0)
"""


async def test_env_from_secret_configmap_fieldref_and_expansion(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    await core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s"}, "stringData": {"k": "secret-value"}}
    )
    await core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "cm"}, "data": {"c": "cm-value"}}
    )
    env = [
        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        {"name": "B", "value": "pre-$(A)"},
        {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "c"}}},
        {
            "name": "OPT",
            "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}},
        },
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    manifest = pod_manifest(
        "envpod",
        ["python", "-c", ENV_CHECK],
        restartPolicy="Never",
        container={"env": env, "args": ["x-$(A)-$(NOPE)-$$(A)", "$(NS)"]},
    )
    await create_pod(kube_api, namespace, manifest)

    async def done() -> dict[str, Any] | None:
        pod = await read_pod(kube_api, namespace, "envpod")
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None

    pod = await async_wait_for(done, timeout=30, what="envpod to finish")
    assert pod["status"]["phase"] == "Succeeded", cluster.pod_logs(namespace, "envpod")
    assert container_status(pod)["state"]["terminated"]["reason"] == "Completed"

    missing = pod_manifest(
        "badref",
        ["python", "-c", "pass"],
        container={
            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]
        },
    )
    await create_pod(kube_api, namespace, missing)

    reasons: list[str] = []

    async def config_error() -> dict[str, Any] | None:
        cs = container_status(await read_pod(kube_api, namespace, "badref"))
        w = (cs.get("state") or {}).get("waiting") or {}
        reasons.append(f"{w.get('reason')}: {w.get('message')}")
        # Under load the kubelet's first try may end "failed to sync secret cache: timed
        # out waiting for the condition"; its retries name the missing Secret.
        found = w.get("reason") == "CreateContainerConfigError"
        return w if found and '"nope" not found' in str(w.get("message")) else None

    try:
        await async_wait_for(config_error, timeout=120, what="the missing Secret named")
    except WaitTimeoutError:
        raise AssertionError(f"waiting states seen: {sorted(set(reasons))}") from None


async def test_unmatched_node_selector_stays_pending_unschedulable(
    kube_api: ApiClient, namespace: str
) -> None:
    await create_pod(
        kube_api,
        namespace,
        pod_manifest("picky", ["python", "-c", "pass"], nodeSelector={"disktype": "ssd"}),
    )

    async def unschedulable() -> dict[str, Any] | None:
        pod = await read_pod(kube_api, namespace, "picky")
        cond = pod_condition(pod, "PodScheduled")
        return pod if cond and cond.get("reason") == "Unschedulable" else None

    pod = await async_wait_for(unschedulable, timeout=30, what="PodScheduled=False")
    assert pod["status"]["phase"] == "Pending"
    assert pod_condition(pod, "PodScheduled")["status"] == "False"  # type: ignore[index]
    assert not pod["spec"].get("nodeName")


async def test_deleting_pod_stops_its_container_and_removes_it(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    await create_pod(
        kube_api,
        namespace,
        pod_manifest("sleeper", ["python", "-c", "import time; time.sleep(600)"]),
    )

    async def container_id() -> str | None:
        cs = container_status(await read_pod(kube_api, namespace, "sleeper"))
        if "running" in (cs.get("state") or {}) and cs.get("containerID"):
            return str(cs["containerID"]).rsplit("/", 1)[1]
        return None

    cid = await async_wait_for(container_id, timeout=60, what="sleeper running")
    assert cluster.node is not None
    assert cid in cluster.node.ctr("tasks", "ls", "-q").stdout
    await client.CoreV1Api(kube_api).delete_namespaced_pod("sleeper", namespace)

    async def gone() -> bool:
        try:
            await read_pod(kube_api, namespace, "sleeper")
        except ApiException as exc:
            return exc.status == 404
        return False

    await async_wait_for(gone, timeout=30, what="pod sleeper removed")
    assert cid not in cluster.node.ctr("tasks", "ls", "-q").stdout


async def test_deleting_owner_garbage_collects_owned_object(
    kube_api: ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    owner = await core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    await core.create_namespaced_secret(
        namespace, {"metadata": {"name": "owned", "ownerReferences": [ref]}}
    )
    await core.delete_namespaced_config_map("owner", namespace)

    async def collected() -> bool:
        try:
            await core.read_namespaced_secret("owned", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    await async_wait_for(collected, timeout=30, what="owned Secret garbage-collected")


def test_namespace_deletion_completes_with_running_pod(cluster: LocalCluster) -> None:
    ns = f"t-del-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    wait_for(
        lambda: cluster.kubectl("-n", ns, "get", "sa", "default", check=False).returncode == 0,
        what="default ServiceAccount",
    )
    cluster.kubectl(
        "-n",
        ns,
        "run",
        "p",
        f"--image={LAB_IMAGE}",
        '--overrides={"spec": {"terminationGracePeriodSeconds": 2}}',
        "--command",
        "--",
        "python",
        "-c",
        "import time; time.sleep(600)",
    )
    cluster.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/p", "--timeout=30s")
    cluster.kubectl("delete", "namespace", ns, "--timeout=60s")
    assert cluster.kubectl("get", "namespace", ns, check=False).returncode != 0


async def test_service_account_rbac_is_enforced(
    cluster: LocalCluster, namespace: str, sa_kubeconfig: Callable[[Any, str, str], Path]
) -> None:
    rbac = f"""
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: cm-reader, namespace: {namespace}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: cm-reader, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {namespace}}}
"""
    kubeconfig = sa_kubeconfig(rbac, namespace, "reader")
    api = await config.new_client_from_config(config_file=str(kubeconfig))
    try:
        core = client.CoreV1Api(api)
        allowed = await core.list_namespaced_config_map(namespace)
        assert allowed.items is not None
        with pytest.raises(ApiException) as err:
            await core.list_namespaced_secret(namespace)
        assert err.value.status == 403
        with pytest.raises(ApiException) as err:
            await core.list_namespaced_config_map("default")
        assert err.value.status == 403
    finally:
        await api.close()


def test_kubectl_get_pods_with_written_kubeconfig(cluster: LocalCluster, namespace: str) -> None:
    kubectl = cluster.binaries.kubectl
    assert kubectl is not None
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    result = subprocess.run(
        [str(kubectl), "get", "pods", "-A"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    nodes = subprocess.run(
        [str(kubectl), "get", "nodes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert cluster.node_name in nodes.stdout
    assert " Ready " in nodes.stdout


def test_restart_apiserver_keeps_data(
    cluster: LocalCluster, namespace: str, report_figure: Callable[[str, float, str], None]
) -> None:
    cluster.kubectl("-n", namespace, "create", "configmap", "keep", "--from-literal=a=1")
    seconds = cluster.restart_apiserver()
    report_figure("API server restarted in", seconds, "s")
    got = cluster.get_json("-n", namespace, "configmap", "keep")
    assert got["data"] == {"a": "1"}
    # the kubelet reconnects its watch: a new pod still runs
    cluster.kubectl(
        "-n",
        namespace,
        "run",
        "after",
        f"--image={LAB_IMAGE}",
        "--restart=Never",
        "--command",
        "--",
        "python",
        "-c",
        "pass",
    )
    wait_for(
        lambda: (
            cluster.get_json("-n", namespace, "pod", "after")["status"].get("phase") == "Succeeded"
        ),
        timeout=30,
        what="pod after restart Succeeded",
    )


async def test_failing_liveness_probe_restarts_container(
    cluster: LocalCluster, kube_api: ApiClient, namespace: str
) -> None:
    probe = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}
    manifest = pod_manifest(
        "unhealthy",
        ["python", "-c", "import time; time.sleep(600)"],
        container={"livenessProbe": probe},
    )
    await create_pod(kube_api, namespace, manifest)

    async def restarted() -> dict[str, Any] | None:
        cs = container_status(await read_pod(kube_api, namespace, "unhealthy"))
        return cs if cs["restartCount"] >= 1 and cs.get("lastState") else None

    cs = await async_wait_for(restarted, timeout=30, what="restart after liveness failures")
    last = cs["lastState"]["terminated"]
    # python as PID 1 has no SIGTERM handler: killed (SIGKILL) after the grace period
    assert last["exitCode"] == 137
    events = cluster.get_json("-n", namespace, "events")["items"]
    unhealthy = [e for e in events if e["reason"] == "Unhealthy"]
    assert any("Liveness probe failed" in e["message"] for e in unhealthy), unhealthy
