"""Egress NetworkPolicy on the real node (kernelsession.localcluster.host.netpol).

A pod under a default-deny egress policy cannot open a connection to another pod, to a
Service (kube-proxy DNAT's it to the backend pod first), to the cluster DNS (CoreDNS on the
node behind ``10.96.0.10``) nor to the API server (the node: an ipBlock destination);
each allowing rule opens exactly its destination; removing the policies restores
everything. Pods that no egress policy selects stay unrestricted, and the kubelet's probes
of the isolated pod keep passing throughout.

Every check runs inside the pod (``kubectl exec``), all destinations at once with a 2 s
timeout each; the enforcer applies changes asynchronously, so each step waits for the
expected picture with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from helpers import WaitTimeoutError, hardened_pod, wait_for

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.host.netpol.rules import (
    EGRESS_CHAIN_PREFIX,
    INPUT_CHAIN,
    MAIN_CHAIN,
)
from kernelsession.localcluster.host.network import DNS_SERVICE_IP, NODE_IP

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Runs in the client pod: argv[1] is a JSON {check: target}; prints {check: outcome} with
# outcome "ok", "timeout" or the error. All checks run in parallel.
PROBE = r"""
import json, socket, struct, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 2.0
NAME = "kubernetes.default.svc.cluster.local"


def dns_query():
    header = struct.pack(">HHHHHH", 0x4B53, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in NAME.split("."))
    return header + labels + b"\0" + struct.pack(">HH", 1, 1)


def answered(reply):
    rcode, count = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    if rcode != 0 or count < 1:
        raise RuntimeError(f"rcode {rcode}, {count} answers")


def http(url):
    status = urllib.request.urlopen(url, timeout=TIMEOUT).status
    if status != 200:
        raise RuntimeError(f"status {status}")


def tcp(target):
    host, port = target.rsplit(":", 1)
    socket.create_connection((host, int(port)), TIMEOUT).close()


