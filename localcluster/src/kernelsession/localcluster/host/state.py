"""What a node leaves on the host: a comparable snapshot of it.

The local node creates mounts, network namespaces, links, routes, iptables chains and
rules, nftables tables, ipsets, cgroups and sysctl changes. :func:`snapshot` records all
of them in a normalised form (no counters, no random veth names are hidden: a leftover
veth shows), :func:`diff` says what changed between two snapshots. Teardown is checked
with it by the tests and by ``python -m kernelsession.localcluster check-host``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Tunables the kubelet, kube-proxy and the CNI bridge plugin may change.
SYSCTLS = (
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/ipv4/conf/all/forwarding",
    "net/ipv6/conf/all/forwarding",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
)
# Host paths outside the node's work directory that the kubelet, containerd or the CNI
# library create even when pointed elsewhere.
HOST_PATHS = (
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/mount",
    "/run/netns",
    "/usr/libexec/kubernetes",
    "/etc/cni",
    "/opt/cni",
    "/run/nri",
)
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None:
        return ""
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    return result.stdout


def read_sysctls(names: tuple[str, ...] = SYSCTLS) -> dict[str, str]:
    """Current values of ``names`` (paths under /proc/sys); absent ones are skipped."""
    values: dict[str, str] = {}
    for name in names:
        try:
            values[name] = (Path("/proc/sys") / name).read_text().strip()
        except OSError:
            continue
    return values


def write_sysctls(values: dict[str, str]) -> list[str]:
    """Write ``values`` back; returns the names that could not be written."""
    failed: list[str] = []
    for name, value in values.items():
        path = Path("/proc/sys") / name
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError:
            failed.append(name)
    return failed


def _mounts() -> list[str]:
    points: list[str] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        points.append(parts[4])
    return sorted(set(points))


def _iptables(tool: str) -> list[str]:
    """Chains and rules of every table, without counters."""
    out = _run(f"{tool}-save")
    lines: list[str] = []
    for line in out.splitlines():
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith(":"):
            line = re.sub(r"\s*\[\d+:\d+\]$", "", line)
        lines.append(line)
    return lines


def _cgroups() -> list[str]:
    found: list[str] = []
    if not _CGROUP_ROOT.is_dir():
        return found
    for hierarchy in sorted(_CGROUP_ROOT.iterdir()):
        candidate = hierarchy / "kubepods"
        if candidate.is_dir():
            found.append(str(candidate))
        for sub in ("kubepods.slice",):
            if (hierarchy / sub).is_dir():
                found.append(str(hierarchy / sub))
    return found


def _routes() -> list[str]:
    out = _run("ip", "-o", "route", "show", "table", "all")
    return sorted(line.strip() for line in out.splitlines() if line.strip())


@dataclass
class HostState:
    """Everything a node may leave behind, normalised for comparison."""

    mounts: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    iptables: list[str] = field(default_factory=list)
    ip6tables: list[str] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)
    ipsets: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    """``PID EXECUTABLE`` of every process running a binary from the project's cache
    (etcd, the Kubernetes components, containerd and its shims, CoreDNS...)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostState:
        return cls(**json.loads(text))


def _cache_processes() -> list[str]:
    """Processes whose executable lies under ``~/.cache/kernelsession`` (or XDG's)."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    cache = str(Path(base) / "kernelsession") + "/"
    found: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        if exe.startswith(cache):
            found.append(f"{proc.name} {exe}")
    return sorted(found)


def snapshot() -> HostState:
    """The host's current state (root needed for iptables, nft and ipset)."""
    links = _run("ip", "-o", "link", "show")
    netns_dir = Path("/run/netns")
    return HostState(
        mounts=_mounts(),
        netns=sorted(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else [],
        links=sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines()),
        routes=_routes(),
        iptables=_iptables("iptables"),
        ip6tables=_iptables("ip6tables"),
        nft_tables=sorted(line for line in _run("nft", "list", "tables").splitlines() if line),
        ipsets=sorted(_run("ipset", "list", "-n").split()),
        cgroups=_cgroups(),
        sysctls=read_sysctls(),
        paths=sorted(p for p in HOST_PATHS if Path(p).exists()),
        processes=_cache_processes(),
    )


def diff(before: HostState, after: HostState) -> list[str]:
    """Human-readable differences (``+`` added since ``before``, ``-`` gone); [] if equal."""
    changes: list[str] = []
    for name in ("mounts", "netns", "links", "routes", "iptables", "ip6tables"):
        old, new = set(getattr(before, name)), set(getattr(after, name))
        changes += [f"{name}: + {item}" for item in sorted(new - old)]
        changes += [f"{name}: - {item}" for item in sorted(old - new)]
    for name in ("nft_tables", "ipsets", "cgroups", "paths", "processes"):
        old, new = set(getattr(before, name)), set(getattr(after, name))
        changes += [f"{name}: + {item}" for item in sorted(new - old)]
        changes += [f"{name}: - {item}" for item in sorted(old - new)]
    for key in sorted(set(before.sysctls) | set(after.sysctls)):
        if before.sysctls.get(key) != after.sysctls.get(key):
            changes.append(f"sysctl {key}: {before.sysctls.get(key)} -> {after.sysctls.get(key)}")
    return changes
