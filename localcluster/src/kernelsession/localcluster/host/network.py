"""The node's host networking: one bridge, the pod and service ranges kept on the machine.

- Bridge ``ks0`` holds the node IP (``10.244.0.1/24``, also the pods' gateway); the CNI
  bridge plugin attaches each pod's veth to it.
- ``blackhole 10.244.0.0/16``: pod addresses outside this node's /24 go nowhere.
- ``10.96.0.0/16 dev ks0``: service addresses that kube-proxy did not rewrite stay on the
  bridge (a blackhole would make the host's own ``connect()`` fail before kube-proxy's
  DNAT in OUTPUT runs).
- filter chain ``KS-NODE-GUARD`` (first in FORWARD, ahead of every ``ESTABLISHED``
  accept): packets from pods never leave through another interface, and nothing reaches a
  pod address from another interface, so no pod packet crosses the machine's edge.
- filter chain ``KS-NODE-INPUT`` (first in INPUT): of the node itself, pods reach only the
  cluster's own services on the node IP: CoreDNS (53) and the API server; everything else
  the host listens on (the kubelet, other programs, its other addresses) is dropped.
  Egress NetworkPolicies restrict further (the enforcer's ``KS-NETPOL-INPUT``).
- IPv6: the bridge carries no IPv6 (``disable_ipv6`` on ``ks0``; the pods' CNI chain
  turns IPv6 off inside each pod) and ip6tables chain ``KS-NODE-GUARD6`` drops any IPv6
  packet to, from or across the bridge, so no IPv6 path goes around the IPv4 policies.
- :func:`check_bridge_netfilter`: the enforcer sees bridged traffic only through
  ``br_netfilter`` with ``bridge-nf-call-iptables=1`` (and ``-ip6tables``); without it a
  start fails with a clear error instead of enforcing nothing.

Host safety: :func:`setup` refuses a bridge ``ks0`` it did not create; routes for the pod
and service ranges that existed before are saved (:func:`routes_before`) and restored by
:func:`teardown`; chains are this module's own, by name.

Every function here is idempotent; :func:`teardown` removes exactly what :func:`setup`
adds and is safe when nothing is there.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

BRIDGE = "ks0"
NODE_IP = "10.244.0.1"
NODE_SUBNET = "10.244.0.0/24"
POD_RANGE = "10.244.0.0/16"
SERVICE_RANGE = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
GUARD_CHAIN = "KS-NODE-GUARD"
INPUT_GUARD_CHAIN = "KS-NODE-INPUT"
GUARD6_CHAIN = "KS-NODE-GUARD6"
DNS_PORT = 53
_BRIDGE_NF = Path("/proc/sys/net/bridge")
BRIDGE_NF_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")
GUARD_HOOKS = (
    ("iptables", "FORWARD", GUARD_CHAIN),
    ("iptables", "INPUT", INPUT_GUARD_CHAIN),
    ("ip6tables", "FORWARD", GUARD6_CHAIN),
    ("ip6tables", "INPUT", GUARD6_CHAIN),
)
"""(tool, built-in chain, guard chain): guards that must stay the first rule of the hook."""


class HostNetworkError(RuntimeError):
    """A host network change failed (the message has the command and its error)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HostNetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _iptables(
    *args: str, check: bool = True, tool: str = "iptables"
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([tool, "-w", "5", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HostNetworkError(f"{tool} {' '.join(args)}: {result.stderr.strip()}")
    return result


def check_bridge_netfilter() -> None:
    """Make sure bridged pod traffic passes through iptables and ip6tables.

    Sets ``net.bridge.bridge-nf-call-iptables`` and ``-ip6tables`` to 1 (the node restores
    the values it found at teardown) and reads them back.

    Raises HostNetworkError when ``br_netfilter`` is not loaded or the values do not hold:
    without them no NetworkPolicy is enforced between pods.
    """
    if not _BRIDGE_NF.is_dir():
        raise HostNetworkError(
            "the kernel module br_netfilter is not loaded (/proc/sys/net/bridge is missing): "
            "without it traffic between pods bypasses iptables and no NetworkPolicy is "
            "enforced. Load it with `modprobe br_netfilter` and start again."
        )
    for name in BRIDGE_NF_SYSCTLS:
        path = _BRIDGE_NF / name
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
            value = path.read_text().strip()
        except OSError as exc:
            raise HostNetworkError(f"cannot set net.bridge.{name}=1: {exc}") from exc
        if value != "1":
            raise HostNetworkError(
                f"net.bridge.{name} is {value} after setting it to 1: bridged pod traffic "
                "would bypass the NetworkPolicy rules"
            )


def bridge_exists() -> bool:
    """Whether a link named :data:`BRIDGE` exists."""
    return _ip("link", "show", BRIDGE, check=False).returncode == 0


def routes_before() -> list[str]:
    """The main table's routes for exactly the pod and service ranges (``ip route show``
    lines): what :func:`setup` replaces and :func:`teardown` puts back."""
    found: list[str] = []
    for prefix in (POD_RANGE, SERVICE_RANGE):
        out = _ip("route", "show", "exact", prefix, check=False).stdout
        found += [line.strip() for line in out.splitlines() if line.strip()]
    return found


def hook_first(tool: str, hook: str, chain: str) -> None:
    """Make ``-j chain`` the first rule of ``hook`` (inserted first, duplicates removed
    afterwards: the hook is never without it)."""
    listing = _iptables("-S", hook, tool=tool).stdout.splitlines()
    rules = [line for line in listing if line.startswith("-A ")]
    jump = f"-A {hook} -j {chain}"
    if rules and rules[0] == jump and rules.count(jump) == 1:
        return
    _iptables("-I", hook, "1", "-j", chain, tool=tool)
    rules = [
        line
        for line in _iptables("-S", hook, tool=tool).stdout.splitlines()
        if line.startswith("-A ")
    ]
    for number in sorted((i + 1 for i, r in enumerate(rules) if r == jump and i > 0), reverse=True):
        _iptables("-D", hook, str(number), tool=tool, check=False)


def keep_guards_first() -> None:
    """Put the guards' jumps back at the top of FORWARD and INPUT (kube-proxy and the
    kubelet insert theirs at the top when they start, the enforcer after the guards).
    Guards not installed are left alone. Raises HostNetworkError."""
    for tool, hook, chain in GUARD_HOOKS:
        if _iptables("-S", chain, tool=tool, check=False).returncode == 0:
            hook_first(tool, hook, chain)


def _chain(tool: str, chain: str, rules: list[list[str]]) -> None:
    if _iptables("-S", chain, tool=tool, check=False).returncode != 0:
        _iptables("-N", chain, tool=tool)
    _iptables("-F", chain, tool=tool)
    for rule in rules:
        _iptables("-A", chain, *rule, tool=tool)


def setup() -> None:
    """Create the bridge with the node IP, the routes, the FORWARD guard and the IPv6 guard.

    Raises HostNetworkError (also when a bridge of that name exists already: it is not
    this node's).
    """
    check_bridge_netfilter()
    if bridge_exists():
        raise HostNetworkError(
            f"a network interface named {BRIDGE} exists already and this node did not create "
            f"it; the node needs that name. Remove it if it is a leftover (`ip link del {BRIDGE}`)."
        )
    _ip("link", "add", BRIDGE, "type", "bridge")
    with contextlib.suppress(OSError):  # no IPv6 on the node's bridge
        Path(f"/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6").write_text("1")
    _ip("addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    _ip("route", "replace", "blackhole", POD_RANGE)
    _ip("route", "replace", SERVICE_RANGE, "dev", BRIDGE, "src", NODE_IP)
    _chain(
        "iptables",
        GUARD_CHAIN,
        [
            ["-s", POD_RANGE, "!", "-o", BRIDGE, "-j", "DROP"],
            ["-d", POD_RANGE, "!", "-i", BRIDGE, "-j", "DROP"],
        ],
    )
    hook_first("iptables", "FORWARD", GUARD_CHAIN)
    _chain("ip6tables", GUARD6_CHAIN, [["-i", BRIDGE, "-j", "DROP"], ["-o", BRIDGE, "-j", "DROP"]])
    for hook in ("FORWARD", "INPUT"):
        hook_first("ip6tables", hook, GUARD6_CHAIN)


def guard_node_input(api_port: int) -> None:
    """Of the node itself, let pods reach only CoreDNS and the API server (port
    ``api_port``) on the node IP, and replies; drop the rest from the bridge.

    Raises HostNetworkError.
    """
    pods = ["-i", BRIDGE]
    _chain(
        "iptables",
        INPUT_GUARD_CHAIN,
        [
            [*pods, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"],
            [
                *pods,
                "-d",
                NODE_IP,
                "-p",
                "udp",
                "-m",
                "udp",
                "--dport",
                str(DNS_PORT),
                "-j",
                "RETURN",
            ],
            [
                *pods,
                "-d",
                NODE_IP,
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                str(DNS_PORT),
                "-j",
                "RETURN",
            ],
            [
                *pods,
                "-d",
                NODE_IP,
                "-p",
                "tcp",
                "-m",
                "tcp",
                "--dport",
                str(api_port),
                "-j",
                "RETURN",
            ],
            [*pods, "-j", "DROP"],
        ],
    )
    hook_first("iptables", "INPUT", INPUT_GUARD_CHAIN)


def _remove_chain(tool: str, hooks: tuple[str, ...], chain: str, problems: list[str]) -> None:
    for hook in hooks:
        while _iptables("-D", hook, "-j", chain, check=False, tool=tool).returncode == 0:
            pass
    if _iptables("-S", chain, check=False, tool=tool).returncode == 0:
        _iptables("-F", chain, check=False, tool=tool)
        if _iptables("-X", chain, check=False, tool=tool).returncode != 0:
            problems.append(f"{tool} chain {chain}")


def teardown(saved_routes: list[str] | None = None) -> list[str]:
    """Remove the guard chains, routes and bridge, then put back ``saved_routes`` (what
    :func:`routes_before` returned before :func:`setup`) that are missing; returns what
    could not be removed or restored."""
    problems: list[str] = []
    _remove_chain("iptables", ("FORWARD",), GUARD_CHAIN, problems)
    _remove_chain("iptables", ("INPUT",), INPUT_GUARD_CHAIN, problems)
    _remove_chain("ip6tables", ("FORWARD", "INPUT"), GUARD6_CHAIN, problems)
    current = routes_before()
    if "blackhole " + POD_RANGE in current and "blackhole " + POD_RANGE not in (saved_routes or []):
        _ip("route", "del", "blackhole", POD_RANGE, check=False)
    exists = bridge_exists()
    if exists:
        # veths left attached to the bridge (their pods' netns gone, or a crash) go with it
        for line in _ip("-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            _ip("link", "del", name, check=False)
        if _ip("link", "del", BRIDGE, check=False).returncode != 0:
            problems.append(f"link {BRIDGE}")
    # the service route went with the bridge; what setup replaced comes back as it was
    current = routes_before()
    for route in saved_routes or []:
        if (
            route not in current
            and _ip("route", "add", *route.split(), check=False).returncode != 0
        ):
            problems.append(f"route {route}")
    return problems
