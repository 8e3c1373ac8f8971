"""What a local user, a pod and a lab can reach of the local node (docs/local-cluster-security.md).

- etcd answers only TLS clients with a certificate of its own CA (the API server's);
- the API server admits no privileged container;
- bridged traffic passes iptables and ip6tables; pods have no IPv6;
- the node's guards come first in FORWARD and INPUT; pods reach of the node only CoreDNS
  and the API server;
- the NetworkPolicy enforcer fails closed: its rules stay when it is killed or stopped, a
  pod created meanwhile reaches and is reached by no pod until it runs again, and rules
  flushed by someone else come back.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import hardened_pod, wait_for

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host.netpol.rules import KNOWN_SOURCE_CHAIN, MAIN_CHAIN
from kernelsession.localcluster.host.network import DNS_SERVICE_IP, NODE_IP

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

SERVE = ["python", "-m", "http.server", "8080"]

# Runs in a pod: argv[1] is JSON {name: "host:port"}; prints {name: "ok" | error}, all
# connections in parallel, 2 s each.
PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor

def connect(item):
    name, target = item
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), 2).close()
        return name, "ok"
    except Exception as e:
        return name, "timeout" if "timed out" in str(e) else f"{type(e).__name__}: {e}"

checks = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(checks)) as pool:
    print(json.dumps(dict(pool.map(connect, checks.items()))))
"""


def _pods(
    cluster: LocalCluster, namespace: str, *pods: tuple[str, dict[str, str]]
) -> dict[str, str]:
    """Start HTTP-serving pods (name, labels); wait until Ready; return their IPs."""
    for name, labels in pods:
        pod = hardened_pod(
            cluster, name, SERVE, labels=labels, container={"ports": [{"containerPort": 8080}]}
        )
        cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(pod))
    ips = {}
    for name, _ in pods:
        cluster.kubectl(
            "-n", namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=90s"
        )
        ips[name] = cluster.get_json("-n", namespace, "pod", name)["status"]["podIP"]
    return ips


def _reach(
    cluster: LocalCluster, namespace: str, pod: str, checks: dict[str, str]
) -> dict[str, str]:
    out = cluster.kubectl(
        "-n", namespace, "exec", pod, "--", "python", "-c", PROBE, json.dumps(checks)
    ).stdout
    return dict(json.loads(out))


def _filter_table() -> str:
    return subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=True
    ).stdout


def _hook(table: str, hook: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith(f"-A {hook} ")]


# -- etcd and the API server ----------------------------------------------------------------
def test_etcd_answers_only_the_api_servers_certificate(cluster: LocalCluster) -> None:
    cp = cluster.controlplane
    assert cp is not None
    pki = cp.pki
    port = cp.etcd_port

    # plain HTTP: the TLS listener answers nothing of etcd's
    request = b"GET /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(request)
        reply = plain.recv(4096)
    assert b"200 OK" not in reply
    assert b"{" not in reply  # no JSON of etcd's, at most Go's "HTTP request to an HTTPS server"

    def tls_health(cert: tuple[Path, Path] | None) -> str:
        ctx = ssl.create_default_context(cafile=str(pki.etcd_ca_cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        try:
            with urllib.request.urlopen(f"{cp.etcd_url}/health", timeout=5, context=ctx) as resp:
                return str(resp.read().decode())
        except OSError as exc:
            return f"refused: {type(exc).__name__}"

    assert tls_health(None).startswith("refused")  # no client certificate
    # the cluster CA's most powerful certificate (system:masters) does not open etcd
    assert tls_health((pki.admin_cert, pki.admin_key)).startswith("refused")
    assert tls_health((pki.node_cert, pki.node_key)).startswith("refused")
    assert '"health":"true"' in tls_health((pki.etcd_client_cert, pki.etcd_client_key))

    # the peer port too
    def peer_answer() -> bytes:
        ctx = ssl.create_default_context(cafile=str(pki.etcd_ca_cert))
        try:
            with (
                socket.create_connection(("127.0.0.1", cp.etcd_peer_port), timeout=5) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
            ):
                tls.sendall(b"GET /members HTTP/1.1\r\nHost: x\r\n\r\n")
                return tls.recv(4096)
        except OSError:
            return b""

    assert peer_answer() == b""

    # keys are for root only, and the API server still works through etcd
    for key in (pki.etcd_ca_key, pki.etcd_server_key, pki.etcd_client_key):
        assert key.stat().st_mode & 0o777 == 0o600
    assert pki.etcd_ca_key.parent.stat().st_mode & 0o077 == 0
    readyz = cluster.kubectl("get", "--raw", "/readyz?verbose").stdout
    assert "[+]etcd ok" in readyz


def test_api_server_admits_no_privileged_container(cluster: LocalCluster, namespace: str) -> None:
    # Pod Security would refuse it in a restricted namespace; this one allows anything
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged"
    )
    pod = hardened_pod(
        cluster, "priv", ["true"], container={"securityContext": {"privileged": True}}
    )
    result = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", input=json.dumps(pod), check=False
    )
    assert result.returncode != 0
    assert "privileged" in result.stderr
    assert "disallowed by cluster policy" in result.stderr


