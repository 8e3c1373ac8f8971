"""The node's NetworkPolicy enforcer: rendering policies into iptables rules (pure)."""

from __future__ import annotations

from typing import Any

from kernelsession.localcluster.netpol import MAIN_CHAIN, render, selector_matches


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


def test_no_policy_no_isolation_and_egress_only_policies_ignored() -> None:
    egress_only = {
        "metadata": {"name": "e", "namespace": "labs"},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    chains, rules = render([pod("a", "labs", "10.244.0.5", {})], NAMESPACES, [egress_only])
    assert chains == [MAIN_CHAIN]
    assert len(rules) == 1
