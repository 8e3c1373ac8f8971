"""The local cluster's ingress controller, Traefik, for real: installed into the running
cluster (hardened, least privilege, idempotent), routing Ingresses of class ``traefik`` by
host and path prefix to real pods, and carrying a Jupyter kernel websocket: the project's
own client runs code in a jupyter-server behind a base_url, through the controller's
Service from this machine."""

from __future__ import annotations

import json
import secrets
import statistics
import time
import urllib.request
from typing import Any

import pytest
from helpers import HARDENED, async_wait_for, wait_for

from kernelsession.client import JupyterLabSessionManager
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy.ingress import IngressController, install_ingress

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

HOST = "web.ingress.test"


def _restricted(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )


def _pod(
    cluster: LocalCluster,
    name: str,
    command: list[str],
    port: int,
    *,
    env: list[dict[str, Any]] | None = None,
    volumes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A PSA-restricted pod from the lab image serving on ``port``, labelled ``app: name``."""
    mounts = volumes or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": cluster.image_refs["lab"],
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "env": env or [],
                    "ports": [{"containerPort": port}],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                    "securityContext": HARDENED,
                    "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
                    "volumeMounts": [{"name": v, "mountPath": p} for v, p in mounts.items()],
                }
            ],
            "volumes": [{"name": v, "emptyDir": {}} for v in mounts],
        },
    }


def _service(name: str, port: int, target: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}]},
    }


def _ingress(name: str, service: str, port: int, path: str, host: str | None) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": path,
                    "pathType": "Prefix",
                    "backend": {"service": {"name": service, "port": {"number": port}}},
                }
            ]
        }
    }
    if host is not None:
        rule["host"] = host
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name},
        "spec": {"ingressClassName": "traefik", "rules": [rule]},
    }


def _apply(cluster: LocalCluster, namespace: str, *objs: dict[str, Any]) -> None:
    for obj in objs:
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(obj))


def _get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if host:
        request.add_header("Host", host)
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status), bytes(response.read())


def _answers(url: str) -> bool:
    try:
        return _get(url)[0] == 200
    except OSError:  # refused until kube-proxy has the endpoint
        return False


def _median_ms(fetch: Any, n: int = 40) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fetch()
        samples.append((time.perf_counter() - t) * 1000)
    return statistics.median(samples)


def test_controller_runs_hardened_with_least_privilege(
    ingress_controller: IngressController,
) -> None:
    ing, cluster = ingress_controller, ingress_controller.cluster
    assert ing.namespace == "kernelsession-ingress"
    assert ing.class_name == "traefik"
    assert ing.service_ip == "10.96.0.80"  # fixed: known before installing
    assert ing.image.startswith("localhost/kernelsession/traefik:")
    ns = cluster.get_json("namespace", ing.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    ic = cluster.get_json("ingressclass", "traefik")
    assert ic["spec"]["controller"] == "traefik.io/ingress-controller"

    (pod,) = ing.pods()
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "traefik"
    # the process itself, seen from the host: non-root, no capabilities, seccomp filter,
    # no privilege escalation, read-only root file system
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    assert set(statuses) == {"traefik", "apiproxy"}  # Traefik reads the API through apiproxy
    container_id = statuses["traefik"]["containerID"].split("://", 1)[1]
    assert cluster.node is not None
    pid = cluster.node.task_pids()[container_id]
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
    assert status["Uid"].split() == ["65532"] * 4
    assert status["Gid"].split() == ["65532"] * 4
    assert status["CapEff"].strip() == "0000000000000000"
    assert status["CapBnd"].strip() == "0000000000000000"
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    with open(f"/proc/{pid}/mountinfo") as f:
        root = next(line.split() for line in f if line.split()[4] == "/")
    assert "ro" in root[5].split(",")

    account = f"system:serviceaccount:{ing.namespace}:traefik"

    def can(*what: str) -> bool:
        return (
            cluster.kubectl("auth", "can-i", *what, f"--as={account}", check=False).stdout.strip()
            == "yes"
        )

    for resource in ("ingresses", "ingressclasses", "services", "endpointslices"):
        assert can("watch", resource, "-A"), resource
    assert can("update", "ingresses", "--subresource=status", "-n", "labs")
    for verb in ("get", "list", "watch"):  # no Secret at all: lab tokens are Secrets
        assert not can(verb, "secrets", "-A"), verb
    # and it never asks: its API proxy answers Traefik's Secret informer itself
    if cluster.audit_log is not None:
        from kernelsession.localcluster.cluster import audit

        log = cluster.audit_log

        def reads_ingresses() -> list[audit.Entry]:
            # Traefik's pod turns Ready before its informers have listed: wait for them
            mine = audit.read(log, user=account)
            return mine if any(e.resource == "ingresses" for e in mine) else []

        mine = wait_for(reads_ingresses, timeout=60, what="Traefik's reads in the audit log")
        assert not [e for e in mine if e.resource.startswith("secrets")]
    assert not can("update", "ingresses", "-n", "labs")
    assert not can("create", "pods", "-n", ing.namespace)
    assert not can("patch", "services", "-n", ing.namespace)

    # installing again is a no-op: same Service, same pod, ready at once
    again = install_ingress(cluster, log=False)
    assert again.service_ip == ing.service_ip
    assert [p["metadata"]["uid"] for p in again.pods()] == [pod["metadata"]["uid"]]


def test_routes_by_host_and_path_prefix(
    ingress_controller: IngressController, namespace: str
) -> None:
    ing, cluster = ingress_controller, ingress_controller.cluster
    _restricted(cluster, namespace)
    body = f"hello from {namespace}/web\n"
    serve = [
        "sh",
        "-c",
        f"mkdir -p /srv/app && printf '{body.strip()}\\n' > /srv/app/index.html "
        "&& exec python3 -m http.server 8080 --directory /srv",
    ]
    _apply(
        cluster,
        namespace,
        _pod(cluster, "web", serve, 8080, volumes={"srv": "/srv"}),
        _service("web", 80, 8080),
        _ingress("web", "web", 80, "/app", HOST),
    )
    wait_for(
        lambda: ing.fetch("/app/", host=HOST) == (200, body.encode()),
        timeout=90,
        what="the backend's page through Traefik",
    )
    assert ing.fetch("/app/index.html", host=HOST) == (200, body.encode())
    # wrong host, wrong path, a longer path element: Traefik's 404
    assert ing.fetch("/app/", host="other.ingress.test")[0] == 404
    assert ing.fetch("/other/", host=HOST)[0] == 404
    assert ing.fetch("/application", host=HOST)[0] == 404

    # the controller publishes its Service's address in the Ingress status
    def published() -> list[Any]:
        obj = cluster.get_json("-n", namespace, "ingress", "web")
        return list((obj.get("status") or {}).get("loadBalancer", {}).get("ingress") or [])

    lb = wait_for(published, timeout=30, what="status.loadBalancer of the Ingress")
    assert lb[0]["ip"] == ing.service_ip

    # pods reach it too, by its Service's DNS name
    fetched = cluster.kubectl(
        "-n",
        namespace,
        "exec",
        "web",
        "--",
        "python3",
        "-c",
        "import urllib.request as u; r = u.Request("
        f"'http://{ing.service_dns}/app/', headers={{'Host': {HOST!r}}}); "
        "print(u.urlopen(r, timeout=5).read().decode(), end='')",
    ).stdout
    assert fetched == body

    # every request went through Traefik's access log (to stdout)
    wait_for(
        lambda: '"GET /application HTTP/1.1" 404' in ing.logs(),
        timeout=30,
        what="the access log line",
    )
    svc_ip = cluster.get_json("-n", namespace, "service", "web")["spec"]["clusterIP"]
    through = _median_ms(lambda: ing.fetch("/app/", host=HOST))
    # kube-proxy programs the Service's endpoint on its own schedule (Traefik watched the
    # EndpointSlice itself): wait until the cluster IP answers before timing it
    wait_for(lambda: _answers(f"http://{svc_ip}/app/"), timeout=30, what="the Service's IP")
    direct = _median_ms(lambda: _get(f"http://{svc_ip}/app/"))
    print(f"\n[ingress] GET median through Traefik {through:.2f} ms, direct {direct:.2f} ms")


async def test_jupyter_kernel_websocket_through_traefik(
    ingress_controller: IngressController, namespace: str
) -> None:
    ing, cluster = ingress_controller, ingress_controller.cluster
    _restricted(cluster, namespace)
    token = secrets.token_hex(24)
    prefix = f"/jupyter/{namespace}/"
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "lab-token",
        "--from-env-file=/dev/stdin",
        input=f"token={token}\n",
    )
    command = [
        "jupyter",
        "server",
        "--ServerApp.ip=0.0.0.0",
        "--ServerApp.port=8888",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_remote_access=True",
        f"--ServerApp.base_url={prefix}",
    ]
    env = [
        {
            "name": "JUPYTER_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "lab-token", "key": "token"}},
        }
    ]
    _apply(
        cluster,
        namespace,
        _pod(cluster, "lab", command, 8888, env=env),
        _service("lab", 8888, 8888),
        _ingress("lab", "lab", 8888, prefix, None),  # any host: the path routes
    )

    def api_answers() -> bool:
        status, data = ing.fetch(prefix + "api")
        return status == 200 and b"version" in data

    wait_for(api_answers, timeout=120, what="jupyter-server's /api through Traefik")

    manager = JupyterLabSessionManager(
        base_url=ing.url(prefix), token=token, username="ingress-test"
    )
    async with manager as lab:
        assert await lab.run_python("print(6*7)") == "42\n"
        samples = []
        for _ in range(20):
            t = time.perf_counter()
            assert await lab.run_python("print(1)") == "1\n"
            samples.append((time.perf_counter() - t) * 1000)
        streamed = [c.text async for c in lab.stream("for i in range(3): print(i, flush=True)")]
        assert "".join(streamed) == "0\n1\n2\n"
    # the same lab straight through its Service, for comparison (reported, not asserted)
    lab_ip = cluster.get_json("-n", namespace, "service", "lab")["spec"]["clusterIP"]
    direct = JupyterLabSessionManager(
        base_url=f"http://{lab_ip}:8888{prefix}", token=token, username="ingress-test"
    )
    async with direct as lab:
        direct_samples = []
        for _ in range(20):
            t = time.perf_counter()
            assert await lab.run_python("print(1)") == "1\n"
            direct_samples.append((time.perf_counter() - t) * 1000)
    print(
        f"\n[ingress] run_python('print(1)') median: through Traefik "
        f"{statistics.median(samples):.2f} ms, straight to the Service "
        f"{statistics.median(direct_samples):.2f} ms"
    )

    # the kernel websocket went through Traefik (logged when it closed); the token did not
    def websocket_logged() -> bool:
        return any(
            f"GET {prefix}api/kernels/" in line and "/channels" in line
            for line in ing.logs().splitlines()
        )

    await async_wait_for(websocket_logged, timeout=30, what="the websocket in the access log")
    assert token not in ing.logs()
