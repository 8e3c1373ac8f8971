"""The node's host networking: one bridge, the pod and service ranges kept on the machine.

- Bridge ``ks0`` holds the node IP (``10.244.0.1/24``, also the pods' gateway); the CNI
  bridge plugin attaches each pod's veth to it.
- ``blackhole 10.244.0.0/16``: pod addresses outside this node's /24 go nowhere.
- ``10.96.0.0/16 dev ks0``: service addresses that kube-proxy did not rewrite stay on the
  bridge (a blackhole would make the host's own ``connect()`` fail before kube-proxy's
  DNAT in OUTPUT runs).
- filter chain ``KS-NODE-GUARD`` (from FORWARD): packets from pods never leave through
  another interface, so nothing with a pod source address reaches the network.

Every function here is idempotent; :func:`teardown` removes exactly what :func:`setup`
adds and is safe when nothing is there.
"""

from __future__ import annotations

import subprocess

BRIDGE = "ks0"
NODE_IP = "10.244.0.1"
NODE_SUBNET = "10.244.0.0/24"
POD_RANGE = "10.244.0.0/16"
SERVICE_RANGE = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
GUARD_CHAIN = "KS-NODE-GUARD"


class HostNetworkError(RuntimeError):
    """A host network change failed (the message has the command and its error)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HostNetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise HostNetworkError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result


def setup() -> None:
    """Create the bridge with the node IP, the routes and the guard chain.

    Raises HostNetworkError.
    """
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    if NODE_IP not in _ip("-4", "addr", "show", "dev", BRIDGE).stdout:
        _ip("addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    _ip("route", "replace", "blackhole", POD_RANGE)
    _ip("route", "replace", SERVICE_RANGE, "dev", BRIDGE, "src", NODE_IP)
    if _iptables("-L", GUARD_CHAIN, "-n", check=False).returncode != 0:
        _iptables("-N", GUARD_CHAIN)
    _iptables("-F", GUARD_CHAIN)
    _iptables("-A", GUARD_CHAIN, "-s", POD_RANGE, "!", "-o", BRIDGE, "-j", "DROP")
    if _iptables("-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
        _iptables("-I", "FORWARD", "1", "-j", GUARD_CHAIN)


def teardown() -> list[str]:
    """Remove the guard chain, routes and bridge; returns what could not be removed."""
    problems: list[str] = []
    while _iptables("-D", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode == 0:
        pass
    if _iptables("-L", GUARD_CHAIN, "-n", check=False).returncode == 0:
        _iptables("-F", GUARD_CHAIN, check=False)
        if _iptables("-X", GUARD_CHAIN, check=False).returncode != 0:
            problems.append(f"iptables chain {GUARD_CHAIN}")
    for route in (("blackhole", POD_RANGE), (SERVICE_RANGE,)):
        _ip("route", "del", *route, check=False)
    # veths left attached to the bridge (their pods' netns gone, or a crash) go with it
    for line in _ip("-o", "link", "show", "master", BRIDGE, check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        _ip("link", "del", name, check=False)
    exists = _ip("link", "show", BRIDGE, check=False).returncode == 0
    if exists and _ip("link", "del", BRIDGE, check=False).returncode != 0:
        problems.append(f"link {BRIDGE}")
    return problems
