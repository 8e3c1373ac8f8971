"""The crash record of the local node and the cleanup after a node that did not stop.

A running node keeps a record (``/run/kernelsession/node.json``, :class:`NodeRecord`) of
what it started (PIDs with their start times) and how the host looked before it. The
next start after a crash (SIGKILL, power cut of the process tree) removes what the
crashed run left: :func:`cleanup_crashed`; an orderly stop ends with the same host
cleanup (:func:`finish_host_cleanup`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.processes import start_logged, stop_process, wait_until

RUN_DIR = Path("/run/kernelsession")
LOCK_FILE = RUN_DIR / "node.lock"
RECORD_FILE = RUN_DIR / "node.json"
CONTAINERD_NAMESPACE = "k8s.io"
# kubelet chains (mangle, nat, filter; IPv4 and IPv6) that `kube-proxy --cleanup` leaves.
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


def proc_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@dataclass
class NodeRecord:
    """What a running node started and what the host looked like before it."""

    owner_pid: int
    workdir: str
    containerd_root: str
    containerd_config: str = ""
    containerd_address: str = ""
    ctr: str = ""
    containerd: str = ""
    kube_proxy: str = ""
    pids: dict[str, list[str]] = field(default_factory=dict)  # name -> [pid, start time]
    sysctls: dict[str, str] = field(default_factory=dict)
    absent_paths: list[str] = field(default_factory=list)
    nft_tables: list[str] = field(default_factory=list)
    routes_before: list[str] = field(default_factory=list)
    """Routes for exactly the pod and service ranges before the node replaced them."""
    chains_before: list[str] = field(default_factory=list)
    """``TOOL TABLE CHAIN`` of the kubelet's and the CNI plugins' chains (names other
    programs share) that existed before the node started: cleanup leaves them."""

    def save(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        tmp = RECORD_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1))
        tmp.chmod(0o600)
        os.replace(tmp, RECORD_FILE)

    @classmethod
    def load(cls) -> NodeRecord | None:
        try:
            return cls(**json.loads(RECORD_FILE.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def run_captured(argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def kill_recorded(pids: dict[str, list[str]]) -> None:
    """SIGKILL recorded processes that are still the same processes (start time matches)."""
    for pid_text, started in pids.values():
        pid = int(pid_text)
        if proc_start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _mounts_under(prefixes: list[str]) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    chosen = [
        p for p in points if any(p == x or p.startswith(x.rstrip("/") + "/") for x in prefixes)
    ]
    return sorted(set(chosen), key=len, reverse=True)


def _unmount_under(prefixes: list[str]) -> None:
    for point in _mounts_under(prefixes):
        run_captured(["umount", "-l", point])


def _remove_cgroups() -> None:
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        for _ in range(3):  # processes may take a moment to leave after SIGKILL
            for directory in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if directory.is_dir():
                    with contextlib.suppress(OSError):
                        directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
            if not top.exists():
                break
            time.sleep(0.2)


def _kill_cgroup_processes() -> None:
    """SIGKILL every process left in the kubepods cgroups (containers of a crashed node)."""
    for procs in Path("/sys/fs/cgroup").glob("*/kubepods/**/cgroup.procs"):
        with contextlib.suppress(OSError):
            for pid in procs.read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


def shared_chains() -> list[str]:
    """``TOOL TABLE CHAIN`` of the chains whose names the node shares with other programs
    (the kubelet's, the CNI plugins' ``CNI-*``) that exist now."""
    found: list[str] = []
    for tool in ("iptables", "ip6tables"):
        for table in ("mangle", "nat", "filter"):
            for line in run_captured([f"{tool}-save", "-t", table]).stdout.splitlines():
                if line.startswith(":"):
                    chain = line[1:].split()[0]
                    if chain in KUBELET_CHAINS or chain.startswith("CNI-"):
                        found.append(f"{tool} {table} {chain}")
    return found


def _remove_iptables_leftovers(chains_before: list[str]) -> None:
    """Remove the kubelet's and the CNI plugins' chains that were not there before the
    node started (``chains_before``), and the rules jumping to them; nothing else."""
    ours = set(shared_chains()) - set(chains_before)
    for tool in ("iptables", "ip6tables"):
        for table in ("mangle", "nat", "filter"):
            mine = [c.split()[2] for c in ours if c.startswith(f"{tool} {table} ")]
            if not mine:
                continue
            saved = run_captured([f"{tool}-save", "-t", table]).stdout.splitlines()
            for line in saved:  # jumps first
                if line.startswith("-A ") and any(line.endswith(f" -j {c}") for c in mine):
                    run_captured([tool, "-w", "5", "-t", table, "-D", *line.split()[1:]])
            for chain in mine:
                run_captured([tool, "-w", "5", "-t", table, "-F", chain])
            for chain in mine:
                run_captured([tool, "-w", "5", "-t", table, "-X", chain])


def _remove_new_nft_tables(before: list[str]) -> None:
    """Delete nftables tables iptables-nft created for the node, once they hold no rules."""
    if shutil.which("nft") is None:
        return
    for line in run_captured(["nft", "list", "tables"]).stdout.splitlines():
        if not line or line in before:
            continue
        _kind, family, name = line.split()
        listing = run_captured(["nft", "list", "table", family, name]).stdout
        rules = [ln for ln in listing.splitlines() if ln.startswith("\t\t") and "type " not in ln]
        if not rules:
            run_captured(["nft", "delete", "table", family, name])


def _shims_of(address: str) -> dict[str, list[str]]:
    """The runc shims serving the containerd at ``address`` (their ``-address`` argument is
    this node's private socket), as ``{name: [pid, start time]}``."""
    wanted = f"\0-address\0{address}\0".encode()
    shims: dict[str, list[str]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted in cmdline + b"\0":
            shims[f"shim-{proc.name}"] = [proc.name, proc_start_time(int(proc.name)) or ""]
    return shims


def containerd_cleanup(ctr: str, address: str) -> dict[str, list[str]]:
    """Kill and remove every task, container and sandbox in the k8s.io namespace.

    Returns the tasks' runc shims (``{name: [pid, start time]}``): a shim that hosted a
    CRI pod does not exit when its tasks are deleted through ``ctr``, so the caller stops
    them by PID once containerd is stopped (:func:`kill_recorded`).
    """
    base = [ctr, "--address", address, "-n", CONTAINERD_NAMESPACE]
    shims = _shims_of(address)
    tasks = run_captured([*base, "tasks", "ls", "-q"]).stdout.split()
    for task in tasks:
        run_captured([*base, "tasks", "kill", "-a", "-s", "SIGKILL", task])
    deadline = time.monotonic() + 15
    while tasks and time.monotonic() < deadline:
        for task in list(tasks):
            if run_captured([*base, "tasks", "rm", "-f", task]).returncode == 0:
                tasks.remove(task)
        if tasks:
            time.sleep(0.1)
    for container in run_captured([*base, "containers", "ls", "-q"]).stdout.split():
        run_captured([*base, "containers", "rm", container])
    for sandbox in run_captured([*base, "sandboxes", "ls", "-q"]).stdout.split():
        run_captured([*base, "sandboxes", "rm", "-f", sandbox])
    return shims


def finish_host_cleanup(record: NodeRecord) -> list[str]:
    """Everything after the processes are gone: mounts, cgroups, iptables, links, paths,
    sysctls. Returns what could not be restored."""
    problems: list[str] = []
    _kill_cgroup_processes()
    # only under the node's own directories (its pods' network namespaces are under
    # containerd's state there): never another program's /run/netns or kubelet mounts
    _unmount_under([record.workdir, record.containerd_root])
    if record.kube_proxy and Path(record.kube_proxy).exists():
        run_captured([record.kube_proxy, "--cleanup", "--v=0"])
    _remove_iptables_leftovers(record.chains_before)
    from kernelsession.localcluster.host.netpol.iptables import (
        remove_rules,  # the enforcer's chains, also after a crash
    )

    remove_rules()
    problems += hostnet.teardown(record.routes_before)
    _remove_cgroups()
    for path in record.absent_paths:
        if _mounts_under([path]):
            continue  # something else mounted there meanwhile (a netns...): not ours
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif Path(path).exists():
            Path(path).unlink(missing_ok=True)
    shutil.rmtree(record.workdir, ignore_errors=True)
    _remove_new_nft_tables(record.nft_tables)
    problems += [f"sysctl {name}" for name in hoststate.write_sysctls(record.sysctls)]
    return problems


def cleanup_crashed(log: IO[str] | None = None) -> bool:
    """If a previous node's record remains (its process is gone), remove what it left.

    Restarts its containerd on the same state to kill the containers it still has.
    Returns True when something was cleaned up. Call with the node lock held.
    """
    record = NodeRecord.load()
    if record is None:
        return False
    if log is not None:
        print(
            f"kernelsession: cleaning up after a node that did not stop (process "
            f"{record.owner_pid}, work dir {record.workdir})",
            file=log,
            flush=True,
        )
    kill_recorded({k: v for k, v in record.pids.items() if k != "containerd"})
    pid_text, started = record.pids.get("containerd", ["0", ""])
    alive = proc_start_time(int(pid_text)) == started if pid_text != "0" else False
    proc: subprocess.Popen[bytes] | None = None
    if (
        not alive
        and record.containerd
        and Path(record.containerd_config).exists()
        and Path(record.containerd).exists()
    ):
        proc = start_logged(
            [record.containerd, "--config", record.containerd_config],
            Path(record.workdir) / "containerd-cleanup.log",
        )
        with contextlib.suppress(TimeoutError, RuntimeError):
            wait_until(lambda: Path(record.containerd_address).exists(), timeout=20)
        alive = True
    shims: dict[str, list[str]] = {}
    if alive and record.ctr:
        shims = containerd_cleanup(record.ctr, record.containerd_address)
    if proc is not None:
        stop_process(proc, grace=10)
    kill_recorded({k: v for k, v in record.pids.items() if k == "containerd"} | shims)
    finish_host_cleanup(record)
    cluster_dir = Path(record.workdir).parent  # the crashed LocalCluster's own temp dir
    if cluster_dir.name.startswith("ks-cluster-"):
        shutil.rmtree(cluster_dir, ignore_errors=True)
    RECORD_FILE.unlink(missing_ok=True)
    return True
