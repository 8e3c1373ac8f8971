"""The real node: containerd + runc, the kubelet, kube-proxy, CoreDNS and the NetworkPolicy
enforcer, on this machine's kernel.

One node per machine: the kubelet's ports, its cgroups (``kubepods``), iptables chains
and a few host paths are global. :class:`NodeLock` takes ``/run/kernelsession/node.lock``
(a second start fails with :class:`NodeBusyError` naming the running one) and keeps a
record (``node.json`` beside it) of what was started and how the host looked before, so
that the next start after a crash (SIGKILL, power cut of the process tree) removes what
the crashed run left: :func:`cleanup_crashed`.

Teardown (:meth:`Node.stop`, also after a failed start) stops the kubelet, kills and
removes every container through containerd, stops the daemons by PID, runs
``kube-proxy --cleanup``, removes the kubelet's and the enforcer's iptables chains (and
the enforcer's jumps from FORWARD and INPUT),
unmounts what is under the work directories, removes the ``kubepods`` cgroups, the
bridge and routes, host paths that did not exist before, and restores the sysctls.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from kernelsession.client.testing import free_port

from . import hostnet, hoststate
from .binaries import Binaries, NodeBinaries
from .controlplane import ControlPlane, ControlPlaneError, write_kubeconfig
from .processes import await_process, http_ok, start_logged, stop_process, wait_until

RUN_DIR = Path("/run/kernelsession")
LOCK_FILE = RUN_DIR / "node.lock"
RECORD_FILE = RUN_DIR / "node.json"
NODE_NAME = "local-node"
CLUSTER_DOMAIN = "cluster.local"
CONTAINERD_NAMESPACE = "k8s.io"
# kubelet chains (mangle, nat, filter; IPv4 and IPv6) that `kube-proxy --cleanup` leaves.
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")


class NodeError(ControlPlaneError):
    """A node component failed to start or become ready."""


class NodeBusyError(NodeError):
    """Another kernelsession node runs on this machine."""


def containerd_root() -> Path:
    """containerd's content and snapshot store: kept between runs (images are imported
    once), under the cache like the binaries."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession" / "node" / "containerd-root"


def _proc_start_time(pid: int) -> str | None:
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


