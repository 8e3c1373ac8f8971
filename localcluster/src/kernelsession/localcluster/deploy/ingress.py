"""The local cluster's ingress controller: Traefik v3 (its ``kubernetesingress`` provider).

Optional: nothing here runs unless asked for. :func:`install_ingress` builds what is missing
(the Traefik binary from the Go module proxy, once; its single-layer image, in well under
a second), imports the image into the running node's containerd, applies
:func:`ingress_manifests` (server-side, so installing twice is fine) and waits until the
controller answers its readiness probe::

    with LocalCluster() as cluster:
        ingress = install_ingress(cluster)
        ingress.url("/labs/labs/alice/")     # http://10.96.0.80/labs/labs/alice/
        ingress.fetch("/", host="lab.test")  # (404, b"404 page not found\\n")

What it installs, in namespace ``kernelsession-ingress`` (Pod Security ``restricted``):
a ServiceAccount; a ClusterRole with exactly what the provider needs (list/watch of
ingresses, ingressclasses, services, endpointslices and nodes: Traefik's cluster-scope
informer watches nodes whenever IngressClasses are looked up) and writes
(``ingresses/status``: each Ingress it serves gets the Service's cluster IP as its load
balancer address), and no Secret at all: Traefik watches every Secret it may (for Ingress
TLS, unused by the plain-HTTP entry point), so it reads the API server through a sidecar
on 127.0.0.1 (:mod:`._ingress_apiproxy`, from the ConfigMap ``traefik-apiproxy``, run by
the ``base`` image's python) that forwards everything else with Traefik's own token and
answers requests for Secrets itself with nothing; the Deployment ``traefik`` (non-root
uid 65532, all capabilities dropped, RuntimeDefault seccomp, read-only root file system,
readiness and liveness on ``/ping``; the sidecar likewise); the ClusterIP Service
``traefik`` on port 80 at the fixed address :data:`SERVICE_IP` (``http://10.96.0.80``);
and the IngressClass ``traefik`` (controller ``traefik.io/ingress-controller``, the
cluster's default class).

Traefik contacts nothing outside the machine: no version check, no anonymous usage
statistics, no plugins, no dashboard. Its ``web`` entry point has no read timeout (Traefik
v3's default of 60 s would cut long requests and uploads), so kernel websockets and long
polls stay open. Access log on stdout.

The pods carry :data:`POD_LABELS` (``app.kubernetes.io/name: traefik``): a NetworkPolicy
in front of a lab admits the controller with a ``namespaceSelector`` on
``kubernetes.io/metadata.name: kernelsession-ingress`` plus that ``podSelector``.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy.rollout import RolloutError, wait_rollout

NAMESPACE = "kernelsession-ingress"
NAME = "traefik"
CLASS_NAME = "traefik"
CONTROLLER = "traefik.io/ingress-controller"
SERVICE_PORT = 80
WEB_PORT = 8000
PING_PORT = 8080
APIPROXY_PORT = 8001
APIPROXY_CONFIGMAP = f"{NAME}-apiproxy"
_APIPROXY_SOURCE = Path(__file__).with_name("_ingress_apiproxy.py")
#: The Service's fixed cluster IP, in the static band of the local cluster's service range
#: (like kube-dns's 10.96.0.10): the controller's address is known before it is installed,
#: and Traefik publishes it in the status of every Ingress it serves.
SERVICE_IP = "10.96.0.80"
POD_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": NAME}
POD_SELECTOR = ",".join(f"{k}={v}" for k, v in POD_LABELS.items())
COMMON_LABELS = {"app.kubernetes.io/part-of": "kernelsession"}


class IngressError(RuntimeError):
    """The ingress controller could not be installed or did not become ready."""


def traefik_args(class_name: str = CLASS_NAME, service_ip: str = SERVICE_IP) -> list[str]:
    """Traefik's static configuration, as command-line flags. Pure."""
    return [
        # contact nothing outside the machine
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
        "--accessLog=true",
        f"--entryPoints.web.address=:{WEB_PORT}",
        # v3 defaults to 60 s, which cuts long requests (uploads, long polls); websockets
        # and kernels are long-lived by nature
        "--entryPoints.web.transport.respondingTimeouts.readTimeout=0s",
        f"--entryPoints.traefik.address=:{PING_PORT}",
        "--ping=true",
        "--ping.entryPoint=traefik",
        "--providers.kubernetesingress=true",
        f"--providers.kubernetesingress.ingressClass={class_name}",
        # Prefix paths match element-wise, as the Ingress API says (/app is not /application)
        "--providers.kubernetesingress.strictPrefixMatching=true",
        # each served Ingress gets the Service's cluster IP in status.loadBalancer (Traefik's
        # publishedService would publish only a ClusterIP Service's externalIPs)
        f"--providers.kubernetesingress.ingressEndpoint.ip={service_ip}",
        # the API server through the sidecar that keeps Secrets out (see the module doc)
        f"--providers.kubernetesingress.endpoint=http://127.0.0.1:{APIPROXY_PORT}",
    ]