# -- the node's network -------------------------------------------------------------------
def test_bridged_traffic_passes_iptables_and_pods_have_no_ipv6(
    cluster: LocalCluster, namespace: str
) -> None:
    for name in hostnet.BRIDGE_NF_SYSCTLS:
        assert Path(f"/proc/sys/net/bridge/{name}").read_text().strip() == "1"
    ips = _pods(cluster, namespace, ("a", {}), ("b", {}))
    inside = cluster.kubectl(
        "-n",
        namespace,
        "exec",
        "a",
        "--",
        "python",
        "-c",
        "print(open('/proc/net/if_inet6').read().strip() or 'none');"
        "print(open('/proc/sys/net/ipv6/conf/all/disable_ipv6').read().strip())",
    ).stdout.split()
    assert inside == ["none", "1"]
    bridge6 = subprocess.run(
        ["ip", "-6", "addr", "show", "dev", hostnet.BRIDGE], capture_output=True, text=True
    ).stdout
    assert "inet6" not in bridge6
    # no IPv6 path between pods: link-local (or any IPv6) cannot even be attempted
    v6 = cluster.kubectl(
        "-n",
        namespace,
        "exec",
        "a",
        "--",
        "python",
        "-c",
        "import socket\ntry:\n    socket.create_connection(('fe80::1%eth0', 8080), 2)\n"
        "    print('connected')\nexcept OSError as e:\n    print('refused', e)",
    ).stdout
    assert v6.startswith("refused")
    # and whatever IPv6 still reached the bridge would meet the IPv6 guard
    saved6 = subprocess.run(
        ["ip6tables-save", "-t", "filter"], capture_output=True, text=True
    ).stdout
    for hook in ("FORWARD", "INPUT"):
        assert _hook(saved6, hook)[0] == f"-A {hook} -j {hostnet.GUARD6_CHAIN}"
    assert f"-A {hostnet.GUARD6_CHAIN} -i ks0 -j DROP" in saved6
    assert _reach(cluster, namespace, "a", {"b": f"{ips['b']}:8080"}) == {"b": "ok"}


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP server of "another program" on every address of the host; its port."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(timeout=5)
    server.close()


def test_guards_come_first_and_pods_reach_only_the_clusters_node_services(
    cluster: LocalCluster, namespace: str, host_listener: int
) -> None:
    table = _filter_table()
    forward, inputs = _hook(table, "FORWARD"), _hook(table, "INPUT")
    # ahead of every ESTABLISHED accept (kube-proxy's KUBE-FORWARD, the enforcer's own)
    assert forward[:2] == [f"-A FORWARD -j {hostnet.GUARD_CHAIN}", f"-A FORWARD -j {MAIN_CHAIN}"]
    assert inputs[0] == f"-A INPUT -j {hostnet.INPUT_GUARD_CHAIN}"
    assert f"-A {hostnet.GUARD_CHAIN} -s 10.244.0.0/16 ! -o ks0 -j DROP" in table
    assert f"-A {hostnet.GUARD_CHAIN} -d 10.244.0.0/16 ! -i ks0 -j DROP" in table

    _pods(cluster, namespace, ("lab", {}))
    node = cluster.node
    cp = cluster.controlplane
    assert node is not None
    assert cp is not None
    # an address of the host on another interface than the bridge, whatever it is
    addresses = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    ).stdout.splitlines()
    host_ip = next(
        line.split()[3].split("/")[0] for line in addresses if line.split()[1] != hostnet.BRIDGE
    )
    checks = {
        "api-server": f"{NODE_IP}:{cp.apiserver_port}",
        "api-service": "10.96.0.1:443",
        "dns": f"{DNS_SERVICE_IP}:53",
        "kubelet": f"{NODE_IP}:{node.kubelet_port}",
        "other-program": f"{NODE_IP}:{host_listener}",
        "other-address": f"{host_ip}:{host_listener}",
    }
    seen = _reach(cluster, namespace, "lab", checks)
    assert seen == {
        "api-server": "ok",
        "api-service": "ok",
        "dns": "ok",
        "kubelet": "timeout",
        "other-program": "timeout",
        "other-address": "timeout",
    }
    # the host itself reaches its listener (the guard is about pods only)
    socket.create_connection((NODE_IP, host_listener), timeout=2).close()


