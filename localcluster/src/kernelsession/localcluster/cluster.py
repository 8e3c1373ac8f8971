"""``LocalCluster``: a real control plane plus the local kubelet, as one context manager.

    with LocalCluster() as cluster:
        cluster.kubectl("get", "nodes")
        print(cluster.kubeconfig)   # admin kubeconfig file

The kubelet runs as its own process (``python -m kernelsession.localcluster.kubelet``),
stopped by PID like the control-plane components. Pods get loopback IPs from a random
``127.N.0.0/16`` (see :mod:`.kubelet` for what the local kubelet does and does not do).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .binaries import Binaries, ensure
from .controlplane import ControlPlane, ControlPlaneError, Timings, write_kubeconfig
from .kubelet import default_pod_network
from .processes import log_tail, start_logged, stop_process, wait_until

NODE_NAME = "local-node"


@dataclass
class ClusterTimings:
    """Startup seconds: control-plane steps, kubelet, and total."""

    controlplane: Timings
    kubelet: float = 0.0
    total: float = 0.0

    def summary(self) -> str:
        """One line, e.g. for logs and reports."""
        cp = self.controlplane
        return (
            f"cluster up in {self.total:.1f}s (pki {cp.pki:.2f}s, etcd {cp.etcd:.2f}s, "
            f"apiserver {cp.apiserver:.2f}s, controller-manager {cp.controller_manager:.2f}s, "
            f"kubelet {self.kubelet:.2f}s)"
        )


class LocalCluster:
    """Control plane + local kubelet on this machine (sync; a context manager)."""

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        pod_network: str | None = None,
        start_timeout: float = 60.0,
        kubelet_args: tuple[str, ...] = (),
        audit: bool = False,
    ) -> None:
        """``audit=True`` turns on the API server's audit log (Metadata level, every
        request; see :attr:`audit_log` and :mod:`.audit`)."""
        self._binaries = binaries
        self.audit = audit
        self._given_workdir = workdir
        self.pod_network = pod_network or default_pod_network()
        self.start_timeout = start_timeout
        self.kubelet_args = kubelet_args
        self.workdir: Path | None = None
        self.controlplane: ControlPlane | None = None
        self._kubelet: subprocess.Popen[bytes] | None = None
        self.timings: ClusterTimings | None = None

    # -- properties -------------------------------------------------------------------
    def _cp(self) -> ControlPlane:
        if self.controlplane is None:
            raise RuntimeError("cluster not started")
        return self.controlplane

    @property
    def binaries(self) -> Binaries:
        """The control-plane binaries (found or built on first use)."""
        if self._binaries is None:
            self._binaries = ensure()
        return self._binaries

    @property
    def kubeconfig(self) -> Path:
        """Absolute path of the admin kubeconfig (system:masters client certificate)."""
        return self._cp().kubeconfig

    @property
    def server(self) -> str:
        """The API server URL (https://127.0.0.1:PORT)."""
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
    def kubelet_pid(self) -> int | None:
        """PID of the kubelet process (None when not running)."""
        return self._kubelet.pid if self._kubelet is not None else None

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's state dir; pods live under ``pods/<ns>_<name>_<uid>/``."""
        if self.workdir is None:
            raise RuntimeError("cluster not started")
        return self.workdir / "kubelet"

    @property
    def node_name(self) -> str:
        """The single node's name."""
        return NODE_NAME

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
        """Start the control plane and the kubelet; wait until the node serves pods.

        Stops everything again when any step fails or is interrupted.

        Raises:
            BinariesUnavailableError: the binaries are missing and cannot be built.
            ControlPlaneError: a component (or the kubelet) failed to become ready.
        """
        binaries = self.binaries
        t0 = time.monotonic()
        try:
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
            )
            cp_timings = self.controlplane.start()
            t = time.monotonic()
            self._start_kubelet()
            self.timings = ClusterTimings(
                controlplane=cp_timings,
                kubelet=time.monotonic() - t,
                total=time.monotonic() - t0,
            )
        except BaseException:
            self.stop()
            raise
        return self.timings

    def _start_kubelet(self) -> None:
        root = self.kubelet_root
        root.mkdir(parents=True, exist_ok=True)
        ready = root / "ready"
        ready.unlink(missing_ok=True)
        log = root / "kubelet.log"
        argv = [
            sys.executable,
            "-m",
            "kernelsession.localcluster.kubelet",
            f"--kubeconfig={self.kubeconfig}",
            f"--node-name={NODE_NAME}",
            f"--root={root}",
            f"--pod-network={self.pod_network}",
            f"--ready-file={ready}",
            *self.kubelet_args,
        ]
        self._kubelet = start_logged(argv, log, cwd=root)
        proc = self._kubelet

        def alive() -> str | None:
            if proc.poll() is not None:
                return f"kubelet exited with status {proc.returncode}"
            return None

        try:
            wait_until(ready.exists, timeout=self.start_timeout, alive=alive)
        except (TimeoutError, RuntimeError) as exc:
            raise ControlPlaneError(
                f"kubelet did not become ready: {exc}\n--- tail of {log} ---\n{log_tail(log)}"
            ) from exc

    def stop(self) -> None:
        """Stop the kubelet (which stops its pods' processes), then the control plane, by
        PID; remove the work directory. Safe to call twice and after a failed start."""
        if self._kubelet is not None:
            stop_process(self._kubelet, grace=20)
            self._kubelet = None
        if self.controlplane is not None:
            self.controlplane.stop()
            self.controlplane = None
        if self.workdir is not None and self._given_workdir is None:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def restart_apiserver(self, *, grace: float = 3.0) -> float:
        """Restart kube-apiserver (same port, certs, etcd): SIGTERM, ``grace`` seconds,
        SIGKILL, start. Returns the seconds until ready again (stop included).

        Raises ControlPlaneError when it does not come back.
        """
        t = time.monotonic()
        self._cp().restart_apiserver(grace=grace)
        return time.monotonic() - t

    def restart_kubelet(self) -> None:
        """Stop the kubelet process (its pods' processes stop too) and start a new one,
        which restarts the pods bound to the node. Raises ControlPlaneError."""
        if self._kubelet is not None:
            stop_process(self._kubelet, grace=20)
            self._kubelet = None
        self._start_kubelet()

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

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        """The local directory of a running pod (HOME, logs), or None."""
        matches = sorted((self.kubelet_root / "pods").glob(f"{namespace}_{name}_*"))
        return matches[-1] if matches else None

    def pod_logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """The latest run's output of a pod's container (first container by default).
        '' when there is none (``kubectl logs`` does not work with the local kubelet)."""
        pod_dir = self.pod_dir(namespace, name)
        if pod_dir is None:
            return ""
        dirs = [d for d in pod_dir.iterdir() if d.is_dir() and d.name != "home"]
        if container is not None:
            dirs = [d for d in dirs if d.name == container]
        if not dirs:
            return ""
        logs = sorted(dirs[0].glob("*.log"), key=lambda p: int(p.stem))
        return logs[-1].read_text(errors="replace") if logs else ""
