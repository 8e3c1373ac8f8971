"""``LocalCluster``: a real single-node Kubernetes on this machine, as one context manager.

    with LocalCluster() as cluster:
        cluster.kubectl("get", "nodes")
        print(cluster.kubeconfig)   # admin kubeconfig file

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (:mod:`.controlplane`),
then the node (:mod:`.node`): containerd + runc, the kubelet, kube-proxy, CoreDNS and the
NetworkPolicy enforcer, with pods on the bridge ``ks0`` (``10.244.0.0/24``) and images
built by ``make images`` (:mod:`.images`). The API server listens on the node IP so pods
reach it through the ``kubernetes`` Service. Every process is stopped by PID and the host
is left as it was (:mod:`.hoststate` checks it).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import yaml

from kernelsession.localcluster.building.binaries import Binaries, ensure
from kernelsession.localcluster.building.nodebinaries import NodeBinaries, ensure_node
from kernelsession.localcluster.cluster.controlplane import ControlPlane, Timings, write_kubeconfig
from kernelsession.localcluster.cluster.node import Node, NodeTimings
from kernelsession.localcluster.cluster.nodeconfig import NODE_NAME
from kernelsession.localcluster.host import network as hostnet

if TYPE_CHECKING:
    from kernelsession.localcluster.building.images import Image


@dataclass
class ClusterTimings:
    """Startup seconds: control-plane steps, node steps, and total."""

    controlplane: Timings
    node: NodeTimings
    total: float = 0.0

    def summary(self) -> str:
        """One line, e.g. for logs and reports."""
        cp, node = self.controlplane, self.node
        return (
            f"cluster up in {self.total:.1f}s (pki {cp.pki:.2f}s, etcd {cp.etcd:.2f}s, "
            f"apiserver {cp.apiserver:.2f}s, controller-manager {cp.controller_manager:.2f}s, "
            f"scheduler {cp.scheduler:.2f}s, containerd {node.containerd:.2f}s, images "
            f"{node.images:.2f}s, kubelet to node Ready {node.kubelet:.2f}s, kube-proxy + "
            f"CoreDNS + NetworkPolicy {node.addons:.2f}s)"
        )


def default_images(*, ingress: bool = False) -> tuple[list[tuple[str, Path]], str, dict[str, str]]:
    """(ref, archive) pairs to import, the pause image ref, and refs by role
    (``pause``, ``lab``, ``operator``...), from ``make images``.

    ``ingress=True`` adds the optional ingress controller's image (``traefik``, see
    :mod:`.ingress`), building the Traefik binary first if needed; otherwise it is
    imported only when :func:`.ingress.install_ingress` asks for it."""
    from kernelsession.localcluster.building.images import ensure_images, ensure_ingress_image

    images = ensure_images(log=True)
    chosen = [*images.all(), *([ensure_ingress_image(log=True)] if ingress else [])]
    refs = {image.name: image.ref for image in chosen}
    pairs = [(image.ref, image.archive) for image in chosen]  # base: helper pods
    return pairs, images.pause.ref, refs


class LocalCluster:
    """A real control plane + a real node on this machine (sync; a context manager)."""

    real_node = True

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        start_timeout: float = 120.0,
        audit: bool = False,
        images: tuple[list[tuple[str, Path]], str, dict[str, str]] | None = None,
    ) -> None:
        """``audit=True`` turns on the API server's audit log (Metadata level, every
        request; see :attr:`audit_log` and :mod:`.audit`). ``images``: as
        :func:`default_images` returns (the default builds them with ``make images``)."""
        self._binaries = binaries
        self._images = images
        self.audit = audit
        self._given_workdir = workdir
        self.start_timeout = start_timeout
        self.workdir: Path | None = None
        self.controlplane: ControlPlane | None = None
        self.node: Node | None = None
        self.timings: ClusterTimings | None = None
        self.image_refs: dict[str, str] = {}

    # -- properties -------------------------------------------------------------------
    def _cp(self) -> ControlPlane:
        if self.controlplane is None:
            raise RuntimeError("cluster not started")
        return self.controlplane

    @property
    def binaries(self) -> Binaries:
        """The Kubernetes binaries (found or built on first use)."""
        if self._binaries is None:
            self._binaries = ensure()
        return self._binaries

    @property
    def kubeconfig(self) -> Path:
        """Absolute path of the admin kubeconfig (system:masters client certificate)."""
        return self._cp().kubeconfig

    @property
    def server(self) -> str:
        """The API server URL (https://NODE_IP:PORT)."""
        return self._cp().server

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate file."""
        return self._cp().ca_file

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (JSON lines), None unless started with audit=True."""
        return self._cp().audit_log

    @property
    def node_name(self) -> str:
        """The single node's name."""
        return NODE_NAME

    @property
    def node_ip(self) -> str:
        """The node's IP (on the bridge; the API server and the kubelet listen on it)."""
        return hostnet.NODE_IP

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ClusterTimings:
        """Start the control plane and the node; wait until the node is Ready and DNS,
        kube-proxy and the NetworkPolicy enforcer serve.

        Stops everything again when any step fails or is interrupted.

        Raises:
            BinariesUnavailableError: binaries are missing and cannot be built.
            ImagesUnavailableError: the images cannot be built.
            NodeBusyError: another node runs on this machine.
            ControlPlaneError: a component failed to become ready (NodeError for the node).
        """
        binaries = self.binaries
        node_binaries: NodeBinaries = ensure_node()
        images, pause, self.image_refs = self._images or default_images()
        t0 = time.monotonic()
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._given_workdir
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="ks-cluster-"))
        self.controlplane = ControlPlane(
            binaries=binaries,
            workdir=self.workdir / "controlplane",
            start_timeout=self.start_timeout,
            audit=self.audit,
            bind_address=hostnet.NODE_IP,
            node_name=NODE_NAME,
        )
        self.node = Node(
            self.controlplane,
            binaries,
            node_binaries,
            self.workdir / "node",
            images=images,
            sandbox_image=pause,
            helper_image=self.image_refs.get("base"),
            start_timeout=self.start_timeout,
        )
        try:
            self.node.prepare_host()
        except BaseException:
            self.node = None
            self.stop()
            raise
        try:
            # the control plane's components go into the node's crash record as they start
            self.controlplane.processes.on_start = self.node.record_process
            cp_timings = self.controlplane.start()
            node_timings = self.node.start()
            self.timings = ClusterTimings(
                controlplane=cp_timings, node=node_timings, total=time.monotonic() - t0
            )
        except BaseException:
            self.stop()
            raise
        return self.timings

    def stop(self) -> list[str]:
        """Stop the node (its containers, daemons and host changes) and the control plane,
        by PID; remove the work directory. Returns what could not be restored on the host
        ([] normally). Safe to call twice and after a failed start."""
        problems: list[str] = []
        node, self.node = self.node, None
        if node is not None:
            # the node's daemons first (no new containers), then the control plane, then
            # containerd and the host
            node.stop_daemons()
        if self.controlplane is not None:
            self.controlplane.stop()
            self.controlplane = None
        if node is not None:
            problems = node.stop()
        if self.workdir is not None and self._given_workdir is None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None
        return problems

    def restart_apiserver(self, *, grace: float = 3.0) -> float:
        """Restart kube-apiserver (same port, certs, etcd): SIGTERM, ``grace`` seconds,
        SIGKILL, start. Returns the seconds until ready again (stop included).

        Raises ControlPlaneError when it does not come back.
        """
        t = time.monotonic()
        self._cp().restart_apiserver(grace=grace)  # recorded by processes.on_start
        return time.monotonic() - t

    def import_images(self, images: Iterable[Image]) -> list[str]:
        """Import images (e.g. :func:`.images.ensure_ingress_image`) into the running node's
        containerd when missing and add them to :attr:`image_refs` by name. Returns their
        refs.

        Raises:
            RuntimeError: the cluster is not started.
            NodeError: an import failed.
        """
        if self.node is None:
            raise RuntimeError("cluster not started")
        chosen = list(images)
        self.node.import_images([(image.ref, image.archive) for image in chosen])
        self.image_refs.update({image.name: image.ref for image in chosen})
        return [image.ref for image in chosen]

    # -- conveniences -----------------------------------------------------------------
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl with the admin kubeconfig (or ``kubeconfig``, e.g. a
        service account's).

        Raises subprocess.CalledProcessError (with stderr in the message) when ``check``
        and it fails; RuntimeError when no kubectl is available.
        """
        kubectl = self.binaries.kubectl
        if kubectl is None:
            raise RuntimeError("no kubectl binary (build it with `make binaries`)")
        result = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(
                result.returncode,
                result.args,
                result.stdout,
                f"kubectl {' '.join(args)} failed: {result.stderr}",
            )
        return result

    def apply(self, manifest: str | Path | list[dict[str, Any]]) -> str:
        """``kubectl apply --server-side`` a file, a YAML string, or a list of objects.

        Returns kubectl's output. Raises subprocess.CalledProcessError on failure.
        """
        if isinstance(manifest, Path):
            text = manifest.read_text()
        elif isinstance(manifest, list):
            text = yaml.safe_dump_all(manifest)
        else:
            text = manifest
        result = self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)
        return result.stdout

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, expiration_seconds: int = 86400 * 7
    ) -> Path:
        """Create the ServiceAccount if missing, request a token for it (TokenRequest,
        long expiry) and write a kubeconfig for it to ``path``. Returns the absolute path.

        Raises subprocess.CalledProcessError when kubectl fails.
        """
        self.kubectl("create", "namespace", namespace, check=False)
        self.kubectl("-n", namespace, "create", "serviceaccount", name, check=False)
        token = self.kubectl(
            "-n", namespace, "create", "token", name, f"--duration={expiration_seconds}s"
        ).stdout.strip()
        return write_kubeconfig(
            path,
            server=self.server,
            ca_file=self.ca_file,
            user=f"system:serviceaccount:{namespace}:{name}",
            token=token,
            namespace=namespace,
        )

    def get_json(self, *args: str) -> Any:
        """``kubectl get ARGS -o json`` decoded. Raises CalledProcessError."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """``kubectl logs`` of a pod's container ('' when there is none yet)."""
        args = ["-n", namespace, "logs", name]
        if container is not None:
            args += ["-c", container]
        return self.kubectl(*args, check=False).stdout
