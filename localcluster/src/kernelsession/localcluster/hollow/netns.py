"""The hollow network: a network namespace holding every KWOK pod address.

:meth:`HollowNetwork.setup` creates namespace ``ks-hollow`` joined to the host by a veth
pair (``ks-hollow0`` on the host), makes the whole KWOK pod range local inside it
(``ip route add local RANGE dev lo``) and routes that range from the host to it only, so
traffic to a KWOK pod (from the operator's pod, forwarded by the host) reaches the hollow
lab and no packet leaves the machine. :meth:`listening_socket` opens the hollow lab's TCP
socket inside the namespace from this process (``setns`` on the calling thread, then
back), so the process itself stays in the host namespace (loopback API server, control
site). :meth:`teardown` deletes the route, the namespace (the veth pair goes with it)
and the filter chain: the host's links, routes, namespaces and iptables rules are as
before (host/state.py).

The node's guard (``KS-NODE-GUARD``, host/network.py) drops pod traffic that leaves by
any interface but the bridge. Forwarded traffic between the pods and the hollow range
jumps to chain ``KS-HOLLOW`` from the top of the guard chain itself (from FORWARD
position 1 when there is no guard, i.e. no node), which sends it through the
NetworkPolicy enforcer's ``KS-NETPOL`` (so policies hold for hollow labs as for real
ones) and accepts what that chain does not drop. Not from FORWARD when the guard is
there: the node keeps its guard, then the enforcer's ``KS-NETPOL``, the first rules of
FORWARD, and the enforcer re-applies its rules every second while they are not (it
then puts them back ahead of any other jump, so the guard would drop hollow traffic).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CHAIN = "KS-HOLLOW"
POLICY_CHAIN = "KS-NETPOL"
GUARD_CHAIN = "KS-NODE-GUARD"
"""The node's forward guard (host/network.py): the hooks go at its top when it exists."""


class HollowNetworkError(RuntimeError):
    """An ``ip`` command of the hollow network failed."""


def _ip(*args: str, check: bool = True) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HollowNetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _iptables(*args: str, check: bool = True) -> bool:
    result = subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise HollowNetworkError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result.returncode == 0


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise HollowNetworkError(f"setns: {os.strerror(err)}")


@dataclass(frozen=True)
class HollowNetwork:
    """The namespace, its veth pair and the KWOK pod range routed to it."""

    pod_range: str = "10.250.0.0/16"
    name: str = "ks-hollow"
    host_link: str = "ks-hollow0"
    host_addr: str = "169.254.250.1"
    ns_addr: str = "169.254.250.2"

    def commands(self) -> list[list[str]]:
        """The ``ip`` argument lists :meth:`setup` runs, in order (pure)."""
        ns = ["-n", self.name]
        return [
            ["netns", "add", self.name],
            [
                "link",
                "add",
                self.host_link,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.name,
            ],
            ["addr", "add", f"{self.host_addr}/30", "dev", self.host_link],
            ["link", "set", self.host_link, "up"],
            [*ns, "link", "set", "lo", "up"],
            [*ns, "addr", "add", f"{self.ns_addr}/30", "dev", "eth0"],
            [*ns, "link", "set", "eth0", "up"],
            [*ns, "route", "add", "default", "via", self.host_addr],
            [*ns, "route", "add", "local", self.pod_range, "dev", "lo"],
            ["route", "add", self.pod_range, "via", self.ns_addr, "dev", self.host_link],
        ]

    def hooks(self) -> list[list[str]]:
        """The FORWARD matches that jump to :data:`CHAIN` (pure)."""
        return [
            ["-d", self.pod_range, "-o", self.host_link],
            ["-s", self.pod_range, "-i", self.host_link],
        ]

    def hook_commands(self, guard: bool) -> list[list[str]]:
        """The ``iptables`` argument lists that hook :data:`CHAIN` (pure): at the top of
        the node's guard chain when there is one (``guard``), else of FORWARD."""
        hook = GUARD_CHAIN if guard else "FORWARD"
        return [["-I", hook, "1", *match, "-j", CHAIN] for match in self.hooks()]

    def setup(self) -> None:
        """Create it (removing a leftover of an interrupted run first)."""
        self.teardown()
        try:
            for args in self.commands():
                _ip(*args)
            _iptables("-N", CHAIN)
            if _iptables("-L", POLICY_CHAIN, "-n", check=False):
                _iptables("-A", CHAIN, "-j", POLICY_CHAIN)
            _iptables("-A", CHAIN, "-j", "ACCEPT")
            for args in self.hook_commands(_iptables("-L", GUARD_CHAIN, "-n", check=False)):
                _iptables(*args)
        except HollowNetworkError:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Remove the chain, the route and the namespace (idempotent)."""
        for hook in (GUARD_CHAIN, "FORWARD"):
            for match in self.hooks():
                while _iptables("-D", hook, *match, "-j", CHAIN, check=False):
                    pass
        _iptables("-F", CHAIN, check=False)
        _iptables("-X", CHAIN, check=False)
        _ip("route", "del", self.pod_range, check=False)
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.host_link, check=False)

    def listening_socket(self, port: int) -> socket.socket:
        """A TCP socket listening on every address of the namespace at ``port``."""
        host = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
                sock.listen(4096)
                sock.setblocking(False)
            finally:
                _setns(host)
        finally:
            os.close(target)
            os.close(host)
        return sock
