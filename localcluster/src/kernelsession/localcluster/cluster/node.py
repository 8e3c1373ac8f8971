"""The real node: containerd + runc, the kubelet, kube-proxy, CoreDNS and the NetworkPolicy
enforcer, on this machine's kernel.

One node per machine: :mod:`.nodehost` has the lock, the crash record (every daemon is
recorded as it starts) and the host's preparation and restoration; :mod:`.nodeconfig`
renders the daemons' configuration files; :mod:`.addons` has CoreDNS's and local-path's
objects. This module starts, restarts and stops the daemons.

Teardown (:meth:`Node.stop`, also after a failed start) stops the kubelet, kills and
removes every container through containerd, stops the daemons by PID, runs
``kube-proxy --cleanup``, removes the kubelet's and the enforcer's iptables chains (and
the enforcer's jumps from FORWARD and INPUT),
unmounts what is under the work directories, removes the ``kubepods`` cgroups, the
bridge and routes, host paths that did not exist before, and restores the sysctls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kernelsession.client.testing import free_port
from kernelsession.localcluster.building.binaries import Binaries
from kernelsession.localcluster.building.images import ImagesUnavailableError, import_archives
from kernelsession.localcluster.building.nodebinaries import NodeBinaries
from kernelsession.localcluster.cluster import addons, nodeconfig, nodehost
from kernelsession.localcluster.cluster.controlplane import ControlPlane, write_kubeconfig
from kernelsession.localcluster.cluster.nodeconfig import CLUSTER_DOMAIN, NODE_NAME
from kernelsession.localcluster.cluster.nodehost import NodeError, NodeLock, containerd_root
from kernelsession.localcluster.host import network as hostnet
from kernelsession.localcluster.host.crash import (
    CONTAINERD_NAMESPACE,
    NodeRecord,
    containerd_cleanup,
    kill_recorded,
    run_captured,
)
from kernelsession.localcluster.processes import (
    ProcessGroup,
    http_ok,
)


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
        nodehost.require_root()
        self.lock.acquire()
        try:
            self.record = nodehost.prepare(self.workdir, self.binaries, self.node_binaries)
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
        problems = nodehost.restore(self.record)
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
        else:
            self._run_containerd(self.workdir / "containerd" / "config.toml")
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
        nodehost.record_process(self.record, name, proc)

    # -- helpers ----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.spawn(name, argv, env=env)

    def _await(self, name: str, check: Any, timeout: float | None = None) -> None:
        self.processes.await_ready(name, check, timeout)

    def _env(self) -> dict[str, str]:
        """This process's environment with the node's binaries first on PATH."""
        env = dict(os.environ)
        env["PATH"] = f"{self.node_binaries.directory}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def _write(self, relative: str, text: str) -> Path:
        path = self.workdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # -- containerd ---------------------------------------------------------------------
    def _start_containerd(self) -> None:
        containerd_root().mkdir(parents=True, exist_ok=True)
        state = self.workdir / "containerd"
        config = self._write(
            "containerd/config.toml",
            nodeconfig.containerd_config(
                root=containerd_root(),
                state=state,
                address=self.containerd_address,
                sandbox_image=self.sandbox_image,
                runc=self.node_binaries.runc,
                cni_bin_dir=self.node_binaries.cni_bin_dir,
                cni_conf_dir=self.workdir / "cni" / "net.d",
            ),
        )
        self._write(
            "cni/net.d/10-kernelsession.conflist",
            nodeconfig.cni_config(self.workdir / "cni" / "ipam"),
        )
        assert self.record is not None
        self.record.containerd_config = str(config)
        self.record.containerd_address = str(self.containerd_address)
        self._run_containerd(config)
        # a crashed run's containers (the root persists between runs)
        kill_recorded(containerd_cleanup(str(self.node_binaries.ctr), str(self.containerd_address)))

    def _run_containerd(self, config: Path) -> None:
        """Start containerd with ``config`` and wait until ``ctr`` reaches it."""
        self._spawn(
            "containerd", [str(self.node_binaries.containerd), "--config", str(config)], self._env()
        )
        self._await(
            "containerd", lambda: self.ctr("version", timeout=5).returncode == 0, timeout=30
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
        self.kubelet_port = free_port()
        self.kubelet_healthz_port = free_port()
        config = self._write(
            "kubelet/config.yaml",
            nodeconfig.kubelet_config(
                containerd_address=self.containerd_address,
                port=self.kubelet_port,
                healthz_port=self.kubelet_healthz_port,
                ca_file=self.cp.ca_file,
                kubelet_root=root,
                max_pods=self.max_pods,
            ),
        )
        kubeconfig = write_kubeconfig(
            root / "node.kubeconfig",
            server=self.cp.server,
            ca_file=pki.ca_cert,
            user=f"system:node:{NODE_NAME}",
            client_cert=pki.node_cert,
            client_key=pki.node_key,
        )
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
            self._env(),
        )
        self._await("kubelet", self._node_ready)

    # -- kube-proxy, CoreDNS, NetworkPolicy -------------------------------------------------
    def _start_kube_proxy(self) -> None:
        self.proxy_healthz_port = free_port()
        config = nodeconfig.kube_proxy_config(
            kubeconfig=self.cp.kubeconfig,
            healthz_port=self.proxy_healthz_port,
            metrics_port=free_port(),
        )
        path = self._write("kube-proxy/config.yaml", config)
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
