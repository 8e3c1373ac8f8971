"""Shared fixtures: the local Kubernetes cluster (real control plane + local kubelet).

- ``cluster``: session-scoped :class:`~kernelsession.localcluster.cluster.LocalCluster`,
  started on first request (never when no selected test needs it), stopped at the end.
- ``kube_api``: an admin ``kubernetes_asyncio`` ``ApiClient`` for the cluster.
- ``namespace``: a fresh namespace per test (with its ``default`` ServiceAccount ready),
  deleted afterwards without waiting.
- ``sa_kubeconfig``: factory ``(rbac, namespace, name) -> Path`` applying RBAC manifests
  and returning a kubeconfig for that ServiceAccount (see ``helpers.sa_kubeconfig``).

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

from helpers import sa_kubeconfig as _sa_kubeconfig
from helpers import wait_for
from kernelsession.localcluster.binaries import BinariesUnavailableError
from kernelsession.localcluster.cluster import LocalCluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A local cluster shared by the whole test session."""
    c = LocalCluster()
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
