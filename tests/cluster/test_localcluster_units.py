"""Fast unit tests (no cluster) of the local kubelet's pure parts."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from kernelsession.localcluster.ipam import IPAllocator, PoolExhaustedError
from kernelsession.localcluster.kubelet import Kubelet
from kernelsession.localcluster.podspec import (
    EnvConfigError,
    ProbeError,
    command_line,
    expand,
    parse_probe,
    referenced_objects,
    resolve_env,
    secret_data,
    unschedulable_reason,
)

POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "lab"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "sa"},
    "status": {"podIP": "127.5.0.7", "hostIP": "127.0.0.1"},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "a"),
        ("x-$(A)-$(B)", "x-a-b"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$$$(A)", "$a"),
        ("$(A", "$(A"),
        ("$", "$"),
        ("a$b", "a$b"),
        ("$()", "$()"),
        ("plain", "plain"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "a", "B": "b"}) == expected


def test_resolve_env_sources_and_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "V", "value": "$(S)-$(LATER)"},
            {"name": "LATER", "value": "l"},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "LBL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {
                "name": "O",
                "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}},
            },
        ],
    }
    refs = referenced_objects(container)
    assert refs.secrets == {"s", "gone"}
    assert refs.configmaps == {"cm"}
    env = resolve_env(
        container, POD, secrets={"s": {"k": "sv"}, "gone": None}, configmaps={"cm": {"x": "1"}}
    )
    assert env == {
        "CM_x": "1",
        "S": "sv",
        "V": "sv-$(LATER)",
        "LATER": "l",
        "IP": "127.5.0.7",
        "NAME": "p",
        "NS": "ns",
        "NODE": "n1",
        "LBL": "lab",
    }


def test_resolve_env_missing_references() -> None:
    missing_secret = {
        "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    }
    with pytest.raises(EnvConfigError, match='secret "s" not found'):
        resolve_env(missing_secret, POD, secrets={"s": None}, configmaps={})
    with pytest.raises(EnvConfigError, match="couldn't find key k in Secret ns/s"):
        resolve_env(missing_secret, POD, secrets={"s": {"other": "1"}}, configmaps={})
    optional_key = {
        "env": [
            {
                "name": "X",
                "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k", "optional": True}},
            }
        ]
    }
    assert resolve_env(optional_key, POD, secrets={}, configmaps={"c": {}}) == {}


def test_secret_data_decodes_base64() -> None:
    secret = {"data": {"a": base64.b64encode(b"hello").decode()}}
    assert secret_data(secret) == {"a": "hello"}


def test_command_line_expands_and_requires_a_command() -> None:
    c = {"command": ["python", "-m", "http.server"], "args": ["--bind", "$(IP)", "$$(IP)"]}
    assert command_line(c, {"IP": "127.1.0.2"}) == [
        "python",
        "-m",
        "http.server",
        "--bind",
        "127.1.0.2",
        "$(IP)",
    ]
    with pytest.raises(EnvConfigError, match="command is required"):
        command_line({"args": ["x"]}, {})


def test_parse_probe_defaults_and_named_ports() -> None:
    container = {"ports": [{"name": "http", "containerPort": 8888}]}
    spec = parse_probe({"httpGet": {"path": "api", "port": "http"}}, container, "127.1.0.3")
    assert spec.kind == "http"
    assert spec.url == "http://127.1.0.3:8888/api"
    assert (spec.period, spec.timeout, spec.failure_threshold, spec.success_threshold) == (
        10.0,
        1.0,
        3,
        1,
    )
    assert spec.initial_delay == 0.0
    tcp = parse_probe(
        {
            "tcpSocket": {"port": 22},
            "periodSeconds": 2,
            "timeoutSeconds": 5,
            "failureThreshold": 1,
            "initialDelaySeconds": 4,
        },
        container,
        "127.1.0.3",
    )
    assert (
        tcp.kind,
        tcp.host,
        tcp.port,
        tcp.period,
        tcp.timeout,
        tcp.failure_threshold,
        tcp.initial_delay,
    ) == ("tcp", "127.1.0.3", 22, 2.0, 5.0, 1, 4.0)
    ex = parse_probe({"exec": {"command": ["true"]}}, container, "ip")
    assert ex.command == ("true",)
    https = parse_probe(
        {
            "httpGet": {
                "port": 443,
                "scheme": "HTTPS",
                "host": "h",
                "httpHeaders": [{"name": "X", "value": "1"}],
            }
        },
        {},
        "ip",
    )
    assert https.url == "https://h:443/"
    assert https.headers == (("X", "1"),)
    with pytest.raises(ProbeError, match="named port"):
        parse_probe({"httpGet": {"port": "nope"}}, container, "ip")
    with pytest.raises(ProbeError, match="unsupported"):
        parse_probe({"grpc": {"port": 1}}, container, "ip")


def test_ip_allocation_unique_round_robin_and_released(tmp_path: Path) -> None:
    alloc = IPAllocator("127.9.0.0/30")  # .0 (network) and .3 (broadcast) are never used
    first, second = alloc.allocate(), alloc.allocate()
    assert {first, second} == {"127.9.0.1", "127.9.0.2"}
    with pytest.raises(PoolExhaustedError):
        alloc.allocate()
    alloc.release(first)
    assert alloc.allocate() == first
    with pytest.raises(ValueError, match="loopback"):
        IPAllocator("10.0.0.0/24")


def test_ip_allocation_skips_recently_released_and_other_processes(tmp_path: Path) -> None:
    a = IPAllocator("127.10.0.0/24", lock_dir=tmp_path)
    b = IPAllocator("127.10.0.0/24", lock_dir=tmp_path)  # another kubelet, same range
    ip1 = a.allocate()
    a.release(ip1)
    ip2 = a.allocate()
    assert ip2 != ip1  # round robin: not reused at once
    assert b.allocate() == ip1  # free again for others; ip2 is claimed by a
    assert b.allocate() not in {ip1, ip2}
    assert not b.reserve(ip2)
    for ip in a.in_use():
        assert ip.rsplit(".", 1)[1] not in ("0", "255")


def test_scheduling_predicates() -> None:
    labels = {"kubernetes.io/hostname": "n1", "kubernetes.io/os": "linux"}

    def check(spec: dict[str, object]) -> str | None:
        return unschedulable_reason({"spec": spec}, node_name="n1", node_labels=labels)

    assert check({}) is None
    assert check({"nodeSelector": {"kubernetes.io/os": "linux"}}) is None
    assert "didn't match" in (check({"nodeSelector": {"disktype": "ssd"}}) or "")
    term = {
        "matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    assert check({"affinity": affinity}) is not None
    term["matchExpressions"][0]["values"] = ["linux"]  # type: ignore[index]
    assert check({"affinity": affinity}) is None
    by_name = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
                ]
            }
        }
    }
    assert check({"affinity": by_name}) is not None
    taint = [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]
    assert (
        unschedulable_reason({"spec": {}}, node_name="n1", node_labels=labels, node_taints=taint)
        is not None
    )
    tolerated = {"spec": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}}
    assert (
        unschedulable_reason(tolerated, node_name="n1", node_labels=labels, node_taints=taint)
        is None
    )


def test_crashloop_backoff_doubles_up_to_max() -> None:
    k = Kubelet.__new__(Kubelet)
    k.backoff_base, k.backoff_max = 1.0, 10.0
    assert [k.backoff(i) for i in range(7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
