"""The node's NetworkPolicy enforcer: ingress and egress policies as iptables rules.

``python -m kernelsession.localcluster.host.netpol --kubeconfig FILE`` watches Pods, Namespaces
and NetworkPolicies and keeps the filter table in step (networking.k8s.io/v1 semantics).

Where the chains hook:

- ``KS-NETPOL``, jumped to first from FORWARD, sees pod-to-pod traffic on the bridge
  (through br_netfilter) and traffic to Service cluster IPs, which kube-proxy has already
  DNAT'd to a backend pod in PREROUTING, so every decision is made on the backend pod's
  IP and port. It accepts established traffic (replies to allowed connections), then
  sends a new connection FROM each egress-isolated pod to that pod's chain
  ``KS-NPE-<hash>`` (RETURN when its policies allow the destination, DROP otherwise), then
  a new connection TO each ingress-isolated pod to that pod's chain ``KS-NPI-<hash>``
  (ACCEPT what its policies allow, DROP the rest). A connection between two pods thus
  needs both the source's egress and the destination's ingress to allow it.
- ``KS-NETPOL-INPUT``, jumped to first from INPUT (present only while some pod is
  egress-isolated), sees what pods send to the node itself: the node IP ``10.244.0.1``
  (kube-apiserver, the kubelet, hostNetwork endpoints; also Services whose endpoints are
  the node, like ``kubernetes``) or any other address of the host. As with upstream
  enforcers, the node is an ipBlock destination: only an ipBlock (or an empty ``to``)
  covering its address admits it, so a pod under deny-all egress cannot reach the API
  server either. This chain never ACCEPTs: it returns established traffic and allowed
  connections to INPUT's own rules and drops only what a pod's egress policy denies.
- Traffic from the node itself (kubelet probes, a process on the host) is never filtered:
  it is neither forwarded nor from a pod address, so neither chain matches it, and the
  pod's replies are established. As with kube-router and Calico.

Failing closed:

- With ``--pod-subnet``, ``KS-NETPOL`` sends every new connection from or to an address of
  the node's pod subnet through ``KS-NETPOL-SRC`` / ``KS-NETPOL-DST``, which return only
  for the pods the enforcer has rendered (and stand-ins) and drop the rest. A pod created
  while the enforcer is down, or after its last successful ``iptables-restore`` (a failed
  restore keeps the previous rules), reaches and is reached by no pod until the enforcer
  has rendered its policies.
- The rules stay when the enforcer exits or is killed: only the node's teardown
  (:func:`remove_rules`) removes them.
- Every second the enforcer compares the filter table with what it applied (its chains,
  their rule counts, its jumps, the node's guards first in FORWARD and INPUT) and applies
  again what someone else flushed or deleted.

The cluster's DNS server is CoreDNS running on the node (bound to the node IP behind the
``kube-dns`` Service), not a pod. So that the usual "allow DNS" rule (pods labelled
``k8s-app: kube-dns`` in namespace ``kube-system``, port 53) means what it means on any
cluster, the enforcer is given a stand-in pod for it (:func:`node_dns_stand_in`): selected
by pod and namespace selectors like a CoreDNS pod, at the node IP but ONLY on its
declared ports (53/UDP, 53/TCP), so it opens nothing else of the node. Stand-ins are never
isolated nor ingress sources.

Scope: podSelector, namespaceSelector (and both), ipBlock (with except) peers; numeric or
named ports (for egress a named port resolves against the destination pod's container
ports; ipBlock and empty ``to`` destinations then admit the pods in the block that have
that port), endPort, protocols TCP, UDP and SCTP; IPv4 (IPv6 blocks are skipped: the
cluster is IPv4 only). :func:`render` is pure and unit tested.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kernelsession.localcluster.host import network as hostnet

MAIN_CHAIN = "KS-NETPOL"
INPUT_CHAIN = "KS-NETPOL-INPUT"
POD_CHAIN_PREFIX = "KS-NPI-"
EGRESS_CHAIN_PREFIX = "KS-NPE-"
RULE_CHAIN_PREFIX = "KS-NPR-"
KNOWN_SOURCE_CHAIN = "KS-NETPOL-SRC"
KNOWN_DEST_CHAIN = "KS-NETPOL-DST"
HEAL_INTERVAL = 1.0
"""Seconds between two checks that the applied rules are still in the filter table."""
HOOKS = (("FORWARD", MAIN_CHAIN), ("INPUT", INPUT_CHAIN))
"""(built-in chain, the enforcer's chain jumped to first from it)"""
STAND_IN_ANNOTATION = "localcluster.kernelsession.dev/node-process"
"""Marks a stand-in pod: a node process that policies may select like a pod, reachable
only on its declared container ports (see :func:`node_dns_stand_in`)."""

Obj = Mapping[str, Any]


def _labels(obj: Obj) -> Mapping[str, str]:
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


def _is_stand_in(pod: Obj) -> bool:
    return STAND_IN_ANNOTATION in ((pod.get("metadata") or {}).get("annotations") or {})


def _pod_ip(pod: Obj) -> str | None:
    status = pod.get("status") or {}
    if (pod.get("spec") or {}).get("hostNetwork"):
        return None
    if status.get("phase") in ("Succeeded", "Failed"):
        return None
    ip = status.get("podIP")
    return str(ip) if ip else None


def _named_port(pod: Obj, name: str, protocol: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name and port.get("protocol", "TCP") == protocol:
                return int(port["containerPort"])
    return None


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
        number = _named_port(pod, str(value), protocol) if pod is not None else None
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


def _ipv4(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None
    return network if isinstance(network, ipaddress.IPv4Network) else None


def _pod_selected(peer: Obj, policy_ns: str, pod: Obj, namespaces: Mapping[str, Obj]) -> bool:
    """Whether a podSelector / namespaceSelector peer selects ``pod``."""
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    ns = (pod.get("metadata") or {}).get("namespace", "")
    if ns_sel is not None:
        if not selector_matches(ns_sel, _labels(namespaces.get(ns, {}))):
            return False
    elif ns != policy_ns:
        return False
    return pod_sel is None or selector_matches(pod_sel, _labels(pod))


def _peer_sources(
    peer: Obj, policy_ns: str, pods: list[Obj], namespaces: Mapping[str, Obj]
) -> tuple[list[str], list[str]]:
    """(source CIDRs, except CIDRs) of one ``from`` peer."""
    block = peer.get("ipBlock")
    if block:
        if _ipv4(str(block["cidr"])) is None:
            return [], []
        excepts = [str(c) for c in block.get("except") or [] if _ipv4(str(c)) is not None]
        return [str(block["cidr"])], excepts
    sources: list[str] = []
    for pod in pods:
        ip = _pod_ip(pod)
        if ip is None or _is_stand_in(pod):
            continue
        if _pod_selected(peer, policy_ns, pod, namespaces):
            sources.append(f"{ip}/32")
    return sources, []


def block_ranges(cidr: str, excepts: Iterable[str] = ()) -> list[str]:
    """The IPv4 ``cidr`` minus ``excepts`` as disjoint CIDRs, sorted ([] for IPv6)."""
    network = _ipv4(cidr)
    if network is None:
        return []
    remaining = [network]
    for text in excepts:
        hole = _ipv4(text)
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


def _in_ranges(ip: str, ranges: list[str]) -> bool:
    address = ipaddress.IPv4Address(ip)
    return any(address in ipaddress.IPv4Network(r) for r in ranges)


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
                ip = _pod_ip(pod)
                if not named or ip is None or not _in_ranges(ip, ranges):
                    continue
                for port in named:
                    fragment = _port_fragment(port, pod)
                    if fragment is not None:
                        matches.append(f"-d {ip}/32 {fragment}")
            continue
        for pod in pods:
            ip = _pod_ip(pod)
            if ip is None or not _pod_selected(peer, policy_ns, pod, namespaces):
                continue
            if _is_stand_in(pod):
                matches += [f"-d {ip}/32 {f}" for f in _stand_in_fragments(pod, ports)]
            elif ports is None:
                matches.append(f"-d {ip}/32")
            else:
                for fragment in _port_matches(pod, ports) or []:
                    matches.append(f"-d {ip}/32 {fragment}")
    return list(dict.fromkeys(matches))


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12].upper()


def _selecting(policies: list[Obj], pod: Obj) -> list[Obj]:
    ns = (pod.get("metadata") or {}).get("namespace", "")
    return [
        pol
        for pol in policies
        if (pol.get("metadata") or {}).get("namespace") == ns
        and selector_matches((pol.get("spec") or {}).get("podSelector") or {}, _labels(pod))
    ]


def render(
    pods: Iterable[Obj],
    namespaces: Mapping[str, Obj],
    policies: Iterable[Obj],
    *,
    pod_subnet: str | None = None,
) -> tuple[list[str], list[str]]:
    """The enforcer's chains for a cluster state.

    ``pods`` may include stand-ins (:func:`node_dns_stand_in`). ``pod_subnet``: new
    connections from or to an address in it that is not one of ``pods`` are dropped (fail
    closed, see the module docstring); None: no such rule. Returns (chain names,
    ``iptables-restore --noflush`` lines for the filter table, without the
    ``*filter``/``COMMIT`` framing). Pure.
    """
    pods = sorted(
        (p for p in pods if _ipv4(f"{_pod_ip(p)}/32") is not None),  # the cluster is IPv4
        key=lambda p: (
            ipaddress.IPv4Address(str(_pod_ip(p))),
            str((p.get("metadata") or {}).get("namespace")),
            str((p.get("metadata") or {}).get("name")),
        ),
    )
    policies = list(policies)
    ingress_policies = [pol for pol in policies if "Ingress" in policy_types(pol)]
    egress_policies = [pol for pol in policies if "Egress" in policy_types(pol)]
    by_ip = [p for p in pods if not _is_stand_in(p)]

    main = [f"-A {MAIN_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    known_chains: list[str] = []
    known_body: list[str] = []
    if pod_subnet is not None:
        known_chains = [KNOWN_SOURCE_CHAIN, KNOWN_DEST_CHAIN]
        main += [
            f"-A {MAIN_CHAIN} -s {pod_subnet} -j {KNOWN_SOURCE_CHAIN}",
            f"-A {MAIN_CHAIN} -d {pod_subnet} -j {KNOWN_DEST_CHAIN}",
        ]
        known_ips = sorted(
            {str(_pod_ip(p)) for p in pods}, key=lambda ip: ipaddress.IPv4Address(ip)
        )
        for chain, flag in ((KNOWN_SOURCE_CHAIN, "-s"), (KNOWN_DEST_CHAIN, "-d")):
            known_body += [f"-A {chain} {flag} {ip}/32 -j RETURN" for ip in known_ips]
            known_body.append(f"-A {chain} -j DROP")
    egress_jumps_from = len(main)
    egress_chains: list[str] = []
    egress_body: list[str] = []
    for pod in by_ip:
        selecting = _selecting(egress_policies, pod)
        if not selecting:
            continue
        meta = pod.get("metadata") or {}
        ip = str(_pod_ip(pod))
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
        selecting = _selecting(ingress_policies, pod)
        if not selecting:
            continue
        ip = str(_pod_ip(pod))
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
                    sources, excepts = _peer_sources(peer, pol_ns, pods, namespaces)
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


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )


def _existing_chains() -> list[str]:
    saved = subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False
    ).stdout
    prefixes = (MAIN_CHAIN, POD_CHAIN_PREFIX, EGRESS_CHAIN_PREFIX, RULE_CHAIN_PREFIX)
    return [
        line[1:].split()[0]
        for line in saved.splitlines()
        if line.startswith(":") and line[1:].startswith(prefixes)
    ]


def _unhook(hook: str, chain: str) -> None:
    while _iptables("-D", hook, "-j", chain).returncode == 0:
        pass


def apply(chains: list[str], body: list[str]) -> None:
    """Install the rendered chains atomically, remove stale ones and the INPUT jump when no
    pod is egress-isolated, then put the jumps at the top of FORWARD (always) and INPUT
    (while some pod is egress-isolated), right after the node's guards
    (:mod:`.hostnet`): ahead of the jumps kube-proxy and the kubelet install, whose
    ``ESTABLISHED`` and masquerade-mark accepts would otherwise come first.

    Raises RuntimeError with iptables-restore's message.
    """
    lines = ["*filter", *(f":{c} - [0:0]" for c in chains), *body, "COMMIT", ""]
    result = subprocess.run(
        ["iptables-restore", "-w", "5", "--noflush"],
        input="\n".join(lines),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"iptables-restore: {result.stderr.strip()}")
    for hook, chain in HOOKS:
        if chain not in chains:
            _unhook(hook, chain)
    for stale in set(_existing_chains()) - set(chains):
        _iptables("-F", stale)
    for stale in set(_existing_chains()) - set(chains):
        _iptables("-X", stale)
    saved = subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False
    ).stdout
    if any(" does not start with " in problem for problem in drifted(chains, body, saved)):
        for hook, chain in HOOKS:  # first, then the node's guards go back ahead of them
            if chain in chains:
                hostnet.hook_first("iptables", hook, chain)
        hostnet.keep_guards_first()


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


