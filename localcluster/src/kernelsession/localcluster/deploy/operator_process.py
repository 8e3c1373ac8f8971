"""The operator on the local cluster, run as it runs in a real one.

``install_manifests`` applies the CRDs (``manifests/crds``), the namespaces and the RBAC
from ``manifests/``;
``OperatorProcess`` runs ``python -m kernelsession.operator`` as a local process
authenticated as the ``kernelsession-operator`` service account (a TokenRequest token),
so every request it makes is authorised by ``manifests/rbac.yaml`` and nothing more.
Labs are reached on their pod IPs (``KERNELSESSION_URL_MODE=pod-ip``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from kernelsession.client.resources import CRD_NAME, GROUP
from kernelsession.client.testing import free_port
from kernelsession.localcluster.building.gobuild import repo_root
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.processes import (
    log_tail,
    start_logged,
    stop_process,
    wait_until,
)

OPERATOR_NAMESPACE = "kernelsession-system"
OPERATOR_ACCOUNT = "kernelsession-operator"
LABS_NAMESPACE = "samples/labs-namespace.yaml"
"""The shared ``labs`` namespace, applied apart from ``manifests/`` (which leaves it on
``kubectl delete -k``), relative to ``manifests/``."""
CRD_NAMES = (CRD_NAME, f"labprofiles.{GROUP}")
"""Every CRD in ``manifests/crds`` (KernelSession, LabProfile)."""


def manifests_dir() -> Path:
    """``manifests/`` of the source checkout.

    Raises:
        FileNotFoundError: not running from a checkout.
    """
    root = repo_root()
    if root is None or not (root / "manifests" / "crds" / "kustomization.yaml").is_file():
        raise FileNotFoundError("manifests/ not found: run from a kernelsession checkout")
    return root / "manifests"


def install_crds(cluster: LocalCluster, directory: Path | None = None) -> None:
    """``kubectl apply -k manifests/crds`` (they install apart from the operator) and wait
    until every CRD is established.

    Raises:
        RuntimeError: the API server refused a CRD (the message is kubectl's).
        subprocess.CalledProcessError: kubectl failed waiting for them.
    """
    directory = directory or manifests_dir()
    crds = directory / "crds"
    applied = cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-k", str(crds), check=False
    )
    if applied.returncode != 0:
        raise RuntimeError(f"kubectl apply -k {crds}: {applied.stderr.strip()}")
    cluster.kubectl(
        "wait",
        "--for=condition=Established",
        *(f"crd/{name}" for name in CRD_NAMES),
        "--timeout=30s",
    )


def install_manifests(cluster: LocalCluster, directory: Path | None = None) -> None:
    """Apply the CRDs, namespaces, RBAC and the admission policies (not the Deployment)
    and wait for the CRDs.

    Raises:
        subprocess.CalledProcessError: kubectl failed (its stderr says why).
    """
    directory = directory or manifests_dir()
    install_crds(cluster, directory)
    for name in (LABS_NAMESPACE, "namespace.yaml", "rbac.yaml", "admission.yaml"):
        cluster.apply(directory / name)


class OperatorProcess:
    """One operator process as the operator's service account; stopped by PID."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        namespaces: str = "labs",
    ) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "operator.log"
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.kubeconfig = cluster.service_account_kubeconfig(
            OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, workdir / "operator.kubeconfig"
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "KUBECONFIG": str(self.kubeconfig),
            "KERNELSESSION_NAMESPACES": namespaces,
            "KERNELSESSION_URL_MODE": "pod-ip",
            "KERNELSESSION_HEALTH_PORT": str(self.health_port),
            "KERNELSESSION_METRICS_PORT": str(self.metrics_port),
            "KERNELSESSION_LOG_FORMAT": "json",
            # The local kubelet cannot switch users, so labs run as this (root) user.
            "KERNELSESSION_LAB_EXTRA_ARGS": (
                "--ServerApp.allow_root=True" if os.geteuid() == 0 else ""
            ),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 60.0) -> float:
        """Start the operator and wait until its liveness endpoint answers.

        Returns the seconds it took. Raises RuntimeError (with the log tail) when the
        process exits, TimeoutError when it does not become healthy in time.
        """
        self.starts += 1
        with open(self.log_path, "a") as log:
            log.write(f"--- start {self.starts} ---\n")
        self.proc = start_logged(
            [sys.executable, "-m", "kernelsession.operator"],
            self.log_path,
            env=self.env,
            cwd=self.workdir,
        )
        proc = self.proc

        def alive() -> str | None:
            if proc.poll() is None:
                return None
            return f"operator exited with {proc.returncode}:\n{log_tail(self.log_path)}"

        return wait_until(self._healthy, timeout=timeout, interval=0.1, alive=alive)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM by PID, then SIGKILL after ``grace``; returns the exit status."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, grace=grace)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL by PID (a crash, for fault tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self, timeout: float = 60.0) -> float:
        self.stop()
        return self.start(timeout)

    def metrics(self) -> str:
        """The Prometheus text exposition."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310
            return bytes(response.read()).decode()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
