"""The node's NetworkPolicy enforcer: rendering policies into iptables rules (pure)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from typing import Any

import pytest

from kernelsession.localcluster.host.netpol.enforcer import APPLY_SHARE, COALESCE, HEAL_SHARE, pace
from kernelsession.localcluster.host.netpol.policy import (
    block_ranges,
    node_dns_stand_in,
    policy_types,
    selector_matches,
)
from kernelsession.localcluster.host.netpol.rules import (
    EGRESS_CHAIN_PREFIX,
    INPUT_CHAIN,
    MAIN_CHAIN,
    POD_CHAIN_PREFIX,
    render,
)


def pod(name: str, ns: str, ip: str, labels: dict[str, str], port: int = 8888) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"ports": [{"name": "lab", "containerPort": port}]}]},
        "status": {"phase": "Running", "podIP": ip},
    }


NAMESPACES = {
    "labs": {"metadata": {"name": "labs", "labels": {"kubernetes.io/metadata.name": "labs"}}},
    "ops": {"metadata": {"name": "ops", "labels": {"kubernetes.io/metadata.name": "ops"}}},
}
LAB_POLICY = {
    "metadata": {"name": "alice-lab", "namespace": "labs"},
    "spec": {
        "podSelector": {"matchLabels": {"session": "alice"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"client": "true"}}},
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "ops"}
                        },
                        "podSelector": {"matchLabels": {"app": "operator"}},
                    },
                ],
                "ports": [{"protocol": "TCP", "port": 8888}],
            }
        ],
    },
}


def test_selectors() -> None:
    assert selector_matches({}, {"a": "b"})
    assert selector_matches({"matchLabels": {"a": "b"}}, {"a": "b", "c": "d"})
    assert not selector_matches({"matchLabels": {"a": "b"}}, {"a": "x"})
    expr = {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b", "c"]}]}
    assert selector_matches(expr, {"a": "c"})
    assert not selector_matches(expr, {})
    assert selector_matches({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {})
    assert not selector_matches(None, {})


def test_lab_policy_admits_clients_and_the_operator_only() -> None:
    pods = [
        pod("alice", "labs", "10.244.0.5", {"session": "alice"}),
        pod("bob", "labs", "10.244.0.6", {"session": "bob"}),
        pod("client", "ops", "10.244.0.7", {"client": "true"}),
        pod("operator", "ops", "10.244.0.8", {"app": "operator"}),
        pod("stranger", "labs", "10.244.0.9", {}),
    ]
    chains, rules = render(pods, NAMESPACES, [LAB_POLICY])
    assert chains[0] == MAIN_CHAIN
    assert len(chains) == 2  # only alice is isolated
    (jump,) = [r for r in rules if "-d " in r]
    assert jump.startswith(f"-A {MAIN_CHAIN} -d 10.244.0.5/32 -j KS-NPI-")
    pod_chain = jump.split()[-1]
    accepts = [r for r in rules if r.startswith(f"-A {pod_chain}") and r.endswith("ACCEPT")]
    assert {r.split("-s ")[1].split()[0] for r in accepts} == {"10.244.0.7/32", "10.244.0.8/32"}
    assert all("--dport 8888" in r for r in accepts)
    assert rules[-1] == f"-A {pod_chain} -j DROP"
    assert rules[0].endswith("--ctstate RELATED,ESTABLISHED -j ACCEPT")


def test_named_ports_ipblocks_and_empty_from() -> None:
    policy = {
        "metadata": {"name": "p", "namespace": "labs"},
        "spec": {
            "podSelector": {},
            "ingress": [
                {"ports": [{"port": "lab"}]},
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
            ],
        },
    }
    chains, rules = render([pod("a", "labs", "10.244.0.5", {}, port=9999)], NAMESPACES, [policy])
    assert any("-p tcp -m tcp --dport 9999 -j ACCEPT" in r for r in rules)
    except_chain = next(c for c in chains if c.startswith("KS-NPR-"))
    assert f"-A {except_chain} -s 10.1.0.0/16 -j RETURN" in rules
    assert any(r.endswith(f"-s 10.0.0.0/8 -j {except_chain}") for r in rules)


def test_no_policy_no_isolation_and_egress_only_policies_do_not_isolate_ingress() -> None:
    chains, rules = render([pod("a", "labs", "10.244.0.5", {})], NAMESPACES, [])
    assert chains == [MAIN_CHAIN]
    assert len(rules) == 1
    egress_only = {
        "metadata": {"name": "e", "namespace": "labs"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    chains, rules = render([pod("a", "labs", "10.244.0.5", {})], NAMESPACES, [egress_only])
    assert not any(c.startswith(POD_CHAIN_PREFIX) for c in chains)  # no ingress isolation
    assert not any(" -d 10.244.0.5/32 " in r for r in rules)
    # the pod is egress-isolated, and its one rule ({}: everything) admits everything
    assert [c for c in chains if c.startswith(EGRESS_CHAIN_PREFIX)] != []
    assert INPUT_CHAIN in chains


# -- egress -----------------------------------------------------------------------------
# A packet walks the rendered rules as the kernel would: FORWARD for a pod (or any
# address but the node's), INPUT for the node. The evaluator knows exactly the syntax the
# renderer emits and fails on anything else.

NODE_IP = "10.244.0.1"
EGRESS_NAMESPACES = {
    name: {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}}
    for name in ("labs", "ops", "kube-system")
}


def _server(name: str, ns: str, ip: str, labels: dict[str, str], port: int) -> dict[str, Any]:
    server = pod(name, ns, ip, labels)
    server["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": port}]
    return server


HOSTNET = pod("hostnet", "labs", "10.0.2.15", {"app": "web"})
HOSTNET["spec"]["hostNetwork"] = True
EGRESS_PODS = [
    pod("client", "labs", "10.244.0.10", {"role": "client"}),
    _server("web", "labs", "10.244.0.11", {"app": "web"}, 8080),
    _server("web2", "labs", "10.244.0.12", {"app": "web"}, 9090),
    _server("db", "ops", "10.244.0.13", {"app": "db"}, 5432),
    pod("other", "labs", "10.244.0.14", {}),
    HOSTNET,
    node_dns_stand_in(NODE_IP),
]
IP = {p["metadata"]["name"]: p["status"]["podIP"] for p in EGRESS_PODS}


def _net(cidr: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(cidr, strict=False)


def _matches(options: list[str], packet: dict[str, Any]) -> bool:
    i = 0
    while i < len(options):
        option, value = options[i], options[i + 1]
        if option == "-s" and ipaddress.IPv4Address(packet["src"]) not in _net(value):
            return False
        if option == "-d" and ipaddress.IPv4Address(packet["dst"]) not in _net(value):
            return False
        if option == "-p" and value != packet["proto"]:
            return False
        if option == "-m":
            assert value == "conntrack" or value == options[i - 1], options  # -p x -m x
        if option == "--dport":
            low, _, high = value.partition(":")
            if not int(low) <= packet["port"] <= int(high or low):
                return False
        if option == "--ctstate" and packet["state"] not in value.split(","):
            return False
        assert option in ("-s", "-d", "-p", "-m", "--dport", "--ctstate"), options
        i += 2
    return True


def _walk(rules: dict[str, list[tuple[list[str], str]]], chain: str, packet: dict[str, Any]) -> str:
    for options, target in rules[chain]:
        if not _matches(options, packet):
            continue
        if target in ("ACCEPT", "DROP", "RETURN"):
            return target
        verdict = _walk(rules, target, packet)
        if verdict != "RETURN":
            return verdict
    return "RETURN"


def verdict(
    policies: list[dict[str, Any]],
    src: str,
    dst: str,
    port: int,
    proto: str = "tcp",
    state: str = "NEW",
) -> bool:
    """Whether a packet from pod (or address) ``src`` to ``dst`` passes the filter."""
    chains, lines = render(EGRESS_PODS, EGRESS_NAMESPACES, policies)
    rules: dict[str, list[tuple[list[str], str]]] = {c: [] for c in chains}
    for line in lines:
        words = line.split()
        assert words[0] == "-A", line
        assert words[-2] == "-j", line
        assert words[-1] in (*chains, "ACCEPT", "DROP", "RETURN"), line
        rules[words[1]].append((words[2:-2], words[-1]))
    packet = {
        "src": IP.get(src, src),
        "dst": IP.get(dst, dst),
        "port": port,
        "proto": proto,
        "state": state,
    }
    if packet["dst"] == NODE_IP:  # to the node: INPUT, where the enforcer never accepts
        if INPUT_CHAIN not in chains:
            return True
        assert not any(target == "ACCEPT" for _, target in rules[INPUT_CHAIN])
        return _walk(rules, INPUT_CHAIN, packet) != "DROP"
    return _walk(rules, MAIN_CHAIN, packet) != "DROP"


def egress(
    name: str,
    rules: list[dict[str, Any]] | None,
    *,
    selector: dict[str, Any] | None = None,
    ns: str = "labs",
    types: list[str] | None = None,
    ingress: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A policy selecting the client pod (or ``selector``) with egress ``rules``."""
    client = {"matchLabels": {"role": "client"}}
    spec: dict[str, Any] = {"podSelector": client if selector is None else selector}
    if rules is not None:
        spec["egress"] = rules
    if ingress is not None:
        spec["ingress"] = ingress
    if types is not None:
        spec["policyTypes"] = types
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


