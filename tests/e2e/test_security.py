"""Security of a session through the cluster: who may reach a lab, who may use it, and
what the operator's own credentials can do.

The node enforces NetworkPolicy (kernelsession.localcluster.host.netpol): a pod without the
``kernelsession.dev/client`` label cannot reach a lab (its connection times out), a
labelled one can, and the operator's Deployment pods still probe it. The lab itself runs
hardened, which is checked inside its container.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import (
    INGRESS_ENV,
    LABS,
    apply_session,
    children,
    lab_path,
    wait_for,
    wait_phase,
)

from kernelsession.client import JupyterLabSessionManager, JupyterWebError, KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.operator_process import OPERATOR_NAMESPACE

INGRESS_NAMESPACE = INGRESS_ENV["KERNELSESSION_INGRESS_CONTROLLER_NAMESPACE"]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
MANIFESTS = Path(__file__).parents[2] / "manifests"


async def test_network_policy_admits_only_clients_and_operator(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """The policy object's content (what it selects and admits)."""
    apply_session(installed, session_name, {"user": "mia"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    kids = children(installed, session_name)
    (policy,) = kids["NetworkPolicy"]
    (pod,) = kids["Pod"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    # It selects this lab's pod and nothing else's.
    selector = spec["podSelector"]["matchLabels"]
    assert selector["kernelsession.dev/session"] == session_name
    assert selector.items() <= pod["metadata"]["labels"].items()
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8888}]
    clients, operator_peer, controller = rule["from"]
    # clients of the lab's own namespace only (no namespaceSelector)
    assert clients == {"podSelector": {"matchLabels": {"kernelsession.dev/client": "true"}}}
    assert operator_peer == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kernelsession-operator"}},
    }
    # the tests' operator creates an Ingress per session: its controller's pods are admitted
    assert controller == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": INGRESS_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "traefik"}},
    }
    # The operator's own pods (manifests/operator.yaml) carry the label the policy admits.
    deployment = next(
        d
        for d in yaml.safe_load_all((MANIFESTS / "operator.yaml").read_text())
        if d and d["kind"] == "Deployment"
    )
    assert deployment["metadata"]["namespace"] == OPERATOR_NAMESPACE
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert template_labels["app.kubernetes.io/name"] == "kernelsession-operator"
    # A lab pod is not itself a client: labs cannot reach each other.
    assert "kernelsession.dev/client" not in pod["metadata"]["labels"]