def remove_rules() -> None:
    """Remove the FORWARD and INPUT jumps and every chain of the enforcer (idempotent)."""
    for hook, chain in HOOKS:
        _unhook(hook, chain)
    chains = _existing_chains()
    for chain in chains:
        _iptables("-F", chain)
    for chain in chains:
        _iptables("-X", chain)


class Enforcer:
    """Watches the three kinds and re-renders on every change (debounced)."""

    def __init__(
        self,
        kubeconfig: str,
        ready_file: Path | None,
        stand_ins: Iterable[Obj] = (),
        pod_subnet: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.ready_file = ready_file
        self.stand_ins = list(stand_ins)
        self.pod_subnet = pod_subnet
        self.state: dict[str, dict[str, Obj]] = {"pods": {}, "namespaces": {}, "policies": {}}
        self.synced: set[str] = set()
        self.changed = asyncio.Event()
        self.last: tuple[list[str], list[str]] | None = None
        self.repair = False

    async def _heal(self) -> None:
        """Every :data:`HEAL_INTERVAL` seconds: if the filter table lost part of what was
        applied (someone flushed a chain, deleted a jump, moved a guard), apply again."""
        while True:
            await asyncio.sleep(HEAL_INTERVAL)
            if self.last is None:
                continue
            saved = await asyncio.to_thread(
                lambda: (
                    subprocess.run(
                        ["iptables-save", "-t", "filter"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout
                )
            )
            problems = drifted(*self.last, saved)
            if problems:
                print(
                    f"netpol: rules changed by someone else ({'; '.join(problems[:5])}); "
                    "applying again",
                    file=sys.stderr,
                    flush=True,
                )
                self.repair = True
                self.changed.set()

    async def _watch(self, kind: str, api: Any, lister: str) -> None:
        from kubernetes_asyncio import watch

        while True:
            try:
                listed = await getattr(api, lister)(_preload_content=False)
                data = await listed.json()
                items = {self._key(i): i for i in data.get("items") or []}
                self.state[kind] = items
                self.synced.add(kind)
                self.changed.set()
                version = data["metadata"]["resourceVersion"]
                stream = watch.Watch().stream(
                    getattr(api, lister),
                    resource_version=version,
                    timeout_seconds=300,
                    _preload_content=False,
                )
                async for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        break
                    if event["type"] == "DELETED":
                        self.state[kind].pop(self._key(obj), None)
                    else:
                        self.state[kind][self._key(obj)] = obj
                    self.changed.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                print(f"netpol: {kind} watch: {type(exc).__name__}: {exc}", file=sys.stderr)
                await asyncio.sleep(1)

    @staticmethod
    def _key(obj: Obj) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name')}"

    async def run(self) -> None:
        from kubernetes_asyncio import client, config

        api_client = await config.new_client_from_config(config_file=self.kubeconfig)
        core = client.CoreV1Api(api_client)
        net = client.NetworkingV1Api(api_client)
        tasks = [
            asyncio.create_task(self._heal()),
            asyncio.create_task(self._watch("pods", core, "list_pod_for_all_namespaces")),
            asyncio.create_task(self._watch("namespaces", core, "list_namespace")),
            asyncio.create_task(
                self._watch("policies", net, "list_network_policy_for_all_namespaces")
            ),
        ]
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(0.05)  # coalesce a burst of events
                self.changed.clear()
                if len(self.synced) < 3:
                    continue
                namespaces = {
                    (ns.get("metadata") or {})["name"]: ns
                    for ns in self.state["namespaces"].values()
                }
                rendered = render(
                    [*self.state["pods"].values(), *self.stand_ins],
                    namespaces,
                    self.state["policies"].values(),
                    pod_subnet=self.pod_subnet,
                )
                if rendered != self.last or self.repair:
                    self.repair = False
                    try:
                        started = time.monotonic()
                        apply(*rendered)
                        self.last = rendered
                        chains, rules = rendered
                        print(
                            f"netpol: applied {len(chains)} chains, {len(rules)} rules "
                            f"({len(self.state['policies'])} policies, "
                            f"{len(self.state['pods'])} pods) in "
                            f"{(time.monotonic() - started) * 1000:.0f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                    except RuntimeError as exc:
                        print(f"netpol: {exc}", file=sys.stderr)
                        self.changed.set()
                        await asyncio.sleep(1)
                        continue
                if self.ready_file is not None and not self.ready_file.exists():
                    self.ready_file.write_text("ready\n")
        finally:
            for task in tasks:
                task.cancel()
            await api_client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.host.netpol")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument(
        "--pod-subnet",
        metavar="CIDR",
        help="drop new connections from or to addresses in CIDR that are not known pods",
    )
    parser.add_argument(
        "--node-dns",
        metavar="IP",
        help="the node's CoreDNS listens on IP: policies see it as a kube-dns pod there",
    )
    args = parser.parse_args(argv)
    stand_ins = [node_dns_stand_in(args.node_dns)] if args.node_dns else []

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await Enforcer(args.kubeconfig, args.ready_file, stand_ins, args.pod_subnet).run()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(serve())
    # the rules stay (fail closed): the node's teardown removes them (remove_rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
