"""The node's NetworkPolicy enforcer: ingress policies as iptables rules.

``python -m kernelsession.localcluster.netpol --kubeconfig FILE`` watches Pods, Namespaces
and NetworkPolicies and keeps the filter table in step: chain ``KS-NETPOL`` (jumped to
first from FORWARD, which sees pod-to-pod traffic on the bridge through br_netfilter)
accepts established traffic, then sends new connections to each isolated pod to that
pod's chain ``KS-NPI-<hash>``, which accepts what its policies allow and drops the rest.
Traffic from the node itself (kubelet probes, a process on the host) is not forwarded and
so never filtered, as with kube-router and Calico.

Scope: ``policyTypes: [Ingress]`` with podSelector, namespaceSelector, ipBlock (with
except) peers and numeric or named ports (with endPort). Egress rules are not enforced
(the enforcer logs each policy that has them). :func:`render` is pure and unit tested.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MAIN_CHAIN = "KS-NETPOL"
POD_CHAIN_PREFIX = "KS-NPI-"
RULE_CHAIN_PREFIX = "KS-NPR-"

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


def _port_matches(pod: Obj, ports: list[Obj] | None) -> list[str] | None:
    """iptables match fragments for a rule's ports on ``pod``; None = all ports;
    [] = no port of the rule exists on this pod."""
    if not ports:
        return None
    fragments: list[str] = []
    for port in ports:
        protocol = str(port.get("protocol") or "TCP")
        proto = protocol.lower()
        value = port.get("port")
        if value is None:
            fragments.append(f"-p {proto}")
            continue
        number = value if isinstance(value, int) else _named_port(pod, str(value), protocol)
        if number is None:
            continue
        end = port.get("endPort")
        span = f"{number}:{end}" if end else f"{number}"
        fragments.append(f"-p {proto} -m {proto} --dport {span}")
    return fragments


def _peer_sources(
    peer: Obj, policy_ns: str, pods: list[Obj], namespaces: Mapping[str, Obj]
) -> tuple[list[str], list[str]]:
    """(source CIDRs, except CIDRs) of one ``from`` peer."""
    block = peer.get("ipBlock")
    if block:
        return [str(block["cidr"])], [str(c) for c in block.get("except") or []]
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    sources: list[str] = []
    for pod in pods:
        ip = _pod_ip(pod)
        ns = (pod.get("metadata") or {}).get("namespace", "")
        if ip is None:
            continue
        if ns_sel is not None:
            if not selector_matches(ns_sel, _labels(namespaces.get(ns, {}))):
                continue
        elif ns != policy_ns:
            continue
        if pod_sel is not None and not selector_matches(pod_sel, _labels(pod)):
            continue
        sources.append(f"{ip}/32")
    return sources, []


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12].upper()


def render(
    pods: Iterable[Obj], namespaces: Mapping[str, Obj], policies: Iterable[Obj]
) -> tuple[list[str], list[str]]:
    """The enforcer's chains for a cluster state.

    Returns (chain names, ``iptables-restore --noflush`` lines for the filter table, without
    the ``*filter``/``COMMIT`` framing). Pure.
    """
    pods = [p for p in pods if _pod_ip(p)]
    chains = [MAIN_CHAIN]
    body = [f"-A {MAIN_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    ingress_policies = [
        pol
        for pol in policies
        if "Ingress" in ((pol.get("spec") or {}).get("policyTypes") or ["Ingress"])
    ]
    for pod in sorted(pods, key=lambda p: str(_pod_ip(p))):
        meta = pod.get("metadata") or {}
        ns = meta.get("namespace", "")
        selecting = [
            pol
            for pol in ingress_policies
            if (pol.get("metadata") or {}).get("namespace") == ns
            and selector_matches((pol.get("spec") or {}).get("podSelector") or {}, _labels(pod))
        ]
        if not selecting:
            continue
        ip = str(_pod_ip(pod))
        pod_chain = POD_CHAIN_PREFIX + _short(f"{ns}/{meta.get('name')}/{ip}")
        chains.append(pod_chain)
        body.append(f"-A {MAIN_CHAIN} -d {ip}/32 -j {pod_chain}")
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
                        body.append(f"-A {pod_chain} {frag} -j ACCEPT".replace("  ", " "))
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
                        body += [f"-A {target} -s {c} -j RETURN" for c in excepts]
                        body.append(f"-A {target} -j ACCEPT")
                    for source in sources:
                        for frag in port_frags:
                            line = f"-A {pod_chain} -s {source} {frag} -j {target}"
                            body.append(" ".join(line.split()))
        body.append(f"-A {pod_chain} -j DROP")
    return chains, body


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )


def _existing_chains() -> list[str]:
    saved = subprocess.run(
        ["iptables-save", "-t", "filter"], capture_output=True, text=True, check=False
    ).stdout
    return [
        line[1:].split()[0]
        for line in saved.splitlines()
        if line.startswith(":KS-NETPOL")
        or line.startswith(f":{POD_CHAIN_PREFIX}")
        or line.startswith(f":{RULE_CHAIN_PREFIX}")
    ]


def apply(chains: list[str], body: list[str]) -> None:
    """Install the rendered chains atomically, remove stale ones, ensure the FORWARD jump.

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
    for stale in set(_existing_chains()) - set(chains):
        _iptables("-F", stale)
    for stale in set(_existing_chains()) - set(chains):
        _iptables("-X", stale)
    if _iptables("-C", "FORWARD", "-j", MAIN_CHAIN).returncode != 0:
        _iptables("-I", "FORWARD", "1", "-j", MAIN_CHAIN)


def remove_rules() -> None:
    """Remove the FORWARD jump and every chain of the enforcer (idempotent)."""
    while _iptables("-D", "FORWARD", "-j", MAIN_CHAIN).returncode == 0:
        pass
    chains = _existing_chains()
    for chain in chains:
        _iptables("-F", chain)
    for chain in chains:
        _iptables("-X", chain)


class Enforcer:
    """Watches the three kinds and re-renders on every change (debounced)."""

    def __init__(self, kubeconfig: str, ready_file: Path | None) -> None:
        self.kubeconfig = kubeconfig
        self.ready_file = ready_file
        self.state: dict[str, dict[str, Obj]] = {"pods": {}, "namespaces": {}, "policies": {}}
        self.synced: set[str] = set()
        self.changed = asyncio.Event()
        self.last: tuple[list[str], list[str]] | None = None

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
            asyncio.create_task(self._watch("pods", core, "list_pod_for_all_namespaces")),
            asyncio.create_task(self._watch("namespaces", core, "list_namespace")),
            asyncio.create_task(
                self._watch("policies", net, "list_network_policy_for_all_namespaces")
            ),
        ]
        warned: set[str] = set()
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(0.05)  # coalesce a burst of events
                self.changed.clear()
                if len(self.synced) < 3:
                    continue
                for key, pol in self.state["policies"].items():
                    if (pol.get("spec") or {}).get("egress") and key not in warned:
                        warned.add(key)
                        print(f"netpol: egress rules of {key} are not enforced", file=sys.stderr)
                namespaces = {
                    (ns.get("metadata") or {})["name"]: ns
                    for ns in self.state["namespaces"].values()
                }
                rendered = render(
                    self.state["pods"].values(), namespaces, self.state["policies"].values()
                )
                if rendered != self.last:
                    try:
                        apply(*rendered)
                        self.last = rendered
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
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.netpol")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args(argv)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await Enforcer(args.kubeconfig, args.ready_file).run()

    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        asyncio.run(serve())
    remove_rules()
    return 0


if __name__ == "__main__":
    sys.exit(main())
