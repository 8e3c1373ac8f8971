"""The real node: hardening applied inside the container, the restricted Pod Security level,
NetworkPolicy enforced, kubectl logs/exec/port-forward, Services and DNS, real failures
(missing image, out of memory, unschedulable), one node per machine."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
import uuid
from typing import Any

import pytest
from helpers import hardened_pod, wait_for

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.cluster.nodehost import NodeBusyError

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SERVE = ["python", "-m", "http.server", "8080"]
SLEEP = ["python", "-c", "import time; time.sleep(3600)"]


def run_pod(cluster: LocalCluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))


def ready(cluster: LocalCluster, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    cluster.kubectl(
        "-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", f"--timeout={timeout}s"
    )
    return dict(cluster.get_json("-n", namespace, "pod", name))


def exec_(cluster: LocalCluster, namespace: str, name: str, *command: str) -> str:
    return cluster.kubectl("-n", namespace, "exec", name, "--", *command).stdout


def container_state(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    statuses = cluster.get_json("-n", namespace, "pod", name)["status"].get("containerStatuses")
    return dict((statuses or [{}])[0])


@pytest.fixture
def restricted(cluster: LocalCluster) -> Any:
    """A namespace enforcing the ``restricted`` Pod Security Standard."""
    name = f"r-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    wait_for(
        lambda: cluster.kubectl("-n", name, "get", "sa", "default", check=False).returncode == 0,
        what="default ServiceAccount",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_pod_runs_hardened_inside_the_container(cluster: LocalCluster, restricted: str) -> None:
    run_pod(cluster, restricted, hardened_pod(cluster, "hard", SLEEP))
    ready(cluster, restricted, "hard")
    assert exec_(cluster, restricted, "hard", "id", "-u").strip() == "1000"
    status = exec_(cluster, restricted, "hard", "cat", "/proc/self/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode: the RuntimeDefault profile
    # the service-account token is not mounted
    check = "import os; print(os.path.exists('/var/run/secrets/kubernetes.io'))"
    assert exec_(cluster, restricted, "hard", "python", "-c", check).strip() == "False"


def test_restricted_level_rejects_a_privileged_pod(cluster: LocalCluster, restricted: str) -> None:
    bad = hardened_pod(cluster, "root", SLEEP, container={"securityContext": {"runAsUser": 0}})
    result = cluster.kubectl(
        "-n", restricted, "apply", "-f", "-", input=json.dumps(bad), check=False
    )
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr
    assert "restricted" in result.stderr


def test_memory_limit_applies_and_oom_kills(cluster: LocalCluster, namespace: str) -> None:
    hog = hardened_pod(
        cluster,
        "hog",
        ["python", "-c", "x = bytearray(400 * 1024 * 1024); import time; time.sleep(60)"],
        container={"resources": {"limits": {"memory": "96Mi"}}},
        restartPolicy="Never",
    )
    run_pod(cluster, namespace, hog)

    def terminated() -> dict[str, Any] | None:
        state = container_state(cluster, namespace, "hog").get("state") or {}
        return state.get("terminated")

    term = wait_for(terminated, timeout=90, what="hog terminated")
    assert term["reason"] == "OOMKilled"
    assert term["exitCode"] == 137


def test_missing_image_fails_pull_fast(cluster: LocalCluster, namespace: str) -> None:
    missing = hardened_pod(cluster, "noimage", SLEEP)
    missing["spec"]["containers"][0]["image"] = "localhost/kernelsession/does-not-exist:1"
    run_pod(cluster, namespace, missing)

    def pull_error() -> str | None:
        waiting = (container_state(cluster, namespace, "noimage").get("state") or {}).get(
            "waiting"
        ) or {}
        reason = waiting.get("reason")
        return reason if reason in ("ErrImagePull", "ImagePullBackOff") else None

    wait_for(pull_error, timeout=60, what="ErrImagePull")


def test_unschedulable_request_is_reported_by_the_scheduler(
    cluster: LocalCluster, namespace: str
) -> None:
    big = hardened_pod(cluster, "big", SLEEP, container={"resources": {"requests": {"cpu": "500"}}})
    run_pod(cluster, namespace, big)

    def unschedulable() -> dict[str, Any] | None:
        conditions = cluster.get_json("-n", namespace, "pod", "big")["status"].get("conditions")
        for cond in conditions or []:
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return dict(cond)
        return None

    cond = wait_for(unschedulable, timeout=60, what="PodScheduled=False Unschedulable")
    assert "Insufficient cpu" in cond["message"]


def test_logs_exec_and_port_forward(cluster: LocalCluster, namespace: str) -> None:
    run_pod(
        cluster,
        namespace,
        hardened_pod(
            cluster,
            "web",
            ["sh", "-c", "echo started-$(id -u); exec python -m http.server 8080"],
            container={"ports": [{"containerPort": 8080}]},
        ),
    )
    ready(cluster, namespace, "web")
    wait_for(
        lambda: "started-1000" in cluster.pod_logs(namespace, "web"),
        timeout=30,
        what="kubectl logs shows the container's output",
    )
    assert exec_(cluster, namespace, "web", "python", "-c", "print(6 * 7)").strip() == "42"
    kubectl = cluster.binaries.kubectl
    assert kubectl is not None
    forward = subprocess.Popen(
        [
            str(kubectl),
            f"--kubeconfig={cluster.kubeconfig}",
            "-n",
            namespace,
            "port-forward",
            "pod/web",
            ":8080",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()  # Forwarding from 127.0.0.1:PORT -> 8080
        port = int(line.split("127.0.0.1:")[1].split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert resp.status == 200
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def _fetch_from(cluster: LocalCluster, namespace: str, client: str, url: str) -> str:
    code = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=3).status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    return exec_(cluster, namespace, client, "python", "-c", code).strip()


def test_networkpolicy_is_enforced(cluster: LocalCluster, namespace: str) -> None:
    run_pod(
        cluster,
        namespace,
        hardened_pod(
            cluster,
            "server",
            SERVE,
            labels={"app": "server"},
            container={"ports": [{"containerPort": 8080}]},
        ),
    )
    run_pod(cluster, namespace, hardened_pod(cluster, "allowed", SLEEP, labels={"role": "client"}))
    run_pod(cluster, namespace, hardened_pod(cluster, "stranger", SLEEP))
    server_ip = ready(cluster, namespace, "server")["status"]["podIP"]
    ready(cluster, namespace, "allowed")
    ready(cluster, namespace, "stranger")
    url = f"http://{server_ip}:8080/"
    assert _fetch_from(cluster, namespace, "stranger", url) == "200"  # no policy yet
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-clients"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                    "ports": [{"port": 8080, "protocol": "TCP"}],
                }
            ],
        },
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(policy))
    wait_for(
        lambda: "timed out" in _fetch_from(cluster, namespace, "stranger", url),
        timeout=30,
        what="the unlabelled pod's connection to time out",
    )
    assert _fetch_from(cluster, namespace, "allowed", url) == "200"
    # the node itself (kubelet probes, the host) is never filtered
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
    cluster.kubectl("-n", namespace, "delete", "networkpolicy", "only-clients")
    wait_for(
        lambda: _fetch_from(cluster, namespace, "stranger", url) == "200",
        timeout=30,
        what="traffic allowed again once the policy is gone",
    )


def test_service_cluster_ip_and_dns(cluster: LocalCluster, namespace: str) -> None:
    run_pod(
        cluster,
        namespace,
        hardened_pod(
            cluster,
            "web",
            SERVE,
            labels={"app": "web"},
            container={"ports": [{"containerPort": 8080}]},
        ),
    )
    ready(cluster, namespace, "web")
    cluster.kubectl("-n", namespace, "expose", "pod", "web", "--port=80", "--target-port=8080")
    ip = cluster.get_json("-n", namespace, "service", "web")["spec"]["clusterIP"]
    assert ip.startswith("10.96.")

    def from_host() -> bool:
        with urllib.request.urlopen(f"http://{ip}/", timeout=3) as resp:
            return bool(resp.status == 200)

    wait_for(from_host, timeout=30, what="the ClusterIP answering from the host")
    name = f"web.{namespace}.svc.cluster.local"
    resolve = exec_(
        cluster,
        namespace,
        "web",
        "python",
        "-c",
        f"import socket; print(socket.gethostbyname({name!r}))",
    )
    assert resolve.strip() == ip
    # the pod reaches the service (hairpin through kube-proxy) by its DNS name
    assert _fetch_from(cluster, namespace, "web", f"http://{name}/") == "200"
    # and the API server through the `kubernetes` Service
    api = exec_(
        cluster,
        namespace,
        "web",
        "python",
        "-c",
        "import socket; s = socket.create_connection(('kubernetes.default.svc', 443), 5); "
        "print('connected')",
    )
    assert api.strip() == "connected"
    # names outside the cluster do not resolve: nothing leaves the machine
    outside = exec_(
        cluster,
        namespace,
        "web",
        "python",
        "-c",
        "import socket\ntry:\n    socket.gethostbyname('example.org'); print('resolved')\n"
        "except OSError as e:\n    print('no')",
    )
    assert outside.strip() == "no"


def test_second_node_on_the_machine_is_refused(cluster: LocalCluster) -> None:
    second = LocalCluster()
    with pytest.raises(NodeBusyError, match="already running"):
        second.start()
    # the running node is untouched
    assert cluster.kubectl("get", "nodes").stdout.count(" Ready ") == 1


def test_pod_and_service_ranges_stay_on_this_machine(cluster: LocalCluster) -> None:
    routes = subprocess.run(
        ["ip", "route", "get", "10.244.7.7"], capture_output=True, text=True, check=False
    )
    # beyond this node's /24 the pod range is a blackhole
    assert (
        routes.returncode != 0
        or "blackhole" in routes.stdout
        or "unreachable" in (routes.stdout + routes.stderr)
    )
    service = subprocess.run(
        ["ip", "route", "get", "10.96.200.200"], capture_output=True, text=True, check=True
    )
    assert f"dev {'ks0'}" in service.stdout
    with pytest.raises(TimeoutError):  # an unused service address answers nothing
        socket.create_connection(("10.96.200.200", 80), timeout=1)