DENY = egress("deny", None, types=["Egress"])
WEB = {"podSelector": {"matchLabels": {"app": "web"}}}
OPS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}
ANY_DB = {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "db"}}}
KUBE_DNS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
TO_WEB = egress("e", [{"to": [WEB]}])
TO_OWN_NS = egress("e", [{"to": [{"podSelector": {}}]}])
TO_OPS = egress("e", [{"to": [OPS]}])
TO_DB = egress("e", [{"to": [ANY_DB]}])
BLOCK = egress(
    "e", [{"to": [{"ipBlock": {"cidr": "10.244.0.0/24", "except": ["10.244.0.11/32"]}}]}]
)
BLOCK_WEB2 = egress("e", [{"to": [{"ipBlock": {"cidr": "10.244.0.12/32"}}]}])
BLOCK_PORT = egress(
    "e", [{"to": [{"ipBlock": {"cidr": "10.244.0.12/32"}}], "ports": [{"port": 9090}]}]
)
BLOCK_V6 = egress("e", [{"to": [{"ipBlock": {"cidr": "::/0"}}]}])
NAMED = egress("e", [{"to": [WEB], "ports": [{"port": "http"}]}])
NAMED_UDP = egress("e", [{"to": [WEB], "ports": [{"port": "http", "protocol": "UDP"}]}])
NAMED_ALL = egress("e", [{"ports": [{"port": "http"}]}])
NAMED_BLOCK = egress(
    "e", [{"to": [{"ipBlock": {"cidr": "10.244.0.0/28"}}], "ports": [{"port": "http"}]}]
)
NAMED_SMALL_BLOCK = egress(
    "e", [{"to": [{"ipBlock": {"cidr": "10.244.0.8/30"}}], "ports": [{"port": "http"}]}]
)
RANGE = egress("e", [{"to": [WEB], "ports": [{"port": 8000, "endPort": 8100}]}])
SCTP = egress("e", [{"to": [WEB], "ports": [{"port": 9999, "protocol": "SCTP"}]}])
UDP_ONLY = egress("e", [{"to": [WEB], "ports": [{"protocol": "UDP"}]}])
UDP_53 = egress("e", [{"ports": [{"port": 53, "protocol": "UDP"}]}])
ALL = egress("e", [{}])
DNS = egress("e", [{"to": [KUBE_DNS], "ports": DNS_PORTS}])
DNS_ANY_PORT = egress("e", [{"to": [KUBE_DNS]}])
DNS_6443 = egress("e", [{"to": [KUBE_DNS], "ports": [{"port": 6443}]}])
DNS_NAMED = egress("e", [{"to": [KUBE_DNS], "ports": [{"port": "dns", "protocol": "UDP"}]}])
DNS_OWN_NS = egress("e", [{"to": [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]}])
DEFAULTED_NO_RULES = egress("i", [])  # no policyTypes: Ingress only
DEFAULTED_RULES = egress("e", [{"to": [WEB]}])  # no policyTypes: Ingress and Egress
EGRESS_NO_RULES = egress("e", [], types=["Egress"])
INGRESS_TYPE_ONLY = egress("e", [{"to": []}], types=["Ingress"])
OTHER_NS_DENY = egress("e", [], ns="ops", types=["Egress"])
WEB_IN_DENY = egress("i", None, selector={"matchLabels": {"app": "web"}}, types=["Ingress"])
BOTH = egress(
    "both",
    [],
    selector={"matchLabels": {"app": "web"}},
    types=["Ingress", "Egress"],
    ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}],
)
N = NODE_IP

