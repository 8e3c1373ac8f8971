"""The enforcer fails closed (pure parts): pods it has not rendered are dropped, and
drift in the filter table (a flushed chain, a lost jump, a guard moved) is detected."""

from __future__ import annotations

from typing import Any

import pytest
from test_netpol import DENY, EGRESS_NAMESPACES, EGRESS_PODS, IP, _walk, egress, pod

from kernelsession.localcluster.host.netpol.rules import (
    INPUT_CHAIN,
    KNOWN_DEST_CHAIN,
    KNOWN_SOURCE_CHAIN,
    MAIN_CHAIN,
    drifted,
    render,
)
from kernelsession.localcluster.host.network import GUARD_CHAIN, INPUT_GUARD_CHAIN

SUBNET = "10.244.0.0/24"
NEWCOMER = "10.244.0.99"  # a pod the enforcer has not seen (created while it was down)


def _forward(
    policies: list[dict[str, Any]], src: str, dst: str, *, subnet: str | None = SUBNET
) -> str:
    chains, lines = render(EGRESS_PODS, EGRESS_NAMESPACES, policies, pod_subnet=subnet)
    rules: dict[str, list[tuple[list[str], str]]] = {c: [] for c in chains}
    for line in lines:
        words = line.split()
        rules[words[1]].append((words[2:-2], words[-1]))
    packet = {"src": IP.get(src, src), "dst": IP.get(dst, dst), "port": 8080, "proto": "tcp"}
    return _walk(rules, MAIN_CHAIN, {**packet, "state": "NEW"})


@pytest.mark.parametrize(
    ("src", "dst", "passes"),
    [
        ("client", "web", True),  # both rendered, no policy: open
        (NEWCOMER, "web", False),  # an unknown source reaches nobody
        ("client", NEWCOMER, False),  # an unknown destination is reached by nobody
        ("10.244.0.1", NEWCOMER, False),
        ("10.244.0.1", "web", True),  # the node (the DNS stand-in's address) is known
    ],
)
def test_pods_the_enforcer_has_not_rendered_are_dropped(src: str, dst: str, passes: bool) -> None:
    assert (_forward([], src, dst) != "DROP") is passes
    assert _forward([], src, dst, subnet=None) != "DROP"  # without --pod-subnet: as before


def test_replies_pass_before_the_unknown_check() -> None:
    chains, lines = render(EGRESS_PODS, EGRESS_NAMESPACES, [], pod_subnet=SUBNET)
    assert lines[0].endswith("--ctstate RELATED,ESTABLISHED -j ACCEPT")
    assert lines[1] == f"-A {MAIN_CHAIN} -s {SUBNET} -j {KNOWN_SOURCE_CHAIN}"
    assert lines[2] == f"-A {MAIN_CHAIN} -d {SUBNET} -j {KNOWN_DEST_CHAIN}"
    assert {KNOWN_SOURCE_CHAIN, KNOWN_DEST_CHAIN} <= set(chains)
    # a hostNetwork pod has no pod address of its own; a finished pod's address is free
    assert not any("10.0.2.15" in line for line in lines)


def test_the_node_input_chain_gets_only_the_egress_jumps() -> None:
    deny = DENY
    _, lines = render(EGRESS_PODS, EGRESS_NAMESPACES, [deny], pod_subnet=SUBNET)
    node = [line for line in lines if line.startswith(f"-A {INPUT_CHAIN} ")]
    assert not any(KNOWN_SOURCE_CHAIN in line or KNOWN_DEST_CHAIN in line for line in node)
    assert any("-j KS-NPE-" in line for line in node)


def _saved(chains: list[str], body: list[str], forward: list[str], input_: list[str]) -> str:
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in [GUARD_CHAIN, INPUT_GUARD_CHAIN, *chains]]
    lines += [f"-A FORWARD -j {c}" for c in forward] + [f"-A INPUT -j {c}" for c in input_]
    return "\n".join([*lines, *body, "COMMIT"])


def test_drift_is_detected() -> None:
    pods = [pod("a", "labs", "10.244.0.5", {}), pod("b", "labs", "10.244.0.6", {})]
    deny = egress("deny", None, selector={}, types=["Egress"])
    chains, body = render(pods, EGRESS_NAMESPACES, [deny], pod_subnet=SUBNET)
    forward = [GUARD_CHAIN, MAIN_CHAIN, "KUBE-FORWARD"]
    inputs = [INPUT_GUARD_CHAIN, INPUT_CHAIN, "KUBE-FIREWALL"]
    assert drifted(chains, body, _saved(chains, body, forward, inputs)) == []
    # a chain flushed by someone else
    flushed = [line for line in body if not line.startswith(f"-A {KNOWN_SOURCE_CHAIN} ")]
    assert any(
        KNOWN_SOURCE_CHAIN in p
        for p in drifted(chains, body, _saved(chains, flushed, forward, inputs))
    )
    # the FORWARD jump deleted
    gone = drifted(chains, body, _saved(chains, body, [GUARD_CHAIN, "KUBE-FORWARD"], inputs))
    assert any(p.startswith("FORWARD ") for p in gone)
    # kube-proxy's jump (its ESTABLISHED accept) put ahead of the guard and the enforcer
    moved = ["KUBE-FORWARD", GUARD_CHAIN, MAIN_CHAIN]
    assert any(
        p.startswith("FORWARD ") for p in drifted(chains, body, _saved(chains, body, moved, inputs))
    )
    # the guard no longer ahead of the enforcer in INPUT
    swapped = [INPUT_CHAIN, INPUT_GUARD_CHAIN]
    assert any(
        p.startswith("INPUT ")
        for p in drifted(chains, body, _saved(chains, body, forward, swapped))
    )
