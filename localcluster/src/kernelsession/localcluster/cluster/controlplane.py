"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager).

Synchronous and subprocess-based. ``ControlPlane.start()`` generates credentials
(:mod:`.pki`), starts etcd and kube-apiserver on free loopback ports in a temporary
work directory, waits for ``/readyz``, writes an admin kubeconfig file, then starts
kube-controller-manager (garbage collector, namespace, service-account and token
controllers, deployments/replicasets/jobs) and waits for its ``/healthz``.

etcd serves TLS only and requires a client certificate of its own CA (the API server's),
on its client and its peer port, as kubeadm sets it up. The API server allows no
privileged container (``--allow-privileged=false``): nothing of the cluster needs one.

Every process runs in its own session and is stopped by PID (SIGTERM, grace, SIGKILL);
``stop()`` also removes the work directory. A failed or interrupted ``start()`` stops
whatever it had started before re-raising. Each component logs to ``<workdir>/<name>.log``;
startup failures include the tail of the failing component's log.
"""

from __future__ import annotations

import base64
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import yaml

from kernelsession.client.testing import free_port
from kernelsession.localcluster.building.binaries import Binaries, ensure
from kernelsession.localcluster.cluster.pki import ClusterPKI
from kernelsession.localcluster.cluster.pki import generate as generate_pki
from kernelsession.localcluster.processes import ProcessGroup, http_ok

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
POD_CIDR = "10.244.0.0/16"
# Every controller that is on by default (endpoint slices for Services and CoreDNS, PV
# binding for home volumes, disruption budgets, node IPAM for the node's podCIDR...).
CONTROLLERS = ("*",)
# Added to the API server's default admission plugins. OwnerReferencesPermissionEnforcement
# makes setting ``blockOwnerDeletion`` on a child require ``update`` on the owner's
# ``finalizers`` subresource, as OpenShift and hardened clusters do, so RBAC tests see it.
ADMISSION_PLUGINS = ("OwnerReferencesPermissionEnforcement",)
# Opt-in audit policy: who did what to which resource (no bodies), one JSON line per
# request when the response is complete (or for watches, when they start).
AUDIT_LOG_MAX_MB = 1_000_000
"""The audit log is never rotated during a run (a run's log lives in its work dir)."""
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ControlPlaneError(RuntimeError):
    """A control-plane component failed to start or become ready."""


@dataclass
class Timings:
    """Seconds spent in each startup step."""

    pki: float = 0.0
    etcd: float = 0.0
    apiserver: float = 0.0
    controller_manager: float = 0.0
    scheduler: float = 0.0
    total: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_file: Path,
    user: str,
    token: str | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    namespace: str = "default",
) -> Path:
    """Write a single-context kubeconfig with embedded CA and credentials; return its path.

    Raises OSError when the file cannot be written.
    """

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    user_entry: dict[str, str] = {}
    if token is not None:
        user_entry["token"] = token
    if client_cert is not None and client_key is not None:
        user_entry["client-certificate-data"] = b64(client_cert)
        user_entry["client-key-data"] = b64(client_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kernelsession-local",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_file)},
            }
        ],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [
            {
                "name": f"{user}@kernelsession-local",
                "context": {"cluster": "kernelsession-local", "user": user, "namespace": namespace},
            }
        ],
        "current-context": f"{user}@kernelsession-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path.resolve()


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback; a context manager."""

    def __init__(
        self,
        *,
        binaries: Binaries | None = None,
        workdir: Path | None = None,
        start_timeout: float = 60.0,
        controllers: tuple[str, ...] = CONTROLLERS,
        audit: bool = False,
        admission_plugins: tuple[str, ...] = ADMISSION_PLUGINS,
        bind_address: str = "127.0.0.1",
        node_name: str = "local-node",
    ) -> None:
        """``bind_address``: where kube-apiserver listens and what it advertises (the node
        IP, so that pods reach it through the ``kubernetes`` Service)."""
        self._binaries = binaries
        self.bind_address = bind_address
        self.node_name = node_name
        self.audit = audit
        self.admission_plugins = admission_plugins
        self._given_workdir = workdir
        self.start_timeout = start_timeout
        self.controllers = controllers
        self.workdir: Path | None = None
        #: The components, started in order; ``processes.on_start`` records each one.
        self.processes = ProcessGroup(
            self._work, error=ControlPlaneError, start_timeout=start_timeout
        )
        self.timings = Timings()
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.kcm_port = 0
        self._pki: ClusterPKI | None = None
        self._kubeconfig: Path | None = None

    # -- properties -------------------------------------------------------------------
    @property
    def binaries(self) -> Binaries:
        """The binaries in use (found or built on first access; may raise
        BinariesUnavailableError)."""
        if self._binaries is None:
            self._binaries = ensure()
        return self._binaries

    @property
    def server(self) -> str:
        """The API server URL."""
        return f"https://{self.bind_address}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        """etcd's client URL (TLS; a client certificate of the etcd CA is required)."""
        return f"https://127.0.0.1:{self.etcd_port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (RuntimeError before start)."""
        if self._kubeconfig is None:
            raise RuntimeError("control plane not started")
        return self._kubeconfig

    @property
    def ca_file(self) -> Path:
        """The cluster CA certificate (RuntimeError before start)."""
        return self._require_pki().ca_cert

    @property
    def pki(self) -> ClusterPKI:
        """The generated credentials (RuntimeError before start)."""
        return self._require_pki()

    def _require_pki(self) -> ClusterPKI:
        if self._pki is None:
            raise RuntimeError("control plane not started")
        return self._pki

    @property
    def audit_log(self) -> Path | None:
        """The API server's audit log (JSON lines), or None when audit is off."""
        if not self.audit or self.workdir is None:
            return None
        return self.workdir / "audit.log"

    def _work(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("control plane not started")
        return self.workdir

    # -- lifecycle --------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Timings:
        """Start etcd, kube-apiserver and kube-controller-manager and wait until ready.

        Returns the startup timings. On any failure (including KeyboardInterrupt) all
        started processes are stopped and the work directory removed before re-raising.

        Raises:
            BinariesUnavailableError: the binaries are missing and cannot be built.
            ControlPlaneError: a component exited or was not ready before the deadline.
        """
        binaries = self.binaries
        t0 = time.monotonic()
        try:
            if self._given_workdir is not None:
                self._given_workdir.mkdir(parents=True, exist_ok=True)
                self.workdir = self._given_workdir
            else:
                self.workdir = Path(tempfile.mkdtemp(prefix="ks-controlplane-"))
            t = time.monotonic()
            self._pki = generate_pki(
                self.workdir / "pki",
                service_ip=SERVICE_IP,
                node_name=self.node_name,
                extra_ips=(self.bind_address,),
            )
            self.timings.pki = time.monotonic() - t
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            self.apiserver_port, self.kcm_port = free_port(), free_port()
            self._kubeconfig = write_kubeconfig(
                self.workdir / "admin.kubeconfig",
                server=self.server,
                ca_file=self._pki.ca_cert,
                user="admin",
                client_cert=self._pki.admin_cert,
                client_key=self._pki.admin_key,
            )
            t = time.monotonic()
            self._start_etcd(binaries)
            self.timings.etcd = time.monotonic() - t
            t = time.monotonic()
            self._start_apiserver(binaries)
            self.timings.apiserver = time.monotonic() - t
            t = time.monotonic()
            self._start_controller_manager(binaries)
            self.timings.controller_manager = time.monotonic() - t
            t = time.monotonic()
            self._start_scheduler(binaries)
            self.timings.scheduler = time.monotonic() - t
        except BaseException:
            self.stop()
            raise
        self.timings.total = time.monotonic() - t0
        return self.timings

    def stop(self) -> None:
        """Stop every component by PID (reverse start order) and remove the work directory.

        Safe to call more than once and after a failed start.
        """
        self.processes.stop_all()
        if self.workdir is not None and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None

    def restart_apiserver(self, *, grace: float = 3.0) -> float:
        """Stop kube-apiserver (SIGTERM, ``grace`` seconds, SIGKILL) and start it again
        with the same port, certs and etcd.

        Returns the seconds until it was ready again. Raises ControlPlaneError when it
        does not come back.
        """
        self.processes.stop("kube-apiserver", grace=grace)
        t = time.monotonic()
        self._start_apiserver(self.binaries)
        return time.monotonic() - t

    # -- components -------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        return self.processes.spawn(name, argv)

    def _await(self, name: str, check: Callable[[], bool]) -> None:
        self.processes.await_ready(name, check)

    def _start_etcd(self, binaries: Binaries) -> None:
        """etcd on loopback, TLS only, client and peer certificates required (the etcd
        CA's: only the API server's client certificate opens it)."""
        p = self._require_pki()
        work = self._work()
        client = self.etcd_url
        peer = f"https://127.0.0.1:{self.etcd_peer_port}"
        self._spawn(
            "etcd",
            [
                str(binaries.etcd),
                "--name=default",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                f"--cert-file={p.etcd_server_cert}",
                f"--key-file={p.etcd_server_key}",
                f"--trusted-ca-file={p.etcd_ca_cert}",
                "--client-cert-auth=true",
                f"--peer-cert-file={p.etcd_server_cert}",
                f"--peer-key-file={p.etcd_server_key}",
                f"--peer-trusted-ca-file={p.etcd_ca_cert}",
                "--peer-client-cert-auth=true",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(p.etcd_ca_cert))
        ctx.load_cert_chain(str(p.etcd_client_cert), str(p.etcd_client_key))
        self._await("etcd", lambda: http_ok(f"{client}/health", context=ctx))

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        work = self._work()
        policy = work / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={work / 'audit.log'}",
            # every event is on disk before the response is sent: counts never lag
            "--audit-log-mode=blocking",
            # in megabytes; 0 is not "never" but lumberjack's default of 100 MB, which a
            # bench of 3,000 sessions filled halfway, rotating the log under its readers
            f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
        ]

    def _start_apiserver(self, binaries: Binaries) -> None:
        p = self._require_pki()
        work = self._work()
        self._spawn(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--etcd-cafile={p.etcd_ca_cert}",
                f"--etcd-certfile={p.etcd_client_cert}",
                f"--etcd-keyfile={p.etcd_client_key}",
                f"--bind-address={self.bind_address}",
                f"--advertise-address={self.bind_address}",
                f"--secure-port={self.apiserver_port}",
                f"--kubelet-client-certificate={p.kubelet_client_cert}",
                f"--kubelet-client-key={p.kubelet_client_key}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--cert-dir={work / 'apiserver-certs'}",
                f"--tls-cert-file={p.serving_cert}",
                f"--tls-private-key-file={p.serving_key}",
                f"--client-ca-file={p.ca_cert}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p.sa_public_key}",
                f"--service-account-signing-key-file={p.sa_private_key}",
                f"--api-audiences={SA_ISSUER}",
                "--service-account-max-token-expiration=8760h",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # nothing here runs privileged: the enforcer, kube-proxy, CoreDNS and the
                # volume provisioner are node processes, its helper pods unprivileged
                "--allow-privileged=false",
                # the `kubernetes` Service points at the node IP (no endpoint on loopback)
                "--endpoint-reconciler-type="
                + ("none" if self.bind_address.startswith("127.") else "lease"),
                "--enable-admission-plugins="
                + ",".join(("NodeRestriction", *self.admission_plugins)),
                "--profiling=false",
                *self._audit_args(),
                "--v=1",
            ],
        )
        ctx = self._client_ssl()
        self._await("kube-apiserver", lambda: http_ok(f"{self.server}/readyz", context=ctx))

    def _start_controller_manager(self, binaries: Binaries) -> None:
        p = self._require_pki()
        work = self._work()
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.kcm_port}",
                f"--cert-dir={work / 'kcm-certs'}",
                "--leader-elect=false",
                f"--controllers={','.join(self.controllers)}",
                f"--root-ca-file={p.ca_cert}",
                f"--service-account-private-key-file={p.sa_private_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allocate-node-cidrs=true",
                f"--cluster-cidr={POD_CIDR}",
                "--node-cidr-mask-size=24",
                f"--flex-volume-plugin-dir={work / 'flexvolume'}",
                "--concurrent-gc-syncs=5",
                # A quota created before the quota controller counts a kind (a CRD's
                # count/..., just installed) is counted at its next full sync: 5 min by
                # default; a LabProfile waits for it (QuotaPending).
                "--resource-quota-sync-period=30s",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._await(
            "kube-controller-manager",
            lambda: http_ok(f"https://127.0.0.1:{self.kcm_port}/healthz", context=insecure),
        )

    def _start_scheduler(self, binaries: Binaries) -> None:
        kubeconfig = str(self.kubeconfig)
        port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                str(binaries.kube_scheduler),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                "--leader-elect=false",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        self._await(
            "kube-scheduler",
            lambda: http_ok(f"https://127.0.0.1:{port}/healthz", context=insecure),
        )

    def _client_ssl(self) -> ssl.SSLContext:
        p = self._require_pki()
        ctx = ssl.create_default_context(cafile=str(p.ca_cert))
        ctx.load_cert_chain(str(p.admin_cert), str(p.admin_key))
        return ctx
