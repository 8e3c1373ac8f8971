"""deploy_operator's kubectl calls, against a stand-in for the cluster: `make run` applies the
manifests, creates the sample while the operator starts, then waits for the rollout."""

from __future__ import annotations

import subprocess
from typing import Any

from kernelsession.localcluster import deploy


class FakeCluster:
    image_refs = {"lab": "localhost/kernelsession/lab:1", "operator": "localhost/ks/op:2"}

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        return subprocess.CompletedProcess(list(args), 0, "", "")


def test_deploy_without_waiting_applies_and_waits_only_for_the_crds() -> None:
    cluster = FakeCluster()
    operator = deploy.deploy_operator(cluster, wait=False)  # type: ignore[arg-type]
    verbs = [c[0] for c in cluster.calls]
    assert verbs == ["apply", "wait", "apply"]
    # The CRDs first, on their own (manifests/crds), established before the operator.
    assert cluster.calls[0][-1].endswith("manifests/crds")
    assert "crd/kernelsessions.kernelsession.dev" in cluster.calls[1]
    assert "crd/labprofiles.kernelsession.dev" in cluster.calls[1]
    operator.wait_available(timeout=5)
    assert cluster.calls[-1][2:4] == ("rollout", "status")


def test_deploy_waits_for_the_rollout_by_default() -> None:
    cluster = FakeCluster()
    deploy.deploy_operator(cluster)  # type: ignore[arg-type]
    assert [c[0] for c in cluster.calls[:3]] == ["apply", "wait", "apply"]
    assert any(c[2:4] == ("rollout", "status") for c in cluster.calls)
