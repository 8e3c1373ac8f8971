"""The host under the node: the one-node-per-machine lock, the crash record and the host's
preparation (bridge, routes) and restoration.

One node per machine: the kubelet's ports, its cgroups (``kubepods``), iptables chains
and a few host paths are global. :class:`NodeLock` takes ``/run/kernelsession/node.lock``
(a second start fails with :class:`NodeBusyError` naming the running one);
:func:`prepare` keeps a record (``node.json`` beside it,
:mod:`kernelsession.localcluster.host.crash`) of what was started and how the host looked
before, so that the next start after a crash (SIGKILL, power cut of the process tree)
removes what the crashed run left: ``cleanup_crashed``. :func:`restore` puts the host
back after an orderly stop.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from kernelsession.localcluster.building.binaries import Binaries
from kernelsession.localcluster.building.gobuild import cache_root
from kernelsession.localcluster.building.nodebinaries import NodeBinaries
from kernelsession.localcluster.cluster.controlplane import ControlPlaneError
from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.host.crash import (
    LOCK_FILE,
    RECORD_FILE,
    RUN_DIR,
    NodeRecord,
    cleanup_crashed,
    finish_host_cleanup,
    proc_start_time,
    shared_chains,
)


class NodeError(ControlPlaneError):
    """A node component failed to start or become ready."""


class NodeBusyError(NodeError):
    """Another kernelsession node runs on this machine."""


def containerd_root() -> Path:
    """containerd's content and snapshot store: kept between runs (images are imported
    once), under the cache like the binaries."""
    return cache_root() / "node" / "containerd-root"


class NodeLock:
    """``flock`` on ``/run/kernelsession/node.lock`` held while a node runs."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Raises NodeBusyError when another live process holds it."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        handle = open(LOCK_FILE, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            record = NodeRecord.load()
            where = f" (process {record.owner_pid}, work dir {record.workdir})" if record else ""
            raise NodeBusyError(
                f"a kernelsession node is already running on this machine{where}; one node "
                "per machine: stop it first (Ctrl-C in its `make run`, or let its tests end)"
            ) from None
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def require_root() -> None:
    """Raises NodeError unless this process runs as root."""
    if os.geteuid() != 0:
        raise NodeError("the local node needs root (containerd, the kubelet, iptables)")


def prepare(workdir: Path, binaries: Binaries, node_binaries: NodeBinaries) -> NodeRecord:
    """Clean up after a crashed node, record the host's state (saved before anything
    changes) and set up the bridge and routes. The caller holds the :class:`NodeLock`.

    Raises:
        NodeError: the bridge exists without a crashed node's record of it, or the host
            network cannot be set up.
    """
    cleanup_crashed(sys.stderr)
    if hostnet.bridge_exists():
        raise NodeError(
            f"a network interface named {hostnet.BRIDGE} exists and no crashed node "
            "left a record of it: it is not this node's. Remove it if it is a "
            f"leftover (`ip link del {hostnet.BRIDGE}`), then start again."
        )
    before = hoststate.snapshot()
    workdir.mkdir(parents=True, exist_ok=True)
    record = NodeRecord(
        owner_pid=os.getpid(),
        workdir=str(workdir),
        containerd_root=str(containerd_root()),
        ctr=str(node_binaries.ctr),
        containerd=str(node_binaries.containerd),
        kube_proxy=str(binaries.kube_proxy),
        sysctls=before.sysctls,
        absent_paths=[p for p in hoststate.HOST_PATHS if not Path(p).exists()],
        nft_tables=before.nft_tables,
        routes_before=hostnet.routes_before(),
        chains_before=shared_chains(),
    )
    record.save()
    try:
        hostnet.setup()
    except hostnet.HostNetworkError as exc:
        raise NodeError(str(exc)) from exc
    return record


def record_process(record: NodeRecord, name: str, proc: subprocess.Popen[bytes]) -> None:
    """Add a process to the crash record, so that the next start stops it if this process
    dies without a teardown."""
    record.pids[name] = [str(proc.pid), proc_start_time(proc.pid) or ""]
    record.save()


def restore(record: NodeRecord) -> list[str]:
    """After the daemons stopped: unmount, remove the cgroups, chains, bridge, routes and
    host paths the node created, restore the sysctls, drop the record. Returns what could
    not be restored ([] normally)."""
    problems = finish_host_cleanup(record)
    RECORD_FILE.unlink(missing_ok=True)
    return problems