# (case, policies, source, destination, port, protocol, allowed)
# fmt: off
EGRESS_CASES: list[tuple[str, list[dict[str, Any]], str, str, int, str, bool]] = [
    ("no policy: pod to pod", [], "client", "web", 8080, "tcp", True),
    ("no policy: pod to the API server", [], "client", N, 6443, "tcp", True),
    ("default deny: pod", [DENY], "client", "web", 8080, "tcp", False),
    ("default deny: other namespace", [DENY], "client", "db", 5432, "tcp", False),
    ("default deny: API server on the node", [DENY], "client", N, 6443, "tcp", False),
    ("default deny: kubelet on the node", [DENY], "client", N, 10250, "tcp", False),
    ("default deny: DNS over UDP", [DENY], "client", N, 53, "udp", False),
    ("default deny: DNS over TCP", [DENY], "client", N, 53, "tcp", False),
    ("default deny: outside address", [DENY], "client", "192.0.2.1", 80, "tcp", False),
    ("default deny: replies pass", [DENY], "client", "web", 40000, "tcp", True),
    ("default deny: replies to the node pass", [DENY], "client", N, 40000, "tcp", True),
    ("unselected pod is unrestricted", [DENY], "web", "other", 80, "tcp", True),
    ("unselected pod reaches the node", [DENY], "web", N, 6443, "tcp", True),
    ("types defaulted: no egress rules", [DEFAULTED_NO_RULES], "client", "web", 80, "tcp", True),
    ("types defaulted: egress rules", [DEFAULTED_RULES], "client", "db", 5432, "tcp", False),
    ("Egress type, empty rule list", [EGRESS_NO_RULES], "client", "web", 8080, "tcp", False),
    ("Ingress type only: egress ignored", [INGRESS_TYPE_ONLY], "client", "other", 1, "tcp", True),
    ("pod selector: selected", [TO_WEB], "client", "web2", 9090, "tcp", True),
    ("pod selector: any port", [TO_WEB], "client", "web", 1, "udp", True),
    ("pod selector: not selected", [TO_WEB], "client", "other", 80, "tcp", False),
    ("pod selector: own namespace only", [TO_OWN_NS], "client", "db", 5432, "tcp", False),
    ("pod selector: not the node", [TO_OWN_NS], "client", N, 6443, "tcp", False),
    ("namespace selector", [TO_OPS], "client", "db", 5432, "tcp", True),
    ("namespace selector: other namespace", [TO_OPS], "client", "web", 8080, "tcp", False),
    ("both selectors: match", [TO_DB], "client", "db", 5432, "tcp", True),
    ("both selectors: wrong labels", [TO_DB], "client", "web", 8080, "tcp", False),
    ("ipBlock", [BLOCK], "client", "web2", 9090, "tcp", True),
    ("ipBlock: except", [BLOCK], "client", "web", 8080, "tcp", False),
    ("ipBlock: the node is an ipBlock destination", [BLOCK], "client", N, 6443, "tcp", True),
    ("ipBlock: outside the block", [BLOCK_WEB2], "client", "web", 8080, "tcp", False),
    ("ipBlock with port", [BLOCK_PORT], "client", "web2", 9090, "tcp", True),
    ("ipBlock with port: other port", [BLOCK_PORT], "client", "web2", 9091, "tcp", False),
    ("ipBlock IPv6 only: nothing", [BLOCK_V6], "client", "web", 8080, "tcp", False),
    ("named port: on web", [NAMED], "client", "web", 8080, "tcp", True),
    ("named port: web's number on web2", [NAMED], "client", "web2", 8080, "tcp", False),
    ("named port: on web2", [NAMED], "client", "web2", 9090, "tcp", True),
    ("named port: web2's number on web", [NAMED], "client", "web", 9090, "tcp", False),
    ("named port: protocol", [NAMED_UDP], "client", "web", 8080, "udp", False),
    ("named port, empty to: a pod with it", [NAMED_ALL], "client", "db", 5432, "tcp", True),
    ("named port, empty to: no such port", [NAMED_ALL], "client", "other", 8888, "tcp", False),
    ("named port, ipBlock: pod in it", [NAMED_BLOCK], "client", "web2", 9090, "tcp", True),
    ("named port, ipBlock: pod outside", [NAMED_SMALL_BLOCK], "client", "web2", 9090, "tcp", False),
    ("endPort: in range", [RANGE], "client", "web", 8080, "tcp", True),
    ("endPort: end of range", [RANGE], "client", "web", 8100, "tcp", True),
    ("endPort: above range", [RANGE], "client", "web2", 9090, "tcp", False),
    ("endPort: other protocol", [RANGE], "client", "web", 8080, "udp", False),
    ("SCTP port", [SCTP], "client", "web", 9999, "sctp", True),
    ("SCTP port: TCP denied", [SCTP], "client", "web", 9999, "tcp", False),
    ("protocol only", [UDP_ONLY], "client", "web", 7, "udp", True),
    ("protocol only: other protocol", [UDP_ONLY], "client", "web", 7, "tcp", False),
    ("empty to: everywhere on the port", [UDP_53], "client", N, 53, "udp", True),
    ("empty to: not on other ports", [UDP_53], "client", N, 53, "tcp", False),
    ("empty rule: everything", [ALL], "client", N, 6443, "tcp", True),
    ("empty rule: outside", [ALL], "client", "192.0.2.1", 80, "tcp", True),
    ("DNS rule: UDP 53 to kube-dns", [DNS], "client", N, 53, "udp", True),
    ("DNS rule: TCP 53 to kube-dns", [DNS], "client", N, 53, "tcp", True),
    ("DNS rule: not the API server", [DNS], "client", N, 6443, "tcp", False),
    ("DNS rule: not other pods", [DNS], "client", "web", 53, "udp", False),
    ("DNS rule without ports: DNS", [DNS_ANY_PORT], "client", N, 53, "udp", True),
    ("DNS rule without ports: not the API server", [DNS_ANY_PORT], "client", N, 6443, "tcp", False),
    ("DNS rule, other port: nothing", [DNS_6443], "client", N, 6443, "tcp", False),
    ("DNS rule by named port", [DNS_NAMED], "client", N, 53, "udp", True),
    ("DNS rule without namespace selector", [DNS_OWN_NS], "client", N, 53, "udp", False),
    ("union of policies: first", [TO_WEB, TO_DB], "client", "web", 8080, "tcp", True),
    ("union of policies: second", [TO_WEB, TO_DB], "client", "db", 5432, "tcp", True),
    ("union with deny-all", [DENY, TO_WEB], "client", "web", 8080, "tcp", True),
    ("policy of another namespace", [OTHER_NS_DENY], "client", "web", 8080, "tcp", True),
    ("ingress+egress: ingress admits the client", [BOTH], "client", "web", 8080, "tcp", True),
    ("ingress+egress: ingress denies others", [BOTH], "other", "web", 8080, "tcp", False),
    ("ingress+egress: egress denies", [BOTH], "web", "other", 80, "tcp", False),
    ("egress allows, ingress denies", [TO_WEB, WEB_IN_DENY], "client", "web", 8080, "tcp", False),
    ("egress denies, ingress admits", [DENY, BOTH], "client", "web", 8080, "tcp", False),
]
# fmt: on


