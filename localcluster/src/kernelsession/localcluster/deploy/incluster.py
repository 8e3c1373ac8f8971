"""The operator as users install it: ``kubectl apply -k`` of ``manifests/``, from its image.

:func:`deploy_operator` writes a kustomize overlay (in a temporary directory) whose only
changes are the locally built image (``images:``), the default lab image and, for tests,
extra environment variables; applies it with ``kubectl apply -k`` and waits until the
Deployment is available. :class:`OperatorDeployment` reads its pods, logs and metrics
(through the metrics Service's cluster IP, which kube-proxy routes from the host).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy.operator_process import (
    LABS_NAMESPACE,
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    install_crds,
    manifests_dir,
)
from kernelsession.localcluster.deploy.rollout import pod_logs, pods, wait_rollout
from kernelsession.localcluster.processes import wait_until

DEPLOYMENT = "kernelsession-operator"
UPSTREAM_IMAGE = "kernelsession/operator"
POD_SELECTOR = "app.kubernetes.io/name=kernelsession-operator"


def write_overlay(
    directory: Path,
    base: Path,
    image_ref: str,
    env: Mapping[str, str],
    replicas: int | None = None,
) -> Path:
    """A kustomization in ``directory`` over ``base`` (``manifests/``) with the local image
    and ``env`` set on the operator container. Returns ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    name, _, tag = image_ref.rpartition(":")
    patch: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "namespace": OPERATOR_NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "operator",
                            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
                        }
                    ]
                }
            }
        },
    }
    if replicas is not None:
        patch["spec"]["replicas"] = replicas
    (directory / "operator-env.yaml").write_text(yaml.safe_dump(patch, sort_keys=False))
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(base, directory)],
        "images": [{"name": UPSTREAM_IMAGE, "newName": name, "newTag": tag}],
        "patches": [{"path": "operator-env.yaml"}],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return directory


class OperatorDeployment:
    """The operator Deployment on a :class:`LocalCluster`."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def pods(self) -> list[dict[str, Any]]:
        """The operator's pods (running or not), oldest first."""
        return pods(self.cluster, OPERATOR_NAMESPACE, POD_SELECTOR)

    def ready_pods(self) -> list[dict[str, Any]]:
        def ready(pod: dict[str, Any]) -> bool:
            conditions = (pod.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        return [p for p in self.pods() if ready(p) and not p["metadata"].get("deletionTimestamp")]

    def wait_available(self, timeout: float = 180.0) -> float:
        """Wait for ``kubectl rollout status``; returns seconds. Raises RolloutError (a
        RuntimeError) with the pods' state and the last log lines when it does not become
        available."""
        return wait_rollout(
            self.cluster,
            OPERATOR_NAMESPACE,
            DEPLOYMENT,
            selector=POD_SELECTOR,
            timeout=timeout,
            what="operator Deployment",
        )

    def logs(self) -> str:
        """Logs of every operator container (current and previous run), concatenated."""
        return pod_logs(self.cluster, OPERATOR_NAMESPACE, POD_SELECTOR)

    def log_tails(self, lines: int) -> str:
        """The last ``lines`` lines of each operator pod's current run, the Lease holder
        named: what each replica was doing when a test gave up."""
        holder = self.leader()
        parts = []
        for pod in self.pods():
            name = pod["metadata"]["name"]
            out = self.cluster.kubectl(
                "-n", OPERATOR_NAMESPACE, "logs", name, f"--tail={lines}", check=False
            ).stdout
            role = "the Lease holder" if name == holder else "standby"
            parts.append(f"--- pod {name} ({role}):\n{out}")
        return "\n".join(parts)

    def leader(self) -> str | None:
        """The name of the operator pod holding the leader Lease (None: no holder)."""
        result = self.cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "get", "lease", DEPLOYMENT, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        holder = (json.loads(result.stdout).get("spec") or {}).get("holderIdentity")
        return str(holder) if holder else None

    def leader_pod(self) -> dict[str, Any]:
        """The active operator pod: the Lease holder when there is one, else the only
        ready pod. Raises RuntimeError when neither exists."""
        pods = self.ready_pods()
        holder = self.leader()
        for pod in pods:
            if pod["metadata"]["name"] == holder:
                return pod
        if len(pods) == 1 and holder is None:
            return pods[0]
        raise RuntimeError(f"no active operator pod (lease holder {holder!r})")

    def metrics(self, timeout: float = 5.0) -> str:
        """``/metrics`` of the active operator (its pod IP, which the node routes)."""
        ip = self.leader_pod()["status"]["podIP"]
        return _get(f"http://{ip}:9090/metrics", timeout)

    def service_metrics(self, timeout: float = 5.0) -> str:
        """``/metrics`` through the metrics Service's cluster IP (any replica)."""
        svc = self.cluster.get_json("service", "-n", OPERATOR_NAMESPACE, f"{DEPLOYMENT}-metrics")
        return _get(f"http://{svc['spec']['clusterIP']}:9090/metrics", timeout)


def _get(url: str, timeout: float) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
        return bytes(response.read()).decode()


def deploy_operator(
    cluster: LocalCluster,
    *,
    env: Mapping[str, str] | None = None,
    replicas: int | None = None,
    timeout: float = 180.0,
    wait: bool = True,
) -> OperatorDeployment:
    """``kubectl apply -k`` the CRDs (``manifests/crds``, established first), then the
    manifests with the local images; and (``wait``) the Deployment is available (else call
    :meth:`OperatorDeployment.wait_available` later, e.g. after creating sessions, which
    the operator picks up when it starts).

    Raises subprocess.CalledProcessError when kubectl fails, RuntimeError when the
    Deployment does not become available.
    """
    refs = cluster.image_refs
    settings = {"KERNELSESSION_DEFAULT_IMAGE": refs["lab"], **(env or {})}
    install_crds(cluster)
    # The shared namespace, apart from the operator: `kubectl delete -k manifests/` keeps it.
    cluster.kubectl("apply", "--server-side", "-f", str(manifests_dir() / LABS_NAMESPACE))
    with tempfile.TemporaryDirectory(prefix="ks-overlay-") as tmp:
        overlay = write_overlay(
            Path(tmp) / "overlay", manifests_dir(), refs["operator"], settings, replicas
        )
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(overlay))
    deployment = OperatorDeployment(cluster)
    if wait:
        deployment.wait_available(timeout)
    return deployment


