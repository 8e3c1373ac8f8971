"""What a NetworkPolicy selects, as the enforcer sees the cluster (pure functions of
:mod:`kernelsession.localcluster.host.netpol.policy`)."""

from __future__ import annotations

from typing import Any

from kernelsession.localcluster.host.netpol.policy import (
    in_ranges,
    ipv4_network,
    is_stand_in,
    named_port,
    node_dns_stand_in,
    object_labels,
    peer_sources,
    pod_ip,
    pod_selected,
    selecting_policies,
)

NAMESPACES = {
    "labs": {"metadata": {"name": "labs", "labels": {"team": "data"}}},
    "ops": {"metadata": {"name": "ops", "labels": {"team": "platform"}}},
}


def pod(
    name: str, ns: str, ip: str | None, labels: dict[str, str], **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "containers": [
                {
                    "ports": [
                        {"name": "lab", "containerPort": 8888},
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    ]
                }
            ]
        },
        "status": {"phase": "Running", **({"podIP": ip} if ip else {}), **status},
    }


def test_a_pod_has_its_own_ip_only_while_running_off_the_host_network() -> None:
    assert pod_ip(pod("a", "labs", "10.244.0.5", {})) == "10.244.0.5"
    assert pod_ip(pod("a", "labs", None, {})) is None  # not scheduled yet
    assert pod_ip(pod("a", "labs", "10.244.0.5", {}, phase="Succeeded")) is None
    assert pod_ip(pod("a", "labs", "10.244.0.5", {}, phase="Failed")) is None
    host = pod("a", "labs", "192.168.1.2", {})
    host["spec"]["hostNetwork"] = True
    assert pod_ip(host) is None


def test_named_ports_resolve_by_name_and_protocol() -> None:
    lab = pod("a", "labs", "10.244.0.5", {})
    assert named_port(lab, "lab", "TCP") == 8888  # protocol defaults to TCP
    assert named_port(lab, "dns", "UDP") == 53
    assert named_port(lab, "dns", "TCP") is None
    assert named_port(lab, "metrics", "TCP") is None


def test_ipv4_networks_and_ranges() -> None:
    assert str(ipv4_network("10.1.2.3/16")) == "10.1.0.0/16"  # host bits allowed
    assert ipv4_network("fd00::/64") is None
    assert ipv4_network("not-a-cidr") is None
    assert in_ranges("10.1.2.3", ["192.168.0.0/16", "10.1.0.0/16"])
    assert not in_ranges("10.2.0.1", ["10.1.0.0/16"])
    assert not in_ranges("10.2.0.1", [])


def test_a_peer_without_a_namespace_selector_stays_in_the_policy_namespace() -> None:
    alice = pod("alice", "labs", "10.244.0.5", {"app": "lab"})
    other = pod("alice", "ops", "10.244.0.6", {"app": "lab"})
    peer = {"podSelector": {"matchLabels": {"app": "lab"}}}
    assert pod_selected(peer, "labs", alice, NAMESPACES)
    assert not pod_selected(peer, "labs", other, NAMESPACES)


def test_a_namespace_selector_picks_namespaces_by_their_labels() -> None:
    ops = pod("op", "ops", "10.244.0.6", {"app": "operator"})
    by_team = {"namespaceSelector": {"matchLabels": {"team": "platform"}}}
    assert pod_selected(by_team, "labs", ops, NAMESPACES)
    both = {**by_team, "podSelector": {"matchLabels": {"app": "lab"}}}
    assert not pod_selected(both, "labs", ops, NAMESPACES)  # both must select it
    everywhere = {"namespaceSelector": {}}
    assert pod_selected(everywhere, "labs", ops, NAMESPACES)
    unknown = pod("x", "gone", "10.244.0.7", {})  # its namespace is not (yet) known
    assert not pod_selected(by_team, "labs", unknown, NAMESPACES)
    assert pod_selected(everywhere, "labs", unknown, NAMESPACES)


def test_peer_sources_are_pod_addresses_or_an_ipv4_block_with_its_holes() -> None:
    pods = [
        pod("a", "labs", "10.244.0.5", {"app": "lab"}),
        pod("b", "labs", None, {"app": "lab"}),  # no address yet: no source
        node_dns_stand_in("10.244.0.1"),  # stand-ins are never sources
    ]
    assert peer_sources({"podSelector": {}}, "labs", pods, NAMESPACES) == (
        ["10.244.0.5/32"],
        [],
    )
    assert peer_sources({"namespaceSelector": {}}, "labs", pods, NAMESPACES) == (
        ["10.244.0.5/32"],
        [],
    )
    block = {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", "fd00::/64"]}}
    assert peer_sources(block, "labs", pods, NAMESPACES) == (["10.0.0.0/8"], ["10.1.0.0/16"])
    assert peer_sources({"ipBlock": {"cidr": "fd00::/8"}}, "labs", pods, NAMESPACES) == ([], [])


def test_the_dns_stand_in_looks_like_a_coredns_pod_at_the_node_ip() -> None:
    stand_in = node_dns_stand_in("10.244.0.1")
    assert is_stand_in(stand_in)
    assert not is_stand_in(pod("a", "labs", "10.244.0.5", {}))
    assert pod_ip(stand_in) == "10.244.0.1"
    assert object_labels(stand_in) == {"k8s-app": "kube-dns"}
    assert named_port(stand_in, "dns", "UDP") == 53
    assert named_port(stand_in, "dns-tcp", "TCP") == 53


def test_policies_select_pods_of_their_own_namespace_only() -> None:
    everyone = {"metadata": {"name": "all", "namespace": "labs"}, "spec": {"podSelector": {}}}
    labs_only = {
        "metadata": {"name": "lab", "namespace": "labs"},
        "spec": {"podSelector": {"matchLabels": {"app": "lab"}}},
    }
    elsewhere = {"metadata": {"name": "all", "namespace": "ops"}, "spec": {"podSelector": {}}}
    policies = [everyone, labs_only, elsewhere]
    assert selecting_policies(policies, pod("a", "labs", "10.244.0.5", {"app": "lab"})) == [
        everyone,
        labs_only,
    ]
    assert selecting_policies(policies, pod("b", "labs", "10.244.0.6", {})) == [everyone]
    assert object_labels({"metadata": {}}) == {}