@pytest.mark.parametrize(
    ("policies", "src", "dst", "port", "proto", "allowed"),
    [case[1:] for case in EGRESS_CASES],
    ids=[case[0] for case in EGRESS_CASES],
)
def test_egress(
    policies: list[dict[str, Any]], src: str, dst: str, port: int, proto: str, allowed: bool
) -> None:
    state = "ESTABLISHED" if port == 40000 else "NEW"  # the two "replies pass" cases
    assert verdict(policies, src, dst, port, proto, state) is allowed


def test_egress_chains_and_hooks() -> None:
    chains, rules = render(EGRESS_PODS, EGRESS_NAMESPACES, [DENY])
    (chain,) = [c for c in chains if c.startswith(EGRESS_CHAIN_PREFIX)]
    # FORWARD: replies first, then the egress jump (before any ingress jump)
    assert rules[0] == f"-A {MAIN_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert rules[1] == f"-A {MAIN_CHAIN} -s 10.244.0.10/32 -j {chain}"
    # INPUT: replies returned to INPUT's own rules, the same egress chain for the node
    assert f"-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN" in rules
    assert f"-A {INPUT_CHAIN} -s 10.244.0.10/32 -j {chain}" in rules
    assert [r for r in rules if r.startswith(f"-A {chain} ")] == [f"-A {chain} -j DROP"]
    assert len(chain) <= 28  # iptables' limit on chain names
    # a policy selecting every pod of kube-system never isolates the DNS stand-in, nor a
    # hostNetwork pod (they are the node)
    everything = [
        egress("all", [], selector={}, ns=ns, types=["Ingress", "Egress"])
        for ns in ("kube-system", "labs")
    ]
    chains, rules = render(EGRESS_PODS, EGRESS_NAMESPACES, everything)
    assert not any(f"{NODE_IP}/32 -j" in r or "10.0.2.15" in r for r in rules)
    assert len([c for c in chains if c.startswith(EGRESS_CHAIN_PREFIX)]) == 4  # labs' pods