class InClusterOperator(OperatorDeployment):
    """The operator Deployment driven like a process by the tests: ``start`` (apply and
    wait until available), ``stop`` (scale to 0, wait until its pods are gone), ``kill``
    (force-delete the active pod: SIGKILL, no grace; the ReplicaSet replaces it),
    ``instance`` (which pod and run is active), ``metrics``, ``logs``, and ``kubeconfig``
    (a token of the operator's service account, for RBAC checks)."""

    def __init__(
        self,
        cluster: LocalCluster,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        replicas: int | None = None,
    ) -> None:
        super().__init__(cluster)
        self.env = dict(env or {})
        self.replicas = replicas
        workdir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = cluster.service_account_kubeconfig(
            OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, workdir / "operator.kubeconfig"
        )

    def start(self, timeout: float = 180.0) -> float:
        """Apply the manifests (scaling back up after ``stop``) and wait until available
        and a ready pod holds the Lease (after a restart it names a gone pod until it
        expires); returns seconds. Raises RuntimeError when it does not become available,
        TimeoutError when no ready pod leads within ``timeout``."""
        started = time.monotonic()
        deploy_operator(self.cluster, env=self.env, replicas=self.replicas, timeout=timeout)
        wait_until(
            self._leads, timeout=max(0.0, started + timeout - time.monotonic()), interval=0.5
        )
        return time.monotonic() - started

    def _leads(self) -> bool:
        try:
            self.leader_pod()
        except RuntimeError:
            return False
        return True

    def reconfigure(self, env: Mapping[str, str], timeout: float = 180.0) -> float:
        """Apply the manifests with ``env`` instead (a rollout) and wait until every pod
        runs with it; returns seconds."""
        self.env = dict(env)
        return self.start(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Scale to 0 and wait until no operator pod is left."""
        self.cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "scale", f"deploy/{DEPLOYMENT}", "--replicas=0"
        )
        self.cluster.kubectl(
            "-n",
            OPERATOR_NAMESPACE,
            "wait",
            "--for=delete",
            "pod",
            "-l",
            POD_SELECTOR,
            f"--timeout={int(timeout)}s",
            check=False,
            timeout=timeout + 10,
        )

    def kill(self) -> str:
        """Force-delete the active operator pod (its processes get SIGKILL); returns its
        name."""
        name = str(self.leader_pod()["metadata"]["name"])
        self.cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "delete", "pod", name, "--grace-period=0", "--force"
        )
        return name

    def instance(self) -> tuple[str, int] | None:
        """(pod UID, container restart count) of the active operator, or None."""
        try:
            pod = self.leader_pod()
        except RuntimeError:
            return None
        statuses = pod["status"].get("containerStatuses") or [{}]
        return str(pod["metadata"]["uid"]), int(statuses[0].get("restartCount", 0))

    def restart(self, timeout: float = 180.0) -> float:
        """``kubectl rollout restart`` (new pods, one at a time) and wait; returns seconds."""
        started = time.monotonic()
        self.cluster.kubectl("-n", OPERATOR_NAMESPACE, "rollout", "restart", f"deploy/{DEPLOYMENT}")
        self.wait_available(timeout)
        return time.monotonic() - started

    def roll(self, template_spec: Mapping[str, Any], timeout: float = 180.0) -> float:
        """Merge ``template_spec`` into the pod template's spec (an upgrade's rollout: new
        pods, one at a time) and wait until available; returns seconds. Raises
        RolloutError (a RuntimeError) when it does not become available."""
        started = time.monotonic()
        patch = {"spec": {"template": {"spec": dict(template_spec)}}}
        self.cluster.kubectl(
            "-n", OPERATOR_NAMESPACE, "patch", f"deploy/{DEPLOYMENT}", "--type=merge",
            "-p", json.dumps(patch),
        )  # fmt: skip
        self.wait_available(timeout)
        return time.monotonic() - started

    def running(self) -> bool:
        return self.instance() is not None


def operator_account() -> str:
    """The operator's service account as the API server names it."""
    return f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}"


__all__ = [
    "InClusterOperator",
    "OperatorDeployment",
    "deploy_operator",
    "operator_account",
    "write_overlay",
]
