"""Shared fixtures: the local Kubernetes cluster (real control plane + local kubelet).

- ``cluster``: session-scoped :class:`~kernelsession.localcluster.cluster.LocalCluster`,
  started on first request (never when no selected test needs it), stopped at the end.
- ``kube_api``: an admin ``kubernetes_asyncio`` ``ApiClient`` for the cluster.
- ``namespace``: a fresh namespace per test (with its ``default`` ServiceAccount ready),
  deleted afterwards without waiting.
- ``sa_kubeconfig``: factory ``(rbac, namespace, name) -> Path`` applying RBAC manifests
  and returning a kubeconfig for that ServiceAccount (see ``helpers.sa_kubeconfig``).
- ``installed``: the cluster with namespaces, CRD and RBAC from ``manifests/``.
- ``operator``: ONE operator process for the whole run (tests/operator and tests/e2e
  share it; two operators would fight), as the operator's service account, with short
  intervals so culling and status changes happen within seconds. A test that stops or
  kills it starts it again in a ``finally``.
- ``ks``: an admin ``KernelSessionClient`` for namespace ``labs``; ``session_name``: a
  unique session name, deleted (with its children) after the test.

Tests using them carry ``pytest.mark.slow`` and ``pytest.mark.cluster``.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.api_client import ApiClient

sys.path.insert(0, str(Path(__file__).parent))

from helpers import LABS, OPERATOR_ENV, wait_for
from helpers import sa_kubeconfig as _sa_kubeconfig

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.binaries import BinariesUnavailableError
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.operator_process import OperatorProcess, install_manifests


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A local cluster shared by the whole test session."""
    c = LocalCluster(audit=True)  # tests/operator/test_rbac.py reads the audit log
    try:
        timings = c.start()
    except BinariesUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    print(f"\n[localcluster] {timings.summary()}; KUBECONFIG={c.kubeconfig}", file=sys.stderr)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
async def kube_api(cluster: LocalCluster) -> AsyncIterator[ApiClient]:
    """An admin kubernetes_asyncio ApiClient (system:masters)."""
    api = await k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists (pods need it)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: (
            cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode
            == 0
        ),
        timeout=30,
        what=f"ServiceAccount {name}/default",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def sa_kubeconfig(cluster: LocalCluster, tmp_path: Path) -> Callable[[Any, str, str], Path]:
    """Factory: ``sa_kubeconfig(rbac, namespace, name) -> Path`` (kubeconfig for the SA)."""

    def make(rbac: Any, namespace: str, name: str) -> Path:
        return _sa_kubeconfig(
            cluster, rbac, namespace, name, tmp_path / f"{namespace}-{name}.kubeconfig"
        )

    return make


@pytest.fixture(scope="session")
def installed(cluster: LocalCluster) -> LocalCluster:
    install_manifests(cluster)
    return cluster


@pytest.fixture(scope="session")
def operator(
    installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(installed, tmp_path_factory.mktemp("operator"), env=OPERATOR_ENV)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
async def ks(installed: LocalCluster) -> AsyncIterator[KernelSessionClient]:
    async with KernelSessionClient(namespace=LABS, kubeconfig=str(installed.kubeconfig)) as client:
        yield client


@pytest.fixture
def session_name(installed: LocalCluster) -> Iterator[str]:
    """A unique session name, deleted (with its children) after the test."""
    name = f"t{uuid.uuid4().hex[:8]}"
    yield name
    installed.kubectl(
        "-n", LABS, "delete", "ks", name, "--ignore-not-found", "--wait=false", check=False
    )