def test_egress_rendering_is_deterministic_and_deduplicated() -> None:
    policy = egress("e", [{"to": [WEB, WEB], "ports": [{"port": 8080}, {"port": 8080}]}])
    first = render(EGRESS_PODS, EGRESS_NAMESPACES, [policy])
    assert render(list(reversed(EGRESS_PODS)), EGRESS_NAMESPACES, [policy]) == first
    _, rules = first
    assert len([r for r in rules if r.endswith("-j RETURN") and "10.244.0.11/32" in r]) == 1


def test_block_ranges() -> None:
    assert block_ranges("10.0.0.0/8") == ["10.0.0.0/8"]
    assert block_ranges("10.0.0.1/8") == ["10.0.0.0/8"]  # host bits as the API allows
    assert block_ranges("10.0.0.0/30", ["10.0.0.1/32"]) == ["10.0.0.0/32", "10.0.0.2/31"]
    assert block_ranges("10.0.0.0/24", ["10.0.0.0/24"]) == []
    assert block_ranges("10.0.0.0/24", ["10.0.0.0/16"]) == []
    ranges = [
        ipaddress.IPv4Network(r)
        for r in block_ranges("0.0.0.0/0", ["10.244.0.0/16", "10.96.0.0/16"])
    ]
    assert sum(r.num_addresses for r in ranges) == 2**32 - 2 * 2**16
    assert not any(r.overlaps(ipaddress.IPv4Network("10.244.0.0/16")) for r in ranges)
    assert block_ranges("::/0") == []