def dns_udp(server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(dns_query(), (server, 53))
        answered(s.recv(4096))


def dns_tcp(server):
    with socket.create_connection((server, 53), TIMEOUT) as s:
        s.settimeout(TIMEOUT)
        query = dns_query()
        s.sendall(struct.pack(">H", len(query)) + query)
        data = b""
        while len(data) < 2 or len(data) < 2 + struct.unpack(">H", data[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError("closed")
            data += chunk
        answered(data[2:])


KINDS = {"http": http, "tcp": tcp, "dns-udp": dns_udp, "dns-tcp": dns_tcp}


def check(item):
    name, (kind, target) = item
    try:
        KINDS[kind](target)
        return name, "ok"
    except Exception as e:
        text = f"{type(e).__name__}: {e}"
        return name, "timeout" if "timed out" in text else text


checks = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(checks)) as pool:
    print(json.dumps(dict(pool.map(check, checks.items()))))
"""


def _pod(
    cluster: LocalCluster, name: str, labels: dict[str, str], *, probed: bool = False
) -> dict[str, Any]:
    """A hardened pod serving HTTP on 8080 (container port ``http``)."""
    container: dict[str, Any] = {"ports": [{"name": "http", "containerPort": 8080}]}
    if probed:  # the kubelet (on the node) checks it every second
        probe = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
        container["readinessProbe"] = {**probe, "failureThreshold": 1, "timeoutSeconds": 1}
        container["livenessProbe"] = {**probe, "failureThreshold": 2, "timeoutSeconds": 1}
    serve = ["python", "-m", "http.server", "8080"]
    return hardened_pod(cluster, name, serve, labels=labels, container=container)


def _policy(name: str, egress: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "podSelector": {"matchLabels": {"role": "client"}},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def _iptables_rules() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False
    ).stdout


class Reach:
    """What one pod can reach, by check name."""

    def __init__(self, cluster: LocalCluster, namespace: str, pod: str, checks: dict[str, Any]):
        self.cluster, self.namespace, self.pod, self.checks = cluster, namespace, pod, checks

    def __call__(self) -> dict[str, str]:
        out = self.cluster.kubectl(
            "-n",
            self.namespace,
            "exec",
            self.pod,
            "--",
            "python",
            "-c",
            PROBE,
            json.dumps(self.checks),
        ).stdout
        return dict(json.loads(out))

    def until(self, expected: dict[str, str], what: str, timeout: float = 45) -> float:
        """Wait until every check has its expected outcome; returns the seconds it took."""
        started = time.monotonic()
        last: list[dict[str, str]] = []

        def matches() -> bool:
            last.append(self())
            return last[-1] == expected

        try:
            wait_for(matches, timeout=timeout, what=f"{what}: {expected}")
        except WaitTimeoutError as exc:
            raise WaitTimeoutError(f"{exc}; last seen: {last[-1:]}") from None
        return time.monotonic() - started


def _apply(cluster: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    for obj in objects:
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(obj))


def _ready_condition(cluster: LocalCluster, namespace: str, pod: str) -> tuple[str, str, int]:
    status = cluster.get_json("-n", namespace, "pod", pod)["status"]
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    restarts = sum(c["restartCount"] for c in status["containerStatuses"])
    return ready["status"], ready["lastTransitionTime"], restarts


def test_egress_policy_is_enforced_on_the_node(cluster: LocalCluster, namespace: str) -> None:
    _apply(
        cluster,
        namespace,
        _pod(cluster, "client", {"role": "client"}, probed=True),
        _pod(cluster, "web", {"app": "web"}),
        _pod(cluster, "other", {"app": "other"}),
    )
    ips = {}
    for name in ("client", "web", "other"):
        cluster.kubectl(
            "-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s"
        )
        ips[name] = cluster.get_json("-n", namespace, "pod", name)["status"]["podIP"]
    cluster.kubectl("-n", namespace, "expose", "pod", "web", "--port=80", "--target-port=8080")
    service_ip = cluster.get_json("-n", namespace, "service", "web")["spec"]["clusterIP"]
    (api_subset,) = cluster.get_json("-n", "default", "endpoints", "kubernetes")["subsets"]
    assert [a["ip"] for a in api_subset["addresses"]] == [NODE_IP]  # the API server: the node
    api_port = api_subset["ports"][0]["port"]
    checks = {
        "pod": ["http", f"http://{ips['web']}:8080/"],
        "service": ["http", f"http://{service_ip}/"],
        "other": ["http", f"http://{ips['other']}:8080/"],
        "dns-udp": ["dns-udp", DNS_SERVICE_IP],
        "dns-tcp": ["dns-tcp", DNS_SERVICE_IP],
        "api-service": ["tcp", "10.96.0.1:443"],  # the kubernetes Service -> the node
        "api-node": ["tcp", f"{NODE_IP}:{api_port}"],
    }
    client = Reach(cluster, namespace, "client", checks)
    web = Reach(cluster, namespace, "web", checks)
    everything = dict.fromkeys(checks, "ok")
    client.until(everything, "no policy yet: everything answers")
    probes_before = _ready_condition(cluster, namespace, "client")
    assert probes_before[0] == "True"
    timings: dict[str, float] = {}

    # default deny: nothing answers, not even DNS or the API server (the node)
    started = time.monotonic()
    _apply(cluster, namespace, _policy("deny-all", []))
    wait_for(  # apply() hooks INPUT last, once the chains are in place
        lambda: f"-A INPUT -j {INPUT_CHAIN}" in _iptables_rules(),
        timeout=30,
        what="the enforcer's INPUT hook",
    )
    timings["deny-all in the filter table"] = time.monotonic() - started
    rules = _iptables_rules()
    assert f"-A {MAIN_CHAIN} -s {ips['client']}/32 -j {EGRESS_CHAIN_PREFIX}" in rules
    assert f"-A {INPUT_CHAIN} -s {ips['client']}/32 -j {EGRESS_CHAIN_PREFIX}" in rules
    client.until(dict.fromkeys(checks, "timeout"), "default deny egress")
    timings["deny-all observed (incl. the 2 s timeouts)"] = time.monotonic() - started
    assert web() == everything  # a pod no egress policy selects is unrestricted

    # a pod selector with a named port (resolved on the destination): the pod and the
    # Service in front of it (DNAT'd to that pod's 8080) answer, nothing else
    to_web = {"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]}
    _apply(cluster, namespace, _policy("deny-all", [to_web]))
    expected = {**dict.fromkeys(checks, "timeout"), "pod": "ok", "service": "ok"}
    timings["pod selector observed"] = client.until(expected, "egress to app=web only")

    # DNS: kube-dns pods of kube-system on port 53 (CoreDNS on the node stands in for
    # them), a second policy: the union applies; the API server on the same node stays shut
    dns_rule = {
        "to": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    _apply(cluster, namespace, _policy("allow-dns", [dns_rule]))
    expected |= {"dns-udp": "ok", "dns-tcp": "ok"}
    timings["DNS rule observed"] = client.until(expected, "DNS allowed, the API server not")

    # an ipBlock: the other pod's address
    _apply(
        cluster,
        namespace,
        _policy("allow-other", [{"to": [{"ipBlock": {"cidr": f"{ips['other']}/32"}}]}]),
    )
    expected |= {"other": "ok"}
    timings["ipBlock observed"] = client.until(expected, "the other pod allowed by ipBlock")

    # the node as an ipBlock destination: its address opens the API server
    _apply(
        cluster,
        namespace,
        _policy(
            "allow-node",
            [{"to": [{"ipBlock": {"cidr": f"{NODE_IP}/32"}}], "ports": [{"port": api_port}]}],
        ),
    )
    expected |= {"api-service": "ok", "api-node": "ok"}
    timings["node ipBlock observed"] = client.until(expected, "the API server by the node's IP")

    # removing the policies restores everything, and the enforcer's INPUT hook goes
    cluster.kubectl(
        "-n",
        namespace,
        "delete",
        "networkpolicy",
        "deny-all",
        "allow-dns",
        "allow-other",
        "allow-node",
    )
    timings["policies removed observed"] = client.until(everything, "no policy again")
    wait_for(
        lambda: INPUT_CHAIN not in _iptables_rules(),
        timeout=30,
        what="the INPUT hook removed with the last egress policy",
    )
    assert EGRESS_CHAIN_PREFIX not in _iptables_rules()

    # the kubelet's probes of the isolated pod never failed (Ready never flipped)
    assert _ready_condition(cluster, namespace, "client") == probes_before
    print(
        "\n[egress] " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
        file=sys.stderr,
    )


@pytest.mark.exclusive_node
def test_node_stop_removes_the_egress_chains(exclusive_node: None) -> None:
    """With an egress-isolated pod (the enforcer hooks FORWARD and INPUT), stopping the
    node leaves the host as it was: 0 differences."""
    before = hoststate.snapshot()
    cluster = LocalCluster()
    cluster.start()
    try:
        lab = cluster.image_refs["lab"]
        cluster.kubectl("run", "isolated", f"--image={lab}", "--command", "--", "sleep", "3600")
        cluster.kubectl("wait", "--for=condition=Ready", "pod/isolated", "--timeout=120s")
        policy = _policy("deny-egress", [])
        policy["spec"]["podSelector"] = {"matchLabels": {"run": "isolated"}}
        _apply(cluster, "default", policy)
        wait_for(
            lambda: f"-A INPUT -j {INPUT_CHAIN}" in _iptables_rules(),
            timeout=30,
            what="the enforcer's INPUT hook",
        )
        during = hoststate.diff(before, hoststate.snapshot())
        assert any(EGRESS_CHAIN_PREFIX in change for change in during), during
    finally:
        assert cluster.stop() == []
    assert hoststate.diff(before, hoststate.snapshot()) == []
