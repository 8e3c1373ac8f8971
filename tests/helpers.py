"""Small shared test helpers: waiting for conditions with deadlines, SA kubeconfigs.

Tests never sleep in place of a condition: they poll one with :func:`wait_for` /
:func:`async_wait_for`, which fail with a message saying what was awaited and what was
last observed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from kernelsession.localcluster.cluster import LocalCluster

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """The awaited condition did not hold before the deadline."""


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Exceptions raised by the predicate count as "not yet" (the last one is reported).
    Raises WaitTimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:  # the condition is not there yet
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.1,
) -> T:
    """Async :func:`wait_for`; ``predicate`` may be sync or async.

    Raises WaitTimeoutError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeoutError(
                f"timed out after {timeout:g}s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(app: web.Application, **runner_args: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port until the block ends; yields its base URL
    (``http://127.0.0.1:PORT``). ``runner_args`` go to aiohttp's ``AppRunner``."""
    runner = web.AppRunner(app, **runner_args)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def sa_kubeconfig(
    cluster: LocalCluster,
    rbac: str | Path | list[dict[str, Any]] | None,
    namespace: str,
    name: str,
    path: Path | None = None,
) -> Path:
    """Apply ``rbac`` (a manifest file, YAML text or list of objects; may be None) and
    return a kubeconfig authenticating as ServiceAccount ``namespace/name``.

    The ServiceAccount (and namespace) are created if the manifests do not do so.
    Raises subprocess.CalledProcessError when kubectl rejects the manifests.
    """
    if rbac is not None:
        if isinstance(rbac, list):
            docs = rbac
        else:
            text = rbac.read_text() if isinstance(rbac, Path) else rbac
            docs = [d for d in yaml.safe_load_all(text) if d]
        namespaces = [d for d in docs if d.get("kind") == "Namespace"]
        if namespaces:
            cluster.apply(namespaces)
        else:
            cluster.kubectl("create", "namespace", namespace, check=False)
        rest = [d for d in docs if d.get("kind") != "Namespace"]
        if rest:
            cluster.apply(rest)
    if path is None:
        path = Path(tempfile.mkdtemp(prefix="ks-sa-")) / f"{namespace}-{name}.kubeconfig"
    return cluster.service_account_kubeconfig(namespace, name, path)


def pod_condition(pod: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    """The pod condition of type ``ctype`` (a JSON pod), or None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


# -- the operator on the local cluster (fixtures in tests/conftest.py) ----------------
LABS = "labs"
# Every lab in the tests sits behind an Ingress, as on a platform: served under its path
# (base_url), admitted from the ingress controller's namespace, the route in status.
INGRESS_HOST = "labs.kernelsession.test"
INGRESS_ENV = {
    "KERNELSESSION_INGRESS": "true",
    "KERNELSESSION_INGRESS_CLASS": "traefik",
    "KERNELSESSION_INGRESS_HOST": INGRESS_HOST,
    "KERNELSESSION_INGRESS_CONTROLLER_NAMESPACE": "kernelsession-ingress",
    "KERNELSESSION_INGRESS_CONTROLLER_LABELS": "app.kubernetes.io/name=traefik",
}


def lab_path(name: str, namespace: str = LABS) -> str:
    """The base_url of a session's lab under the tests' Ingress settings."""
    return f"/labs/{namespace}/{name}/"


OPERATOR_ENV = {
    "KERNELSESSION_CULL_INTERVAL": "1",
    "KERNELSESSION_CULL_WARNING": "2",
    "KERNELSESSION_STARTING_INTERVAL": "0.5",
    "KERNELSESSION_DEFAULT_START_TIMEOUT": "120",
    "KERNELSESSION_UNSCHEDULABLE_GRACE": "4",
    "KERNELSESSION_HOME_INTERVAL": "1",
    # A deletion missed in a watch gap is noticed within seconds (test_operations.py).
    "KERNELSESSION_RESYNC_INTERVAL": "5",
    # Exercised by every run (tests/operator/test_rbac.py checks the Lease grants are used).
    "KERNELSESSION_LEADER_ELECTION": "true",
} | INGRESS_ENV


# What the tests' sessions use beyond the labs namespace's shipped session rules
# (manifests/admission.yaml: no node selectors): applied under a field manager of its
# own, so re-applying the manifests (deploy_operator) keeps it.
TEST_POLICY = {
    "nodeSelector": "gpu=a100\npool=gpu",  # test_failures, test_suspend_home: Unschedulable
    "secrets": "nope",  # test_failures: a Secret that does not exist (ConfigError)
    # test_operations: the misbehaving labs' server config, which their user may not `get`
    "configMaps": "ks-misbehave",
    # service accounts of labs stand for the user of their name (test_open: the sample
    # Role as a service account opens its own lab)
    "userMapping": "stripPrefix=system:serviceaccount:labs:",
}
POLICY_MANAGER = "kernelsession-tests"


def set_labs_policy(cluster: LocalCluster, data: dict[str, str]) -> None:
    """Set keys of the labs namespace's ConfigMap kernelsession-policy (as the tests'
    field manager: keys it set before and not in ``data`` are removed)."""
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kernelsession-policy", "namespace": LABS},
        "data": data,
    }
    cluster.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={POLICY_MANAGER}",
        "-f",
        "-",
        input=json.dumps(config),
    )


def user_kubeconfig(
    cluster: LocalCluster,
    user: str,
    groups: list[str] | tuple[str, ...],
    path: Path,
    *,
    namespace: str = LABS,
) -> Path:
    """A kubeconfig authenticating as Kubernetes user ``user`` in ``groups`` with an x509
    client certificate signed by the cluster's CA (what the CSR API's
    kube-apiserver-client signer issues): a real identity, for kubectl and for the
    kernelsession CLI alike (kubernetes_asyncio ignores a kubeconfig's impersonation)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from kernelsession.localcluster.cluster.controlplane import write_kubeconfig

    assert cluster.controlplane is not None
    pki = cluster.controlplane.pki
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    cert_file = path.with_suffix(".crt")
    key_file = path.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return write_kubeconfig(
        path,
        server=cluster.server,
        ca_file=cluster.ca_file,
        user=user,
        client_cert=cert_file,
        client_key=key_file,
        namespace=namespace,
    )


def get_ks(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", LABS, f"ks/{name}"))


def children(cluster: LocalCluster, name: str) -> dict[str, list[dict[str, Any]]]:
    """The session's children by kind, found by the session label."""
    out = cluster.kubectl(
        "-n",
        LABS,
        "get",
        "secrets,pods,services,networkpolicies,persistentvolumeclaims,ingresses",
        "-l",
        f"kernelsession.dev/session={name}",
        "-o",
        "json",
    ).stdout
    result: dict[str, list[dict[str, Any]]] = {}
    for item in json.loads(out)["items"]:
        result.setdefault(item["kind"], []).append(item)
    return result


def apply_session(cluster: LocalCluster, name: str, spec: dict[str, Any]) -> None:
    cluster.apply(
        [
            {
                "apiVersion": "kernelsession.dev/v1alpha1",
                "kind": "KernelSession",
                "metadata": {"name": name, "namespace": LABS},
                "spec": spec,
            }
        ]
    )


def requires(cluster: LocalCluster, capability: str, why: str) -> None:
    """Skip the calling test unless ``cluster`` has ``capability`` (an attribute that is
    true), e.g. ``real_node``: real volumes, a scheduler that counts resources, the
    operator as a Deployment whose pods can be killed."""
    import pytest

    if not getattr(cluster, capability, False):
        pytest.skip(f"needs cluster.{capability}: {why}")


def wait_phase(
    cluster: LocalCluster, name: str, phase: str, timeout: float = 60, reason: str | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = get_ks(cluster, name).get("status") or {}
        if status.get("phase") == phase and (reason is None or status.get("reason") == reason):
            return status
        return None

    return wait_for(check, timeout=timeout, what=f"ks/{name} phase {phase} {reason or ''}")


def events_for(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "-n",
        LABS,
        "get",
        "events",
        "--field-selector",
        f"involvedObject.kind=KernelSession,involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    return list(json.loads(out)["items"])


# What the `restricted` Pod Security level asks of a container.
HARDENED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def hardened_pod(
    cluster: LocalCluster, name: str, command: list[str], **extra: Any
) -> dict[str, Any]:
    """A pod from the lab image that the `restricted` level admits; ``labels``,
    ``container`` (merged into the container) and pod spec fields go in ``extra``."""
    labels = extra.pop("labels", {})
    container: dict[str, Any] = {
        "name": "main",
        "image": cluster.image_refs["lab"],
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "securityContext": HARDENED,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }
    container.update(extra.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "containers": [container],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            **extra,
        },
    }
