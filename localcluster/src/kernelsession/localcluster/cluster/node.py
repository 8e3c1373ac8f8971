"""The real node: containerd + runc, the kubelet, kube-proxy, CoreDNS and the NetworkPolicy
enforcer, on this machine's kernel.

One node per machine: the kubelet's ports, its cgroups (``kubepods``), iptables chains
and a few host paths are global. :class:`NodeLock` takes ``/run/kernelsession/node.lock``
(a second start fails with :class:`NodeBusyError` naming the running one) and keeps a
record (``node.json`` beside it, :mod:`kernelsession.localcluster.host.crash`) of what was
started and how the host looked before, so that the next start after a crash (SIGKILL,
power cut of the process tree) removes what the crashed run left: ``cleanup_crashed``.

Teardown (:meth:`Node.stop`, also after a failed start) stops the kubelet, kills and
removes every container through containerd, stops the daemons by PID, runs
``kube-proxy --cleanup``, removes the kubelet's and the enforcer's iptables chains (and
the enforcer's jumps from FORWARD and INPUT),
unmounts what is under the work directories, removes the ``kubepods`` cgroups, the
bridge and routes, host paths that did not exist before, and restores the sysctls.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from kernelsession.client.testing import free_port
from kernelsession.localcluster.building.binaries import Binaries, NodeBinaries
from kernelsession.localcluster.building.images import ImagesUnavailableError, import_archives
from kernelsession.localcluster.cluster import addons
from kernelsession.localcluster.cluster.controlplane import (
    ControlPlane,
    ControlPlaneError,
    write_kubeconfig,
)
from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host import state as hoststate
from kernelsession.localcluster.host.crash import (
    CONTAINERD_NAMESPACE,
    LOCK_FILE,
    RECORD_FILE,
    RUN_DIR,
    NodeRecord,
    cleanup_crashed,
    containerd_cleanup,
    finish_host_cleanup,
    kill_recorded,
    proc_start_time,
    run_captured,
    shared_chains,
)
from kernelsession.localcluster.processes import (
    ProcessGroup,
    http_ok,
)

NODE_NAME = "local-node"
CLUSTER_DOMAIN = "cluster.local"


class NodeError(ControlPlaneError):
    """A node component failed to start or become ready."""


class NodeBusyError(NodeError):
    """Another kernelsession node runs on this machine."""


def containerd_root() -> Path:
    """containerd's content and snapshot store: kept between runs (images are imported
    once), under the cache like the binaries."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession" / "node" / "containerd-root"


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
        #: The node's daemons, started in order, each recorded for the crash cleanup.
        self.processes = ProcessGroup(
            lambda: self.workdir,
            error=NodeError,
            start_timeout=start_timeout,
            interval=0.1,
            on_start=self.record_process,
        )
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
        return run_captured(
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
        return self.processes.pids()

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
            if hostnet.bridge_exists():
                raise NodeError(
                    f"a network interface named {hostnet.BRIDGE} exists and no crashed node "
                    "left a record of it: it is not this node's. Remove it if it is a "
                    f"leftover (`ip link del {hostnet.BRIDGE}`), then start again."
                )
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
                routes_before=hostnet.routes_before(),
                chains_before=shared_chains(),
            )
            self.record.save()
            try:
                hostnet.setup()
            except hostnet.HostNetworkError as exc:
                raise NodeError(str(exc)) from exc
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
        # pods reach CoreDNS and the API server of the node, nothing else of it; the guards
        # go back ahead of the jumps kube-proxy and the kubelet put first
        hostnet.guard_node_input(self.cp.apiserver_port)
        hostnet.keep_guards_first()
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
        self.stop_daemons()
        containerd = self.processes.get("containerd")
        if containerd is not None and containerd.poll() is None:
            shims = containerd_cleanup(str(self.node_binaries.ctr), str(self.containerd_address))
            self.processes.stop("containerd")
            kill_recorded(shims)
        self.processes.stop_all()
        problems = finish_host_cleanup(self.record)
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
        self.processes.stop(name, grace=grace)
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

    def stop_daemons(self) -> None:
        """Stop every daemon but containerd, in reverse start order (the kubelet last of
        them); :meth:`stop` then stops containerd with its containers and cleans the host."""
        self.processes.stop_all(keep=("containerd",))

    def record_process(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Add a process to the crash record (the node's daemons, and the control plane's
        components through its ``processes.on_start``), so that the next start stops it
        if this process dies without a teardown."""
        assert self.record is not None
        self.record.pids[name] = [str(proc.pid), proc_start_time(proc.pid) or ""]
        self.record.save()

    # -- helpers ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.spawn(name, argv, env=env)

    def _await(self, name: str, check: Any, timeout: float | None = None) -> None:
        self.processes.await_ready(name, check, timeout)

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
                # no IPv6 in pods: no link-local path between pods around the IPv4 rules
                {
                    "type": "tuning",
                    "sysctl": {
                        "net.ipv6.conf.all.disable_ipv6": "1",
                        "net.ipv6.conf.default.disable_ipv6": "1",
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
        kill_recorded(containerd_cleanup(str(self.node_binaries.ctr), str(self.containerd_address)))

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
        try:
            import_archives(
                images,
                self.node_binaries.ctr,
                self.containerd_address,
                CONTAINERD_NAMESPACE,
                local=True,
                present=present,
            )
        except ImagesUnavailableError as exc:
            raise NodeError(f"importing images into containerd failed: {exc}") from None

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
        corefile = addons.corefile(CLUSTER_DOMAIN, ip, self.dns_health_port, self.cp.kubeconfig)
        path = self._write("coredns/Corefile", corefile)
        self._spawn("coredns", [str(self.node_binaries.coredns), "-conf", str(path)])
        result = self.cp_kubectl(
            "apply", "-f", "-", input=yaml.safe_dump_all(addons.kube_dns_objects(ip))
        )
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
        objects = addons.local_path_objects(storage, self.helper_image)
        result = self.cp_kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
        if result.returncode != 0:
            raise NodeError(f"installing the local-path StorageClass failed: {result.stderr}")
        self._spawn(
            "local-path",
            [
                str(self.node_binaries.local_path_provisioner),
                "start",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--namespace={addons.LOCAL_PATH_NAMESPACE}",
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

    def restart_netpol(self) -> None:
        """Start the NetworkPolicy enforcer again (after it exited or was killed) and wait
        until it has applied the cluster's policies. Raises NodeError."""
        self.processes.stop("netpol")
        self._start_netpol()

    def _start_netpol(self) -> None:
        ready = self.workdir / "netpol.ready"
        ready.unlink(missing_ok=True)
        self._spawn(
            "netpol",
            [
                sys.executable,
                "-m",
                "kernelsession.localcluster.host.netpol",
                f"--kubeconfig={self.cp.kubeconfig}",
                f"--ready-file={ready}",
                f"--node-dns={hostnet.NODE_IP}",  # CoreDNS runs on the node, bound there
                f"--pod-subnet={hostnet.NODE_SUBNET}",  # pods it does not know: dropped
            ],
        )
        self._await("netpol", ready.exists, timeout=60)
