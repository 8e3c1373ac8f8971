"""`kubectl apply -k manifests/` against the real API server, and what the manifests say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kernelsession.localcluster.cluster import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
MANIFESTS = Path(__file__).parents[2] / "manifests"


def test_kustomization_applies_server_side(installed: LocalCluster) -> None:
    # --dry-run=server: full admission and schema validation, nothing persisted (the
    # operator fixture applies the same kustomization for real, with the local image).
    out = installed.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server").stdout
    for obj in (
        "namespace/kernelsession-system",
        "namespace/labs",
        "customresourcedefinition.apiextensions.k8s.io/kernelsessions.kernelsession.dev",
        "serviceaccount/kernelsession-operator",
        "clusterrole.rbac.authorization.k8s.io/kernelsession-operator",
        "rolebinding.rbac.authorization.k8s.io/kernelsession-operator",
        "deployment.apps/kernelsession-operator",
    ):
        assert obj in out, out


def test_operator_deployment_is_hardened() -> None:
    (deploy,) = yaml.safe_load_all((MANIFESTS / "operator.yaml").read_text())
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "kernelsession-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["requests"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kernelsession-operator"  # NetworkPolicy peer


@pytest.mark.parametrize("sample", ["minimal.yaml", "full.yaml"])
def test_samples_pass_server_validation(installed: LocalCluster, sample: str) -> None:
    out = installed.kubectl(
        "apply", "-f", str(MANIFESTS / "samples" / sample), "--dry-run=server"
    ).stdout
    assert "kernelsession.kernelsession.dev/" in out
