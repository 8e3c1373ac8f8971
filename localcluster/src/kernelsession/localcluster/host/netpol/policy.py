"""Which pods and peers a NetworkPolicy selects, and the cluster's objects as the enforcer
sees them (pure functions over plain API dicts)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

STAND_IN_ANNOTATION = "localcluster.kernelsession.dev/node-process"
"""Marks a stand-in pod: a node process that policies may select like a pod, reachable
only on its declared container ports (see :func:`node_dns_stand_in`)."""


Obj = Mapping[str, Any]


def object_labels(obj: Obj) -> Mapping[str, str]:
    """``metadata.labels`` of an object ({} when it has none)."""
    return dict((obj.get("metadata") or {}).get("labels") or {})


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels, matchExpressions) against ``labels``; {} matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], set(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def policy_types(policy: Obj) -> list[str]:
    """``spec.policyTypes``, defaulted as the API server does when absent: Ingress, plus
    Egress when the policy has egress rules."""
    spec = policy.get("spec") or {}
    types = spec.get("policyTypes")
    if types:
        return [str(t) for t in types]
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def node_dns_stand_in(node_ip: str) -> dict[str, Any]:
    """The stand-in pod for the node's CoreDNS process: what a CoreDNS pod looks like to
    policies (namespace ``kube-system``, label ``k8s-app: kube-dns``, ports ``dns`` 53/UDP
    and ``dns-tcp`` 53/TCP), at ``node_ip``."""
    return {
        "metadata": {
            "name": "coredns-node-process",
            "namespace": "kube-system",
            "labels": {"k8s-app": "kube-dns"},
            "annotations": {STAND_IN_ANNOTATION: "coredns"},
        },
        "spec": {
            "containers": [
                {
                    "name": "coredns",
                    "ports": [
                        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                    ],
                }
            ]
        },
        "status": {"phase": "Running", "podIP": node_ip},
    }


def is_stand_in(pod: Obj) -> bool:
    """Whether ``pod`` is a stand-in for a node process (:func:`node_dns_stand_in`)."""
    return STAND_IN_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def pod_ip(pod: Obj) -> str | None:
    """The pod's own IP; None for a hostNetwork pod, a finished one or one without an IP
    yet (policies neither select nor isolate those addresses)."""
    status = pod.get("status") or {}
    if (pod.get("spec") or {}).get("hostNetwork"):
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip = status.get("podIP")
    return str(ip) if ip else None


def named_port(pod: Obj, name: str, protocol: str) -> int | None:
    """The number of the container port ``name`` with ``protocol`` on ``pod``, or None."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


def ipv4_network(cidr: str) -> ipaddress.IPv4Network | None:
    """``cidr`` as an IPv4 network (host bits allowed); None for IPv6 or no CIDR at all."""
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return network if isinstance(network, ipaddress.IPv4Network) else None


def pod_selected(peer: Obj, policy_ns: str, pod: Obj, namespaces: Mapping[str, Obj]) -> bool:
    """Whether a podSelector / namespaceSelector peer selects ``pod``."""
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    ns = (pod.get("metadata") or {}).get("namespace", "")
    if ns_sel is not None:
        if not selector_matches(ns_sel, object_labels(namespaces.get(ns, {}))):
            return False
    elif ns != policy_ns:
        return False
    return pod_sel is None or selector_matches(pod_sel, object_labels(pod))


def peer_sources(
    peer: Obj, policy_ns: str, pods: list[Obj], namespaces: Mapping[str, Obj]
) -> tuple[list[str], list[str]]:
    """(source CIDRs, except CIDRs) of one ``from`` peer."""
    block = peer.get("ipBlock")
    if block:
        if ipv4_network(str(block["cidr"])) is None:
            return [], []
        excepts = [str(c) for c in block.get("except") or [] if ipv4_network(str(c)) is not None]
        return [str(block["cidr"])], excepts
    sources: list[str] = []
    for pod in pods:
        ip = pod_ip(pod)
        if ip is None or is_stand_in(pod):
            continue
        if pod_selected(peer, policy_ns, pod, namespaces):
            sources.append(f"{ip}/32")
    return sources, []


def block_ranges(cidr: str, excepts: Iterable[str] = ()) -> list[str]:
    """The IPv4 ``cidr`` minus ``excepts`` as disjoint CIDRs, sorted ([] for IPv6)."""
    network = ipv4_network(cidr)
    if network is None:
        return []
    remaining = [network]
    for text in excepts:
        hole = ipv4_network(text)
        if hole is None:
            continue
        kept: list[ipaddress.IPv4Network] = []
        for part in remaining:
            if hole.subnet_of(part):
                kept.extend(part.address_exclude(hole))
            elif not part.subnet_of(hole):
                kept.append(part)
        remaining = kept
    return [str(n) for n in sorted(remaining)]


def in_ranges(ip: str, ranges: list[str]) -> bool:
    """Whether the IPv4 address ``ip`` is in one of the CIDRs ``ranges``."""
    address = ipaddress.IPv4Address(ip)
    return any(address in ipaddress.IPv4Network(r) for r in ranges)


def selecting_policies(policies: list[Obj], pod: Obj) -> list[Obj]:
    """The ``policies`` whose podSelector selects ``pod`` (same namespace only)."""
    ns = (pod.get("metadata") or {}).get("namespace", "")
    return [
        pol
        for pol in policies
        if (pol.get("metadata") or {}).get("namespace") == ns
        and selector_matches((pol.get("spec") or {}).get("podSelector") or {}, object_labels(pod))
    ]