def _run(argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def _kill_recorded(pids: dict[str, list[str]]) -> None:
    """SIGKILL recorded processes that are still the same processes (start time matches)."""
    for pid_text, started in pids.values():
        pid = int(pid_text)
        if _proc_start_time(pid) == started:
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
        _run(["umount", "-l", point])


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


def _remove_iptables_leftovers() -> None:
    for tool in ("iptables", "ip6tables"):
        for hook in ("INPUT", "OUTPUT"):
            while _run([tool, "-w", "5", "-D", hook, "-j", "KUBE-FIREWALL"]).returncode == 0:
                pass
        for table in ("mangle", "nat", "filter"):
            for chain in KUBELET_CHAINS:
                _run([tool, "-w", "5", "-t", table, "-F", chain])
                _run([tool, "-w", "5", "-t", table, "-X", chain])
        # CNI plugins' chains (portmap's CNI-HOSTPORT-*, bridge's CNI-*): jumps first
        for table in ("nat", "filter"):
            saved = _run([f"{tool}-save", "-t", table]).stdout.splitlines()
            for line in saved:
                if line.startswith("-A ") and " -j CNI-" in line:
                    _run([tool, "-w", "5", "-t", table, *(["-D", *line.split()[1:]])])
            chains = [ln[1:].split()[0] for ln in saved if ln.startswith(":CNI-")]
            for chain in chains:
                _run([tool, "-w", "5", "-t", table, "-F", chain])
            for chain in chains:
                _run([tool, "-w", "5", "-t", table, "-X", chain])


def _remove_new_nft_tables(before: list[str]) -> None:
    """Delete nftables tables iptables-nft created for the node, once they hold no rules."""
    if shutil.which("nft") is None:
        return
    for line in _run(["nft", "list", "tables"]).stdout.splitlines():
        if not line or line in before:
            continue
        _kind, family, name = line.split()
        listing = _run(["nft", "list", "table", family, name]).stdout
        rules = [ln for ln in listing.splitlines() if ln.startswith("\t\t") and "type " not in ln]
        if not rules:
            _run(["nft", "delete", "table", family, name])


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
            shims[f"shim-{proc.name}"] = [proc.name, _proc_start_time(int(proc.name)) or ""]
    return shims


def _containerd_cleanup(ctr: str, address: str) -> dict[str, list[str]]:
    """Kill and remove every task, container and sandbox in the k8s.io namespace.

    Returns the tasks' runc shims (``{name: [pid, start time]}``): a shim that hosted a
    CRI pod does not exit when its tasks are deleted through ``ctr``, so the caller stops
    them by PID once containerd is stopped (:func:`_kill_recorded`).
    """
    base = [ctr, "--address", address, "-n", CONTAINERD_NAMESPACE]
    shims = _shims_of(address)
    tasks = _run([*base, "tasks", "ls", "-q"]).stdout.split()
    for task in tasks:
        _run([*base, "tasks", "kill", "-a", "-s", "SIGKILL", task])
    deadline = time.monotonic() + 15
    while tasks and time.monotonic() < deadline:
        for task in list(tasks):
            if _run([*base, "tasks", "rm", "-f", task]).returncode == 0:
                tasks.remove(task)
        if tasks:
            time.sleep(0.1)
    for container in _run([*base, "containers", "ls", "-q"]).stdout.split():
        _run([*base, "containers", "rm", container])
    for sandbox in _run([*base, "sandboxes", "ls", "-q"]).stdout.split():
        _run([*base, "sandboxes", "rm", "-f", sandbox])
    return shims


def _finish_host_cleanup(record: NodeRecord) -> list[str]:
    """Everything after the processes are gone: mounts, cgroups, iptables, links, paths,
    sysctls. Returns what could not be restored."""
    problems: list[str] = []
    _kill_cgroup_processes()
    _unmount_under([record.workdir, record.containerd_root, "/var/lib/kubelet", "/run/netns"])
    if record.kube_proxy and Path(record.kube_proxy).exists():
        _run([record.kube_proxy, "--cleanup", "--v=0"])
    _remove_iptables_leftovers()
    from .netpol import remove_rules  # the enforcer's chains, also after a crash

    remove_rules()
    problems += hostnet.teardown()
    _remove_cgroups()
    for path in record.absent_paths:
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
    _kill_recorded({k: v for k, v in record.pids.items() if k != "containerd"})
    pid_text, started = record.pids.get("containerd", ["0", ""])
    alive = _proc_start_time(int(pid_text)) == started if pid_text != "0" else False
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
        shims = _containerd_cleanup(record.ctr, record.containerd_address)
    if proc is not None:
        stop_process(proc, grace=10)
    _kill_recorded({k: v for k, v in record.pids.items() if k == "containerd"} | shims)
    _finish_host_cleanup(record)
    cluster_dir = Path(record.workdir).parent  # the crashed LocalCluster's own temp dir
    if cluster_dir.name.startswith("ks-cluster-"):
        shutil.rmtree(cluster_dir, ignore_errors=True)
    RECORD_FILE.unlink(missing_ok=True)
    return True


@dataclass
class NodeTimings:
    containerd: float = 0.0
    images: float = 0.0
    kubelet: float = 0.0
    addons: float = 0.0


class Node:
    """The node's daemons for a started :class:`ControlPlane`; ``start`` / ``stop``."""

    def __init__(
        self,
        controlplane: ControlPlane,
        binaries: Binaries,
        node_binaries: NodeBinaries,
        workdir: Path,
        *,
        images: list[tuple[str, Path]],
        sandbox_image: str,
        helper_image: str | None = None,
        start_timeout: float = 120.0,
        max_pods: int = 150,
    ) -> None:
        """``images``: (ref, OCI archive) pairs imported into containerd when missing;
        ``sandbox_image``: the pause image ref (one of them); ``helper_image``: an image
        with ``sh``, ``mkdir`` and ``rm`` for the volume provisioner's helper pods (none:
        no default StorageClass)."""
        self.helper_image = helper_image
        self.cp = controlplane
        self.binaries = binaries
        self.node_binaries = node_binaries
        self.workdir = workdir
        self.images = images
        self.sandbox_image = sandbox_image
        self.start_timeout = start_timeout
        self.max_pods = max_pods
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.timings = NodeTimings()
        self.lock = NodeLock()
        self.record: NodeRecord | None = None
        self.kubelet_port = 0
        self.kubelet_healthz_port = 0
        self.proxy_healthz_port = 0
        self.dns_health_port = 0

    # -- paths ------------------------------------------------------------------------
    @property
    def containerd_address(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``ctr`` against this node's containerd in the k8s.io namespace."""
        return _run(
            [
                str(self.node_binaries.ctr),
                "--address",
                str(self.containerd_address),
                "-n",
                CONTAINERD_NAMESPACE,
                *args,
            ],
            timeout=timeout,
        )

    def task_pids(self) -> dict[str, int]:
        """Container ID -> PID of its main process, for every running container (from
        containerd: the same IDs as ``containerStatuses[].containerID``)."""
        pids: dict[str, int] = {}
        for line in self.ctr("tasks", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "RUNNING":
                pids[parts[0]] = int(parts[1])
        return pids

    def daemon_pids(self) -> dict[str, int]:
        """PIDs of the node's own daemons (kubelet, containerd, kube-proxy, ...)."""
        return {name: proc.pid for name, proc in self.processes.items() if proc.poll() is None}

    # -- lifecycle --------------------------------------------------------------------
    def prepare_host(self) -> None:
        """Take the node lock, clean up after a crashed node, record the host's state and
        set up the bridge and routes. Call before the control plane starts (it listens
        on the node IP). Raises NodeBusyError, NodeError."""
        if os.geteuid() != 0:
            raise NodeError("the local node needs root (containerd, the kubelet, iptables)")
        self.lock.acquire()
        try:
            cleanup_crashed(sys.stderr)
            before = hoststate.snapshot()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.record = NodeRecord(
                owner_pid=os.getpid(),
                workdir=str(self.workdir),
                containerd_root=str(containerd_root()),
                ctr=str(self.node_binaries.ctr),
                containerd=str(self.node_binaries.containerd),
                kube_proxy=str(self.binaries.kube_proxy),
                sysctls=before.sysctls,
                absent_paths=[p for p in hoststate.HOST_PATHS if not Path(p).exists()],
                nft_tables=before.nft_tables,
            )
            self.record.save()
            hostnet.setup()
        except BaseException:
            self.lock.release()
            raise

    def start(self) -> NodeTimings:
        """Start containerd (importing missing images), the kubelet (until the node is
        Ready), kube-proxy, CoreDNS and the NetworkPolicy enforcer.

        Raises NodeError with the failing component's log tail.
        """
        t = time.monotonic()
        self._start_containerd()
        self.timings.containerd = time.monotonic() - t
        t = time.monotonic()
        self._import_images()
        self.timings.images = time.monotonic() - t
        t = time.monotonic()
        self._start_kubelet()
        self.timings.kubelet = time.monotonic() - t
        t = time.monotonic()
        self._start_kube_proxy()
        self._start_coredns()
        self._start_netpol()
        if self.helper_image is not None:
            self._start_local_path()
        self.timings.addons = time.monotonic() - t
        return self.timings

    def stop(self) -> list[str]:
        """Tear everything down (see the module docstring); returns what could not be
        restored ([] normally). Safe after a failed start and twice."""
        if self.record is None:
            return []
        for name in ("local-path", "netpol", "coredns", "kube-proxy", "kubelet"):
            proc = self.processes.pop(name, None)
            if proc is not None:
                stop_process(proc, grace=10)
        containerd = self.processes.pop("containerd", None)
        if containerd is not None and containerd.poll() is None:
            shims = _containerd_cleanup(str(self.node_binaries.ctr), str(self.containerd_address))
            stop_process(containerd, grace=10)
            _kill_recorded(shims)
        problems = _finish_host_cleanup(self.record)
        RECORD_FILE.unlink(missing_ok=True)
        self.record = None
        self.lock.release()
        return problems

    def restart_daemon(self, name: str, *, grace: float = 10.0) -> float:
        """Restart the node's ``containerd`` or ``kubelet`` as an upgrade of its package
        would: SIGTERM by PID (SIGKILL after ``grace``), then start it again with the same
        configuration. Running containers (their shims) are left alone: nothing of a
        crashed run is cleaned up here. Returns seconds until it answers again.

        Raises:
            ValueError: ``name`` is not one of the two.
            NodeError: it does not come back (with its log tail).
        """
        if name not in ("containerd", "kubelet"):
            raise ValueError(f"restart_daemon: containerd or kubelet, not {name!r}")
        started = time.monotonic()
        proc = self.processes.pop(name, None)
        if proc is not None:
            stop_process(proc, grace=grace)
        if name == "kubelet":
            self._start_kubelet()
            return time.monotonic() - started
        env = dict(os.environ)
        env["PATH"] = f"{self.node_binaries.directory}:{env.get('PATH', '/usr/bin:/bin')}"
        config = self.workdir / "containerd" / "config.toml"
        self._spawn(
            "containerd", [str(self.node_binaries.containerd), "--config", str(config)], env
        )
        self._await(
            "containerd", lambda: self.ctr("version", timeout=5).returncode == 0, timeout=30
        )
        return time.monotonic() - started

    def record_processes(self, processes: dict[str, subprocess.Popen[bytes]]) -> None:
        """Add processes started outside the node (the control plane) to the crash record,
        so that the next start stops them if this process dies without a teardown."""
        assert self.record is not None
        for name, proc in processes.items():
            self.record.pids[name] = [str(proc.pid), _proc_start_time(proc.pid) or ""]
        self.record.save()

    # -- helpers ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = self.workdir / f"{name}.log"
        try:
            proc = start_logged(argv, log, cwd=self.workdir, env=env)
        except OSError as exc:
            raise NodeError(f"cannot start {name} ({argv[0]}): {exc}") from exc
        self.processes[name] = proc
        assert self.record is not None
        self.record.pids[name] = [str(proc.pid), _proc_start_time(proc.pid) or ""]
        self.record.save()

    def _await(self, name: str, check: Any, timeout: float | None = None) -> None:
        await_process(
            name,
            self.processes[name],
            self.workdir / f"{name}.log",
            check,
            timeout=timeout or self.start_timeout,
            interval=0.1,
            error=NodeError,
        )

    def _write(self, relative: str, text: str) -> Path:
        path = self.workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # -- containerd ---------------------------------------------------------------------
    def _containerd_config(self) -> str:
        state = self.workdir / "containerd"
        runtime = '[plugins."io.containerd.cri.v1.runtime"'
        return f"""version = 3
root = "{containerd_root()}"
state = "{state / "state"}"
oom_score = 0

[grpc]
  address = "{self.containerd_address}"

[ttrpc]
  address = "{self.containerd_address}.ttrpc"

[debug]
  level = "warn"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{self.sandbox_image}"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    max_container_log_line_size = 16384
    {runtime}.containerd]
      default_runtime_name = "runc"
      {runtime}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        {runtime}.containerd.runtimes.runc.options]
          BinaryName = "{self.node_binaries.runc}"
          SystemdCgroup = false
          Root = "{state / "runc"}"
    {runtime}.cni]
      bin_dirs = ["{self.node_binaries.cni_bin_dir}"]
      conf_dir = "{self.workdir / "cni" / "net.d"}"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "{state / "opt"}"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
"""

    def _cni_config(self) -> str:
        conf = {
            "cniVersion": "1.0.0",
            "name": "kernelsession",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": hostnet.BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni" / "ipam"),
                        "ranges": [[{"subnet": hostnet.NODE_SUBNET, "gateway": hostnet.NODE_IP}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        return json.dumps(conf, indent=1)

    def _start_containerd(self) -> None:
        containerd_root().mkdir(parents=True, exist_ok=True)
        config = self._write("containerd/config.toml", self._containerd_config())
        self._write("cni/net.d/10-kernelsession.conflist", self._cni_config())
        assert self.record is not None
        self.record.containerd_config = str(config)
        self.record.containerd_address = str(self.containerd_address)
        env = dict(os.environ)
        env["PATH"] = f"{self.node_binaries.directory}:{env.get('PATH', '/usr/bin:/bin')}"
        self._spawn(
            "containerd", [str(self.node_binaries.containerd), "--config", str(config)], env
        )
        self._await(
            "containerd", lambda: self.ctr("version", timeout=5).returncode == 0, timeout=30
        )
        # a crashed run's containers (the root persists between runs)
        _kill_recorded(
            _containerd_cleanup(str(self.node_binaries.ctr), str(self.containerd_address))
        )

    def _import_images(self) -> None:
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        wanted = {ref for ref, _archive in self.images}
        # older builds of the project's images (their tags are content hashes)
        stale = [r for r in present - wanted if r.startswith("localhost/kernelsession/")]
        if stale:
            self.ctr("images", "rm", *stale)
            present -= set(stale)
        self._import_missing(self.images, present)

    def import_images(self, images: list[tuple[str, Path]]) -> None:
        """Import more (ref, OCI archive) pairs into the running containerd when missing
        (e.g. an optional image such as the ingress controller's); a later start keeps them.

        Raises:
            NodeError: an import failed.
        """
        for pair in images:
            if pair not in self.images:
                self.images.append(pair)
        self._import_missing(images, set(self.ctr("images", "ls", "-q").stdout.split()))

    def _import_missing(self, images: list[tuple[str, Path]], present: set[str]) -> None:
        for ref, archive in images:
            if ref in present:
                continue
            result = self.ctr("images", "import", "--local", str(archive), timeout=600)
            if result.returncode != 0 or ref not in self.ctr("images", "ls", "-q").stdout:
                raise NodeError(
                    f"importing {ref} from {archive} into containerd failed: "
                    f"{result.stderr.strip() or result.stdout.strip()}"
                )

    # -- kubelet --------------------------------------------------------------------------
    def _kubelet_config(self) -> str:
        self.kubelet_port = free_port()
        self.kubelet_healthz_port = free_port()
        sock = f"unix://{self.containerd_address}"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "containerRuntimeEndpoint": sock,
            "imageServiceEndpoint": sock,
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "address": hostnet.NODE_IP,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.kubelet_healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True, "cacheTTL": "30s"},
                "x509": {"clientCAFile": str(self.cp.ca_file)},
            },
            "authorization": {
                "mode": "Webhook",
                "webhook": {"cacheAuthorizedTTL": "30s", "cacheUnauthorizedTTL": "5s"},
            },
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "podLogsDir": str(self.kubelet_root / "pod-logs"),
            "volumePluginDir": str(self.kubelet_root / "volume-plugins"),
            "clusterDomain": CLUSTER_DOMAIN,
            "clusterDNS": [hostnet.DNS_SERVICE_IP],
            "resolvConf": "/etc/resolv.conf",
            "maxPods": self.max_pods,
            "registerNode": True,
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "imageMinimumGCAge": "24h",
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "20s",
            "runtimeRequestTimeout": "2m",
            "hairpinMode": "hairpin-veth",
            "protectKernelDefaults": False,
            # no CAP_SYS_RESOURCE here, and the open-files hard limit is 20000
            "oomScoreAdj": 0,
            "maxOpenFiles": 20000,
            "localStorageCapacityIsolation": True,
            "shutdownGracePeriod": "0s",
            "logging": {"format": "text"},
        }
        return yaml.safe_dump(config, sort_keys=False)

    def _node_ready(self) -> bool:
        result = self.cp_kubectl(
            "get",
            "node",
            NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        )
        return result.returncode == 0 and result.stdout.strip() == "True"

    def cp_kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        kubectl = self.binaries.kubectl
        assert kubectl is not None
        return subprocess.run(
            [str(kubectl), f"--kubeconfig={self.cp.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    def _start_kubelet(self) -> None:
        pki = self.cp.pki
        root = self.kubelet_root
        for sub in ("root", "pki", "pod-logs", "volume-plugins"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        config = self._write("kubelet/config.yaml", self._kubelet_config())
        kubeconfig = write_kubeconfig(
            root / "node.kubeconfig",
            server=self.cp.server,
            ca_file=pki.ca_cert,
            user=f"system:node:{NODE_NAME}",
            client_cert=pki.node_cert,
            client_key=pki.node_key,
        )
        env = dict(os.environ)
        env["PATH"] = f"{self.node_binaries.directory}:{env.get('PATH', '/usr/bin:/bin')}"
        self._spawn(
            "kubelet",
            [
                str(self.binaries.kubelet),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={hostnet.NODE_IP}",
                f"--root-dir={root / 'root'}",
                f"--cert-dir={root / 'pki'}",
                "--v=1",
            ],
            env,
        )
        self._await("kubelet", self._node_ready)

    # -- kube-proxy, CoreDNS, NetworkPolicy -------------------------------------------------
    def _start_kube_proxy(self) -> None:
        self.proxy_healthz_port = free_port()
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(self.cp.kubeconfig)},
            "mode": "iptables",
            "clusterCIDR": hostnet.POD_RANGE,
            "hostnameOverride": NODE_NAME,
            "bindAddress": "127.0.0.1",
            "healthzBindAddress": f"127.0.0.1:{self.proxy_healthz_port}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{hostnet.NODE_IP}/32"],
            # leave the host's conntrack tunables alone
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
            "iptables": {"localhostNodePorts": False},
        }
        path = self._write("kube-proxy/config.yaml", yaml.safe_dump(config, sort_keys=False))
        self._spawn("kube-proxy", [str(self.binaries.kube_proxy), f"--config={path}", "--v=1"])
        self._await(
            "kube-proxy",
            lambda: http_ok(f"http://127.0.0.1:{self.proxy_healthz_port}/healthz"),
            timeout=60,
        )

    def _start_coredns(self) -> None:
        self.dns_health_port = free_port()
        ip = hostnet.NODE_IP
        corefile = f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {ip}
    errors
    ready 127.0.0.1:{self.dns_health_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.cp.kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {ip}
    errors
    # nothing leaves this machine: names outside the cluster do not exist
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""
        path = self._write("coredns/Corefile", corefile)
        self._spawn("coredns", [str(self.node_binaries.coredns), "-conf", str(path)])
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
            },
            "spec": {
                "clusterIP": hostnet.DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            },
        }
        slice_ = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kube-dns-node",
                "namespace": "kube-system",
                "labels": {
                    "kubernetes.io/service-name": "kube-dns",
                    "endpointslice.kubernetes.io/managed-by": "kernelsession-localcluster",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
        }
        result = self.cp_kubectl("apply", "-f", "-", input=yaml.safe_dump_all([service, slice_]))
        if result.returncode != 0:
            raise NodeError(f"creating the kube-dns Service failed: {result.stderr}")
        self._await(
            "coredns",
            lambda: http_ok(f"http://127.0.0.1:{self.dns_health_port}/ready"),
            timeout=60,
        )

    def _start_local_path(self) -> None:
        storage = self.workdir / "local-path"
        storage.mkdir(parents=True, exist_ok=True)
        assert self.helper_image is not None
        objects = _local_path_objects(storage, self.helper_image)
        result = self.cp_kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        if result.returncode != 0:
            raise NodeError(f"installing the local-path StorageClass failed: {result.stderr}")
        self._spawn(
            "local-path",
            [
                str(self.node_binaries.local_path_provisioner),
                "start",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--namespace={LOCAL_PATH_NAMESPACE}",
                f"--helper-image={self.helper_image}",
            ],
        )
        log = self.workdir / "local-path.log"
        # it serves once it has read its config (it logs the provisioner's start)
        self._await(
            "local-path",
            lambda: "Starting provisioner controller" in log.read_text(errors="replace"),
            timeout=60,
        )

    def _start_netpol(self) -> None:
        ready = self.workdir / "netpol.ready"
        self._spawn(
            "netpol",
            [
                sys.executable,
                "-m",
                "kernelsession.localcluster.netpol",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--ready-file={ready}",
                f"--node-dns={hostnet.NODE_IP}",  # CoreDNS runs on the node, bound there
            ],
        )
        self._await("netpol", ready.exists, timeout=60)


LOCAL_PATH_NAMESPACE = "local-path-storage"
LOCAL_PATH_HELPER_POD = """apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  priorityClassName: system-node-critical
  tolerations:
  - {{key: node.kubernetes.io/disk-pressure, operator: Exists, effect: NoSchedule}}
  containers:
  - name: helper-pod
    image: {image}
    imagePullPolicy: IfNotPresent
"""


def _local_path_objects(storage_dir: Path, helper_image: str) -> list[dict[str, Any]]:
    """Namespace, helper service account, config and the default StorageClass of
    local-path-provisioner (as its upstream deploy/local-path-storage.yaml, minus the
    Deployment: the provisioner runs on the node as a process)."""
    config = {
        "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage_dir)]}]
    }
    ns = LOCAL_PATH_NAMESPACE
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "local-path-provisioner-service-account", "namespace": ns},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "local-path-config", "namespace": ns},
            "data": {
                "config.json": json.dumps(config),
                "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                "helperPod.yaml": LOCAL_PATH_HELPER_POD.format(image=helper_image),
            },
        },
        {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "local-path",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "rancher.io/local-path",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        },
    ]
