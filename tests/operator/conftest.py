"""The operator on the local cluster: one operator process for the module's tests.

It runs as the ``kernelsession-operator`` service account, so every request it makes is
authorised by ``manifests/rbac.yaml`` alone. Intervals are short so culling and status
changes happen within seconds.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from helpers import wait_for
from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.operator_process import OperatorProcess, install_manifests

LABS = "labs"
OPERATOR_ENV = {
    "KERNELSESSION_CULL_INTERVAL": "1",
    "KERNELSESSION_CULL_WARNING": "2",
    "KERNELSESSION_STARTING_INTERVAL": "0.5",
    "KERNELSESSION_DEFAULT_START_TIMEOUT": "120",
}


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


def get_ks(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", LABS, f"ks/{name}"))


def children(cluster: LocalCluster, name: str) -> dict[str, list[dict[str, Any]]]:
    """The session's children by kind, found by the session label."""
    out = cluster.kubectl(
        "-n",
        LABS,
        "get",
        "secrets,pods,services,networkpolicies",
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