def test_ingress_ipv6_blocks_are_skipped() -> None:
    policy = {
        "metadata": {"name": "p", "namespace": "labs"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "::/0"}}]}]},
    }
    _, rules = render([pod("a", "labs", "10.244.0.5", {})], NAMESPACES, [policy])
    assert not any("::" in r for r in rules)
    assert rules[-1].endswith("-j DROP")


def test_policy_types_default_as_the_api_server() -> None:
    assert policy_types({"spec": {}}) == ["Ingress"]
    assert policy_types({"spec": {"egress": []}}) == ["Ingress"]
    assert policy_types({"spec": {"egress": [{}]}}) == ["Ingress", "Egress"]
    assert policy_types({"spec": {"policyTypes": ["Egress"]}}) == ["Egress"]


@pytest.mark.skipif(
    shutil.which("iptables-restore") is None or os.geteuid() != 0,
    reason="iptables-restore --test needs root",
)
def test_rendered_rules_are_accepted_by_iptables_restore() -> None:
    """Syntax only (``--test``: nothing is committed to the host)."""
    policies = [case[1] for case in EGRESS_CASES]
    chains, rules = render(EGRESS_PODS, EGRESS_NAMESPACES, [p for group in policies for p in group])
    text = "\n".join(["*filter", *(f":{c} - [0:0]" for c in chains), *rules, "COMMIT", ""])
    result = subprocess.run(
        ["iptables-restore", "--test", "--noflush", "-w", "5"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_enforcer_paces_costly_work_to_its_share_of_the_time() -> None:
    # cheap work (a few pods): the least wait, as before
    assert pace(1.0, 0.02, HEAL_SHARE) == 1.0
    assert pace(COALESCE, 0.004, APPLY_SHARE) == COALESCE
    # 1.5 s of rendering at 3,000 pods: wait twice that, a third of the time busy
    assert pace(COALESCE, 1.5, 0.33) == pytest.approx(1.5 * 0.67 / 0.33)
    # a 0.3 s comparison: every 2.7 s, a tenth of the time
    assert pace(1.0, 0.3, HEAL_SHARE) == pytest.approx(2.7)
    assert pace(0.5, 2.0, 1.0) == 0.5
    with pytest.raises(ValueError, match="share"):
        pace(1.0, 1.0, 0.0)
