"""The enforcer's iptables chains and rules for a cluster state (:func:`render`), and what
of an applied rendering the filter table no longer has (:func:`drifted`). Pure."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host.netpol.policy import (
    Obj,
    block_ranges,
    in_ranges,
    ipv4_network,
    is_stand_in,
    named_port,
    peer_sources,
    pod_ip,
    pod_selected,
    policy_types,
    selecting_policies,
)

MAIN_CHAIN = "KS-NETPOL"
INPUT_CHAIN = "KS-NETPOL-INPUT"
POD_CHAIN_PREFIX = "KS-NPI-"
EGRESS_CHAIN_PREFIX = "KS-NPE-"
RULE_CHAIN_PREFIX = "KS-NPR-"
KNOWN_SOURCE_CHAIN = "KS-NETPOL-SRC"
KNOWN_DEST_CHAIN = "KS-NETPOL-DST"
HOOKS = (("FORWARD", MAIN_CHAIN), ("INPUT", INPUT_CHAIN))
"""(built-in chain, the enforcer's chain jumped to first from it)"""


def _port_fragment(port: Obj, pod: Obj | None) -> str | None:
    """The iptables match of one NetworkPolicyPort; a named port resolves against ``pod``
    (None: no pod, so a named port matches nothing and None is returned)."""
    protocol = str(port.get("protocol") or "TCP")
    proto = protocol.lower()
    value = port.get("port")
    if value is None:
        return f"-p {proto}"
    if isinstance(value, int):
        number: int | None = value
    else:
        number = named_port(pod, str(value), protocol) if pod is not None else None
    if number is None:
        return None
    end = port.get("endPort")
    span = f"{number}:{end}" if end and isinstance(value, int) else f"{number}"
    return f"-p {proto} -m {proto} --dport {span}"


def _port_matches(pod: Obj, ports: list[Obj] | None) -> list[str] | None:
    """iptables match fragments for a rule's ports on ``pod``; None = all ports;
    [] = no port of the rule exists on this pod."""
    if not ports:
        return None
    fragments: list[str] = []
    for port in ports:
        fragment = _port_fragment(port, pod)
        if fragment is not None:
            fragments.append(fragment)
    return fragments


def _stand_in_fragments(pod: Obj, ports: list[Obj] | None) -> list[str]:
    """A stand-in is reachable only on its declared ports: those the rule's ports admit."""
    fragments: list[str] = []
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            protocol = str(declared.get("protocol") or "TCP")
            number = int(declared["containerPort"])
            admitted = ports is None or any(
                str(p.get("protocol") or "TCP") == protocol
                and (
                    p.get("port") is None
                    or p.get("port") == declared.get("name")
                    or (
                        isinstance(p.get("port"), int)
                        and p["port"] <= number <= int(p.get("endPort") or p["port"])
                    )
                )
                for p in ports
            )
            if admitted:
                proto = protocol.lower()
                fragments.append(f"-p {proto} -m {proto} --dport {number}")
    return fragments


def _egress_matches(
    rule: Obj, policy_ns: str, pods: list[Obj], namespaces: Mapping[str, Obj]
) -> list[str]:
    """iptables matches (destination and ports) of what one egress rule admits."""
    ports: list[Obj] | None = list(rule.get("ports") or []) or None
    peers = rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}]  # empty: everywhere
    numeric = [p for p in ports or [] if not isinstance(p.get("port"), str)]
    named = [p for p in ports or [] if isinstance(p.get("port"), str)]
    matches: list[str] = []
    for peer in peers:
        block = peer.get("ipBlock")
        if block:
            ranges = block_ranges(str(block["cidr"]), [str(c) for c in block.get("except") or []])
            for cidr in ranges:
                if ports is None:
                    matches.append(f"-d {cidr}")
                for port in numeric:
                    matches.append(f"-d {cidr} {_port_fragment(port, None)}")
            # a named port admits the pods in the block that have it
            for pod in pods:
                ip = pod_ip(pod)
                if not named or ip is None or not in_ranges(ip, ranges):
                    continue
                for port in named:
                    fragment = _port_fragment(port, pod)
                    if fragment is not None:
                        matches.append(f"-d {ip}/32 {fragment}")
            continue
        for pod in pods:
            ip = pod_ip(pod)
            if ip is None or not pod_selected(peer, policy_ns, pod, namespaces):
                continue
            if is_stand_in(pod):
                matches += [f"-d {ip}/32 {f}" for f in _stand_in_fragments(pod, ports)]
            elif ports is None:
                matches.append(f"-d {ip}/32")
            else:
                for fragment in _port_matches(pod, ports) or []:
                    matches.append(f"-d {ip}/32 {fragment}")
    return list(dict.fromkeys(matches))


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12].upper()