def ingress_manifests(
    image: str,
    *,
    proxy_image: str,
    namespace: str = NAMESPACE,
    class_name: str = CLASS_NAME,
    service_ip: str = SERVICE_IP,
    default_class: bool = True,
) -> list[dict[str, Any]]:
    """The objects that install Traefik (namespace, RBAC, the API proxy's ConfigMap,
    Service, Deployment, IngressClass), in apply order. ``proxy_image``: an image with
    ``python3`` for the API proxy sidecar. Pure (reads the proxy's source file)."""
    labels = {**COMMON_LABELS, **POD_LABELS}
    meta = {"name": NAME, "namespace": namespace, "labels": labels}
    cluster_name = f"{namespace}-{NAME}"
    rules = [
        {
            "apiGroups": [""],
            "resources": ["services", "nodes"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses", "ingressclasses"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["networking.k8s.io"],
            "resources": ["ingresses/status"],
            "verbs": ["update"],
        },
    ]
    hardened = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    probe = {"httpGet": {"path": "/ping", "port": "traefik"}, "periodSeconds": 2}
    container = {
        "name": NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "args": traefik_args(class_name, service_ip),
        "ports": [
            {"name": "web", "containerPort": WEB_PORT, "protocol": "TCP"},
            {"name": "traefik", "containerPort": PING_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {**probe, "failureThreshold": 1},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": hardened,
        # a small writable /tmp in the container (an emptyDir; the root file system is
        # read-only)
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108
    }
    proxy = {
        "name": "apiproxy",
        "image": proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-I", "/etc/apiproxy/apiproxy.py"],
        "env": [{"name": "PORT", "value": str(APIPROXY_PORT)}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "24Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": hardened,
        "volumeMounts": [{"name": "apiproxy", "mountPath": "/etc/apiproxy", "readOnly": True}],
    }
    class_meta: dict[str, Any] = {"name": class_name, "labels": labels}
    if default_class:
        class_meta["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {
                    **COMMON_LABELS,
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
        },
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name, "labels": labels},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": cluster_name, "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": cluster_name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {**meta, "name": APIPROXY_CONFIGMAP},
            "data": {"apiproxy.py": _APIPROXY_SOURCE.read_text()},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "type": "ClusterIP",
                "clusterIP": service_ip,
                "selector": dict(POD_LABELS),
                "ports": [
                    {"name": "web", "port": SERVICE_PORT, "targetPort": "web", "protocol": "TCP"}
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(POD_LABELS)},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": NAME,
                        "automountServiceAccountToken": True,  # the provider reads the API
                        "terminationGracePeriodSeconds": 15,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [container, proxy],
                        "volumes": [
                            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                            {"name": "apiproxy", "configMap": {"name": APIPROXY_CONFIGMAP}},
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": class_meta,
            "spec": {"controller": CONTROLLER},
        },
    ]


@dataclass(frozen=True)
class IngressController:
    """Traefik installed on a :class:`LocalCluster`: where it listens and what it is."""

    cluster: LocalCluster = field(repr=False, compare=False)
    namespace: str
    class_name: str
    service_name: str
    service_ip: str
    port: int
    image: str
    pod_labels: Mapping[str, str]
    ready_seconds: float
    """Seconds from the start of :func:`install_ingress` until the controller was ready."""

    @property
    def address(self) -> str:
        """``http://SERVICE_IP[:PORT]``: the controller's Service, reachable from this
        machine (the node routes the service range) and from every pod."""
        netloc = self.service_ip if self.port == 80 else f"{self.service_ip}:{self.port}"
        return f"http://{netloc}"

    @property
    def service_dns(self) -> str:
        """The Service's cluster DNS name (resolves inside pods)."""
        return f"{self.service_name}.{self.namespace}.svc.cluster.local"

    def url(self, path: str = "/") -> str:
        """The URL of ``path`` through the controller (send a ``Host`` header for rules
        with a host, e.g. :meth:`fetch`)."""
        return self.address + ("" if path.startswith("/") else "/") + path

    def fetch(
        self, path: str = "/", *, host: str | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """GET ``path`` through the controller with ``Host: host``; (status, body), errors
        included (a 404 is an answer, not an exception).

        Raises:
            OSError: the controller cannot be reached.
        """
        request = urllib.request.Request(self.url(path))  # noqa: S310 - http to the Service
        if host is not None:
            request.add_header("Host", host)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def pods(self) -> list[dict[str, Any]]:
        """The controller's pods."""
        items = self.cluster.get_json("pods", "-n", self.namespace, "-l", POD_SELECTOR)["items"]
        return list(items)

    def logs(self) -> str:
        """The controller's log (its access log included)."""
        return self.cluster.kubectl(
            "-n", self.namespace, "logs", f"deploy/{NAME}", "--tail=-1", check=False
        ).stdout


def install_ingress(
    cluster: LocalCluster,
    *,
    timeout: float = 180.0,
    build_missing: bool = True,
    log: bool = True,
) -> IngressController:
    """Install Traefik into a running cluster and wait until it is ready (``/ping``).

    Idempotent: a second call re-applies the same objects and returns at once. Builds the
    Traefik binary (Go module proxy, minutes, once) when ``build_missing`` and it is not
    cached, and its image (no root needed).

    Raises:
        BinariesUnavailableError: the Traefik binary is missing and cannot be built.
        ImagesUnavailableError: its image cannot be built.
        IngressError: kubectl failed, or the controller was not ready within ``timeout``.
    """
    from kernelsession.localcluster.building.images import ensure_ingress_image

    started = time.monotonic()
    image = ensure_ingress_image(build_missing=build_missing, log=log)
    cluster.import_images([image])
    proxy_image = cluster.image_refs.get("base")
    if proxy_image is None:
        raise IngressError("no `base` image in the cluster for the ingress API proxy")
    try:
        cluster.apply(ingress_manifests(image.ref, proxy_image=proxy_image))
    except subprocess.CalledProcessError as exc:
        raise IngressError(f"applying the ingress controller failed: {exc.stderr}") from exc
    remaining = max(1.0, timeout - (time.monotonic() - started))
    try:
        wait_rollout(
            cluster,
            NAMESPACE,
            NAME,
            selector=POD_SELECTOR,
            timeout=remaining,
            what="the ingress controller",
        )
    except RolloutError as exc:
        raise IngressError(str(exc)) from None
    service = cluster.get_json("service", "-n", NAMESPACE, NAME)
    return IngressController(
        cluster=cluster,
        namespace=NAMESPACE,
        class_name=CLASS_NAME,
        service_name=NAME,
        service_ip=str(service["spec"]["clusterIP"]),
        port=SERVICE_PORT,
        image=image.ref,
        pod_labels=dict(POD_LABELS),
        ready_seconds=time.monotonic() - started,
    )


def uninstall_ingress(cluster: LocalCluster, *, timeout: float = 60.0) -> None:
    """Remove what :func:`install_ingress` created (namespace, cluster-wide RBAC,
    IngressClass) and wait until the namespace is gone."""
    cluster.kubectl("delete", "ingressclass", CLASS_NAME, "--ignore-not-found", check=False)
    cluster.kubectl(
        "delete",
        "clusterrolebinding,clusterrole",
        f"{NAMESPACE}-{NAME}",
        "--ignore-not-found",
        check=False,
    )
    cluster.kubectl(
        "delete",
        "namespace",
        NAMESPACE,
        "--ignore-not-found",
        f"--timeout={int(timeout)}s",
        check=False,
        timeout=timeout + 10,
    )


__all__ = [
    "CLASS_NAME",
    "NAMESPACE",
    "POD_LABELS",
    "SERVICE_IP",
    "IngressController",
    "IngressError",
    "ingress_manifests",
    "install_ingress",
    "traefik_args",
    "uninstall_ingress",
]