async def test_wrong_token_gets_403_and_no_session(
    installed: LocalCluster, operator: InClusterOperator, ks: KernelSessionClient, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "ned"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    url, token, user = await ks.credentials(session_name)
    wrong = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")
    manager = JupyterLabSessionManager(base_url=url, token=wrong, username=user)
    with pytest.raises(JupyterWebError) as info:
        async with asyncio.timeout(30), manager:
            pytest.fail("opened a lab session with a wrong token")
    assert info.value.status in (401, 403), info.value
    assert wrong not in str(info.value)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        headers = {"Authorization": f"token {token}"}
        sessions = await http.get(f"{url}api/sessions", headers=headers)
        kernels = await http.get(f"{url}api/kernels", headers=headers)
    async with httpx.AsyncClient(timeout=10, trust_env=False) as fresh:  # no login cookie
        anonymous = await fresh.get(f"{url}api/sessions")
    assert sessions.status_code == 200
    assert sessions.json() == []
    assert kernels.json() == []
    assert anonymous.status_code in (401, 403)


def _as_operator(
    installed: LocalCluster, operator: InClusterOperator, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl authenticated as the operator's service account (its own kubeconfig)."""
    return installed.kubectl(*args, input=stdin, check=False, kubeconfig=operator.kubeconfig)


def _forbidden(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def _pod(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sneaky", "namespace": namespace},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["true"]}]},
    }


async def test_operator_service_account_is_least_privilege(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """As the operator's service account (what the running operator uses): it can read
    its own token Secrets in ``labs`` (positive control), but not list them, not read
    Secrets elsewhere, not write a session's spec, not create pods outside ``labs``."""
    apply_session(installed, session_name, {"user": "olga"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    token_secret = f"{session_name}-token"
    ok = _as_operator(installed, operator, "-n", LABS, "get", "secret", token_secret)
    assert ok.returncode == 0, ok.stderr  # the kubeconfig works

    denied = {
        "list secrets in labs": ("-n", LABS, "get", "secrets"),
        "read a secret in kube-system": (
            "-n",
            "kube-system",
            "get",
            "secret",
            "anything",
        ),
        "list secrets in default": ("-n", "default", "get", "secrets"),
        "read a secret in its own namespace": (
            "-n",
            OPERATOR_NAMESPACE,
            "get",
            "secret",
            "anything",
        ),
        "list secrets cluster-wide": ("get", "secrets", "-A"),
        "patch a session's spec": (
            "-n",
            LABS,
            "patch",
            "ks",
            session_name,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"user": "mallory"}}),
        ),
        "delete a session": ("-n", LABS, "delete", "ks", session_name, "--wait=false"),
    }
    for what, args in denied.items():
        result = _as_operator(installed, operator, *args)
        assert _forbidden(result), f"{what}: {result.returncode} {result.stdout} {result.stderr}"
    for namespace in ("default", OPERATOR_NAMESPACE, "kube-system"):
        result = _as_operator(
            installed, operator, "create", "-f", "-", stdin=json.dumps(_pod(namespace))
        )
        assert _forbidden(result), f"create pod in {namespace}: {result.stderr}"
    # Nothing was changed by the attempts.
    session = installed.get_json("-n", LABS, f"ks/{session_name}")
    assert session["spec"]["user"] == "olga"
    assert session["metadata"].get("deletionTimestamp") is None


def _client_pod(cluster: LocalCluster, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A hardened pod in ``labs`` (restricted Pod Security) with Python, idle."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": LABS, "labels": labels},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "c",
                    "image": cluster.image_refs["lab"],
                    "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def _get_from(cluster: LocalCluster, pod: str, url: str) -> str:
    code = (
        "import urllib.request\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=4).status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    return cluster.kubectl("-n", LABS, "exec", pod, "--", "python", "-c", code).stdout.strip()


async def test_network_policy_is_enforced_on_the_node(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """From a pod without the client label the lab's port times out; with the label it
    answers; the operator still reaches the lab (the session stays Ready and culling
    probes keep working)."""
    apply_session(installed, session_name, {"user": "pia"})
    wait_phase(installed, session_name, "Ready", timeout=90)
    stranger, client = f"{session_name}-stranger", f"{session_name}-client"
    installed.apply(
        [
            _client_pod(installed, stranger, {}),
            _client_pod(installed, client, {"kernelsession.dev/client": "true"}),
        ]
    )
    try:
        for pod in (stranger, client):
            installed.kubectl(
                "-n", LABS, "wait", "--for=condition=Ready", f"pod/{pod}", "--timeout=90s"
            )
        api = f"{lab_path(session_name)}api"
        url = f"http://{session_name}.{LABS}.svc.cluster.local:8888{api}"
        assert _get_from(installed, client, url) == "200"
        denied = _get_from(installed, stranger, url)
        assert "timed out" in denied, denied
        # by pod IP too (no Service in between)
        pod_ip = children(installed, session_name)["Pod"][0]["status"]["podIP"]
        assert "timed out" in _get_from(installed, stranger, f"http://{pod_ip}:8888{api}")
        assert _get_from(installed, client, f"http://{pod_ip}:8888{api}") == "200"
        # the operator (in its own namespace) still reaches the lab: a second session
        # started now becomes Ready only once the operator's probe gets an answer
        second = f"{session_name}-b"
        apply_session(installed, second, {"user": "pia"})
        try:
            wait_phase(installed, second, "Ready", timeout=90)
        finally:
            installed.kubectl("-n", LABS, "delete", "ks", second, "--wait=false", check=False)
    finally:
        installed.kubectl(
            "-n", LABS, "delete", "pod", stranger, client, "--wait=false", check=False
        )


SCRAPE_LABEL = "kernelsession.dev/scrape-operator"


async def test_a_lab_cannot_reach_the_operators_endpoints(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    """The attack: a user's pod opens connections to the operator's health and metrics
    ports (each served by a bounded set of threads) to hold them. The operator
    namespace's NetworkPolicy (manifests/networkpolicy.yaml) lets no pod in: from a pod in
    a lab namespace both ports time out, by pod IP and through the metrics Service. The
    node still reaches both (the kubelet's probes hold the pods Ready; the tests scrape
    from it). Labelling a namespace ``kernelsession.dev/scrape-operator=true`` opens the
    metrics port, and only it, to that namespace's pods."""
    stranger = f"{session_name}-scraper"
    installed.apply([_client_pod(installed, stranger, {})])
    try:
        installed.kubectl(
            "-n", LABS, "wait", "--for=condition=Ready", f"pod/{stranger}", "--timeout=90s"
        )
        ip = operator.leader_pod()["status"]["podIP"]
        svc = installed.get_json(
            "service", "-n", OPERATOR_NAMESPACE, "kernelsession-operator-metrics"
        )
        urls = {
            "health": f"http://{ip}:8080/healthz",
            "metrics": f"http://{ip}:9090/metrics",
            "metrics service": f"http://{svc['spec']['clusterIP']}:9090/metrics",
        }

        def all_closed() -> bool:
            seen = {name: _get_from(installed, stranger, url) for name, url in urls.items()}
            return all("timed out" in outcome for outcome in seen.values())

        wait_for(all_closed, timeout=60, what="the operator's ports closed to a lab's pod")
        assert "kernelsession_sessions" in operator.metrics()  # the node still scrapes
        assert operator.ready_pods()  # and the kubelet's probes still pass

        installed.kubectl("label", "namespace", LABS, f"{SCRAPE_LABEL}=true")
        try:
            wait_for(
                lambda: _get_from(installed, stranger, urls["metrics"]) == "200",
                timeout=60,
                what="metrics open to a namespace labelled for scraping",
            )
            assert _get_from(installed, stranger, urls["metrics service"]) == "200"
            assert "timed out" in _get_from(installed, stranger, urls["health"])
        finally:
            installed.kubectl("label", "namespace", LABS, f"{SCRAPE_LABEL}-")
    finally:
        installed.kubectl("-n", LABS, "delete", "pod", stranger, "--wait=false", check=False)


async def test_lab_pod_is_hardened_inside_its_container(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "quinn"})
    status = wait_phase(installed, session_name, "Ready", timeout=90)
    pod = status["podName"]

    def run(*command: str) -> str:
        return installed.kubectl("-n", LABS, "exec", pod, "--", *command).stdout

    assert run("id", "-u").strip() == "1000"
    fields = dict(
        line.split(":", 1) for line in run("cat", "/proc/1/status").splitlines() if ":" in line
    )
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    check = "import os; print(os.path.exists('/var/run/secrets/kubernetes.io'))"
    assert run("python", "-c", check).strip() == "False"
    # JupyterLab answers at <base_url>lab (with the token) in the lab pod
    code = (
        "import os, urllib.request\n"
        "req = urllib.request.Request(f\"http://{os.environ['POD_IP']}:8888\"\n"
        f'    "{lab_path(session_name)}lab",\n'
        "    headers={'Authorization': 'token ' + os.environ['JUPYTER_TOKEN']})\n"
        "body = urllib.request.urlopen(req, timeout=10).read().decode()\n"
        "print('JupyterLab' in body)\n"
    )
    assert run("python", "-c", code).strip() == "True"