def render(
    pods: Iterable[Obj],
    namespaces: Mapping[str, Obj],
    policies: Iterable[Obj],
    *,
    pod_subnet: str | None = None,
) -> tuple[list[str], list[str]]:
    """The enforcer's chains for a cluster state.

    ``pods`` may include stand-ins (:func:`.policy.node_dns_stand_in`). ``pod_subnet``: new
    connections from or to an address in it that is not one of ``pods`` are dropped (fail
    closed, see the module docstring); None: no such rule. Returns (chain names,
    ``iptables-restore --noflush`` lines for the filter table, without the
    ``*filter``/``COMMIT`` framing). Pure.
    """
    pods = sorted(
        (p for p in pods if ipv4_network(f"{pod_ip(p)}/32") is not None),  # the cluster is IPv4
        key=lambda p: (
            ipaddress.IPv4Address(str(pod_ip(p))),
            str((p.get("metadata") or {}).get("namespace")),
            str((p.get("metadata") or {}).get("name")),
        ),
    )
    policies = list(policies)
    ingress_policies = [pol for pol in policies if "Ingress" in policy_types(pol)]
    egress_policies = [pol for pol in policies if "Egress" in policy_types(pol)]
    by_ip = [p for p in pods if not is_stand_in(p)]

    main = [f"-A {MAIN_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    known_chains: list[str] = []
    known_body: list[str] = []
    if pod_subnet is not None:
        known_chains = [KNOWN_SOURCE_CHAIN, KNOWN_DEST_CHAIN]
        main += [
            f"-A {MAIN_CHAIN} -s {pod_subnet} -j {KNOWN_SOURCE_CHAIN}",
            f"-A {MAIN_CHAIN} -d {pod_subnet} -j {KNOWN_DEST_CHAIN}",
        ]
        known_ips = sorted({str(pod_ip(p)) for p in pods}, key=lambda ip: ipaddress.IPv4Address(ip))
        for chain, flag in ((KNOWN_SOURCE_CHAIN, "-s"), (KNOWN_DEST_CHAIN, "-d")):
            known_body += [f"-A {chain} {flag} {ip}/32 -j RETURN" for ip in known_ips]
            known_body.append(f"-A {chain} -j DROP")
    egress_jumps_from = len(main)
    egress_chains: list[str] = []
    egress_body: list[str] = []
    for pod in by_ip:
        selecting = selecting_policies(egress_policies, pod)
        if not selecting:
            continue
        meta = pod.get("metadata") or {}
        ip = str(pod_ip(pod))
        chain = EGRESS_CHAIN_PREFIX + _short(
            f"egress/{meta.get('namespace')}/{meta.get('name')}/{ip}"
        )
        egress_chains.append(chain)
        main.append(f"-A {MAIN_CHAIN} -s {ip}/32 -j {chain}")
        for pol in selecting:
            pol_ns = str((pol.get("metadata") or {}).get("namespace"))
            for rule in (pol.get("spec") or {}).get("egress") or []:
                for match in _egress_matches(rule, pol_ns, pods, namespaces):
                    egress_body.append(f"-A {chain} {match} -j RETURN")
        egress_body.append(f"-A {chain} -j DROP")

    chains = [MAIN_CHAIN]
    ingress_body: list[str] = []
    for pod in by_ip:
        meta = pod.get("metadata") or {}
        ns = meta.get("namespace", "")
        selecting = selecting_policies(ingress_policies, pod)
        if not selecting:
            continue
        ip = str(pod_ip(pod))
        pod_chain = POD_CHAIN_PREFIX + _short(f"{ns}/{meta.get('name')}/{ip}")
        chains.append(pod_chain)
        ingress_body.append(f"-A {MAIN_CHAIN} -d {ip}/32 -j {pod_chain}")
        for pol in selecting:
            pol_ns = str((pol.get("metadata") or {}).get("namespace"))
            for index, rule in enumerate((pol.get("spec") or {}).get("ingress") or []):
                ports = _port_matches(pod, rule.get("ports"))
                if ports == []:
                    continue
                port_frags = ports if ports is not None else [""]
                peers = rule.get("from")
                if not peers:
                    for frag in port_frags:
                        ingress_body.append(f"-A {pod_chain} {frag} -j ACCEPT".replace("  ", " "))
                    continue
                for peer in peers:
                    sources, excepts = peer_sources(peer, pol_ns, pods, namespaces)
                    target = "ACCEPT"
                    if excepts:
                        target = RULE_CHAIN_PREFIX + _short(
                            f"{pod_chain}/{pol_ns}/{(pol.get('metadata') or {}).get('name')}"
                            f"/{index}/{peer}"
                        )
                        chains.append(target)
                        ingress_body += [f"-A {target} -s {c} -j RETURN" for c in excepts]
                        ingress_body.append(f"-A {target} -j ACCEPT")
                    for source in sources:
                        for frag in port_frags:
                            line = f"-A {pod_chain} -s {source} {frag} -j {target}"
                            ingress_body.append(" ".join(line.split()))
        ingress_body.append(f"-A {pod_chain} -j DROP")

    chains = [MAIN_CHAIN, *known_chains, *chains[1:]]
    if not egress_chains:
        return chains, main + known_body + ingress_body
    # What pods send to the node itself: only egress, never an ACCEPT (INPUT's own rules
    # still decide what they admit).
    node_input = [f"-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    node_input += [
        line.replace(f"-A {MAIN_CHAIN} ", f"-A {INPUT_CHAIN} ", 1)
        for line in main[egress_jumps_from:]
    ]
    # main: established, egress jumps, then ingress jumps (from ingress_body)
    jumps = [line for line in ingress_body if line.startswith(f"-A {MAIN_CHAIN} ")]
    rest = [line for line in ingress_body if not line.startswith(f"-A {MAIN_CHAIN} ")]
    return (
        [MAIN_CHAIN, INPUT_CHAIN, *egress_chains, *chains[1:]],
        [*main, *jumps, *node_input, *known_body, *egress_body, *rest],
    )


def drifted(chains: list[str], body: list[str], saved: str) -> list[str]:
    """What of an applied rendering (``chains``, ``body``) the filter table (``saved``:
    ``iptables-save -t filter``) no longer has: a chain missing or with another number of
    rules, a missing jump, a node guard no longer first in its hook. [] when intact. Pure.
    """
    declared: set[str] = set()
    counts: dict[str, int] = {}
    hooks: dict[str, list[str]] = {}
    for line in saved.splitlines():
        if line.startswith(":"):
            declared.add(line[1:].split()[0])
        elif line.startswith("-A "):
            chain = line.split()[1]
            counts[chain] = counts.get(chain, 0) + 1
            hooks.setdefault(chain, []).append(line)
    expected: dict[str, int] = {}
    for line in body:
        expected[line.split()[1]] = expected.get(line.split()[1], 0) + 1
    problems = [
        f"chain {c}: {counts.get(c, 0)} rules of {expected.get(c, 0)}"
        for c in chains
        if c not in declared or counts.get(c, 0) != expected.get(c, 0)
    ]
    guards = {hook: g for tool, hook, g in hostnet.GUARD_HOOKS if tool == "iptables"}
    for hook, chain in HOOKS:
        first = [f"-A {hook} -j {guards[hook]}"] if guards.get(hook) in declared else []
        if chain in chains:
            first.append(f"-A {hook} -j {chain}")
        if hooks.get(hook, [])[: len(first)] != first:
            problems.append(f"{hook} does not start with {', '.join(first)}")
    return problems