# -- the enforcer fails closed ------------------------------------------------------------
def _enforcer(cluster: LocalCluster) -> subprocess.Popen[bytes]:
    assert cluster.node is not None
    return cluster.node.processes["netpol"]


def test_enforcer_fails_closed_and_repairs_its_rules(cluster: LocalCluster, namespace: str) -> None:
    ips = _pods(
        cluster,
        namespace,
        ("web", {"app": "web"}),
        ("client", {"role": "client"}),
        ("stranger", {}),
    )
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "only-clients"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
        },
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(policy))
    web = {"web": f"{ips['web']}:8080"}
    wait_for(
        lambda: _reach(cluster, namespace, "stranger", web) == {"web": "timeout"},
        timeout=30,
        what="the policy enforced",
    )
    timings: dict[str, float] = {}
    node = cluster.node
    assert node is not None
    late: dict[str, str] = {}
    try:
        # killed (no chance to clean up) or stopped (SIGTERM): the rules stay
        for sig in (signal.SIGKILL, signal.SIGTERM):
            proc = _enforcer(cluster)
            proc.send_signal(sig)
            proc.wait(timeout=15)
            assert _reach(cluster, namespace, "stranger", web) == {"web": "timeout"}
            assert _reach(cluster, namespace, "client", web) == {"web": "ok"}
            if sig == signal.SIGKILL:
                # a pod created while the enforcer is down reaches and is reached by no pod
                late_ip = _pods(cluster, namespace, ("late", {"role": "client"}))["late"]
                assert _reach(cluster, namespace, "late", web) == {"web": "timeout"}
                late["late"] = f"{late_ip}:8080"
                assert _reach(cluster, namespace, "client", late) == {"late": "timeout"}
            started = time.monotonic()
            node.restart_netpol()
            timings[f"restart after {sig.name}"] = time.monotonic() - started
        # running again: the newcomer is a client like any other
        wait_for(
            lambda: _reach(cluster, namespace, "late", web) == {"web": "ok"},
            timeout=30,
            what="the late pod rendered",
        )
        assert _reach(cluster, namespace, "client", late) == {"late": "ok"}

        # someone flushes the enforcer's chains and deletes its jump: it comes back
        subprocess.run(["iptables", "-w", "5", "-D", "FORWARD", "-j", MAIN_CHAIN], check=True)
        subprocess.run(["iptables", "-w", "5", "-F", MAIN_CHAIN], check=True)
        subprocess.run(["iptables", "-w", "5", "-F", KNOWN_SOURCE_CHAIN], check=True)
        started = time.monotonic()
        wait_for(
            lambda: (
                f"-A FORWARD -j {MAIN_CHAIN}" in _filter_table()
                and f"-A {KNOWN_SOURCE_CHAIN} -j DROP" in _filter_table()
            ),
            timeout=30,
            what="the enforcer's rules back",
        )
        timings["flushed rules back"] = time.monotonic() - started
        assert _reach(cluster, namespace, "stranger", web) == {"web": "timeout"}
        # someone moves the node's guard behind kube-proxy's ESTABLISHED accept: it comes back
        subprocess.run(
            ["iptables", "-w", "5", "-D", "FORWARD", "-j", hostnet.GUARD_CHAIN], check=True
        )
        subprocess.run(
            ["iptables", "-w", "5", "-A", "FORWARD", "-j", hostnet.GUARD_CHAIN], check=True
        )
        wait_for(
            lambda: _hook(_filter_table(), "FORWARD")[0] == f"-A FORWARD -j {hostnet.GUARD_CHAIN}",
            timeout=30,
            what="the guard first again",
        )
    finally:
        if _enforcer(cluster).poll() is not None:
            node.restart_netpol()
    print(
        "\n[fail-closed] " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()), file=sys.stderr
    )
