"""Faults for the failover tests, done to real processes and real packets on the node.

- :func:`container_pids`: every process of a pod's container, found from containerd's
  task PID and that process's cgroup (never by process name).
- :func:`signal_container`: SIGKILL / SIGSTOP / SIGCONT all of them.
- :class:`Partition`: cut one pod off from the API server, established connections
  included (a chain of DROP rules jumped to at the top of INPUT and OUTPUT, ahead of any
  conntrack ESTABLISHED accept), removed by its name when healed.
- :func:`late_writes`: from the audit log, the writes one replica made after another
  replica's first write (what a split brain leaves behind).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kernelsession.localcluster.cluster import LocalCluster, audit

CGROUP_ROOT = Path("/sys/fs/cgroup")


def container_id(pod: dict[str, Any]) -> str:
    (cs,) = pod["status"]["containerStatuses"]
    scheme, _, cid = str(cs["containerID"]).partition("://")
    assert scheme == "containerd", cs["containerID"]
    return cid


def cgroup_dirs(pid: int) -> list[Path]:
    """The cgroup directories of process ``pid`` (v1 controllers and v2) that exist."""
    dirs: list[Path] = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        names = [c for c in controllers.split(",") if c and not c.startswith("name=")]
        bases = [CGROUP_ROOT / n for n in names] or [CGROUP_ROOT / "unified", CGROUP_ROOT]
        for base in bases:
            d = base / path.lstrip("/")
            if (d / "cgroup.procs").exists():
                dirs.append(d)
    return dirs


def container_pids(cluster: LocalCluster, pod: dict[str, Any]) -> list[int]:
    """Every process of the pod's (single) container: containerd's task PID and what its
    cgroups hold (only cgroups named after the container: never a shared parent)."""
    assert cluster.node is not None
    cid = container_id(pod)
    main = cluster.node.task_pids()[cid]
    own = [d for d in cgroup_dirs(main) if d.name == cid]
    assert own, f"no cgroup named after container {cid} holds process {main}"
    pids = {main}
    for d in own:
        pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return sorted(pids)


def signal_container(cluster: LocalCluster, pod: dict[str, Any], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to every process of the pod's container; returns their PIDs."""
    pids = container_pids(cluster, pod)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def process_state(pid: int) -> str:
    """The state letter of ``/proc/PID/stat`` (``T``: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def leading(pod: dict[str, Any], timeout: float = 2.0) -> bool | None:
    """Whether the operator replica says it is the active one (its ``kernelsession_leader``
    gauge, read at its pod IP; set the moment it starts or stops acting, while
    ``/healthz`` says what the event loop recorded up to a second before); None when it
    does not answer."""
    url = f"http://{pod['status']['podIP']}:9090/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("kernelsession_leader "):
            return float(line.split()[1]) == 1.0
    return None


def api_server_port(cluster: LocalCluster) -> int:
    """The port the API server listens on behind the ``kubernetes`` Service."""
    endpoints = cluster.get_json("-n", "default", "endpoints", "kubernetes")
    return int(endpoints["subsets"][0]["ports"][0]["port"])


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["iptables", "-w", "5", *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result


class Partition:
    """Drop every packet between pod IP ``ip`` and the API server's port, both ways.

    The pod reaches the API server (the node IP) through kube-proxy's DNAT, so its
    packets arrive in INPUT and the answers leave through OUTPUT; a jump at position 1
    of both runs before any rule that accepts ESTABLISHED connections, so open
    connections (kopf's watches, the Lease renewals) are cut too. Only this pod and only
    that port: its kubelet probes and its pod-to-pod traffic (lab probes) still pass.
    """

    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.chain = f"KS-TEST-PART-{uuid.uuid4().hex[:8]}"
        self.active = False

    def cut(self) -> None:
        _iptables("-N", self.chain)
        self.active = True
        _iptables(
            "-A", self.chain, "-s", self.ip, "-p", "tcp", "--dport", str(self.port), "-j", "DROP"
        )
        _iptables(
            "-A", self.chain, "-d", self.ip, "-p", "tcp", "--sport", str(self.port), "-j", "DROP"
        )
        _iptables("-I", "INPUT", "1", "-j", self.chain)
        _iptables("-I", "OUTPUT", "1", "-j", self.chain)

    def dropped(self) -> int:
        """Packets dropped so far (proof that the cut cut something)."""
        out = _iptables("-L", self.chain, "-v", "-x", "-n").stdout.splitlines()[2:]
        return sum(int(line.split()[0]) for line in out if line.strip())

    def heal(self) -> None:
        """Remove the jumps and the chain, by name (idempotent)."""
        if not self.active:
            return
        for hook in ("INPUT", "OUTPUT"):
            while _iptables("-D", hook, "-j", self.chain, check=False).returncode == 0:
                pass
        _iptables("-F", self.chain, check=False)
        _iptables("-X", self.chain, check=False)
        self.active = False


def replica_writes(entries: Iterable[audit.Entry], user: str) -> list[audit.Entry]:
    """Successful writes of ``user`` (the operator's service account) other than on
    its Lease, in log order."""
    return [
        e for e in entries if e.user == user and e.write and e.succeeded and e.resource != "leases"
    ]


def late_writes(
    writes: list[audit.Entry], old: str, new: str
) -> tuple[str | None, list[audit.Entry]]:
    """(the time the API server received replica ``new``'s first write, the writes of
    replica ``old`` that completed after it). Replicas by pod name."""
    first = next((e for e in writes if e.pod == new), None)
    if first is None:
        return None, []
    start = first.received or first.time
    return start, [e for e in writes if e.pod == old and e.time > start]
