"""`kubectl apply -k manifests/` against the real API server, and what the manifests say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kernelsession.localcluster.cluster import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
MANIFESTS = Path(__file__).parents[2] / "manifests"


def test_kustomization_applies_server_side(installed: LocalCluster) -> None:
    # --dry-run=server: full admission and schema validation, nothing persisted (the
    # operator fixture applies the same kustomization for real, with the local image).
    crds = installed.kubectl("apply", "-k", str(MANIFESTS / "crds"), "--dry-run=server").stdout
    for crd in ("kernelsessions.kernelsession.dev", "labprofiles.kernelsession.dev"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{crd}" in crds, crds
    out = installed.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server").stdout
    assert "customresourcedefinition" not in out  # the CRDs install apart from the operator
    for obj in (
        "namespace/kernelsession-system",
        "serviceaccount/kernelsession-operator",
        "clusterrole.rbac.authorization.k8s.io/kernelsession-operator-profiles",
        "clusterrole.rbac.authorization.k8s.io/kernelsession-profile-owner",
        "clusterrole.rbac.authorization.k8s.io/kernelsession-operator",
        "rolebinding.rbac.authorization.k8s.io/kernelsession-operator",
        "deployment.apps/kernelsession-operator",
        "poddisruptionbudget.policy/kernelsession-operator",
        "clusterrole.rbac.authorization.k8s.io/kernelsession-operator-storageclasses",
        "role.rbac.authorization.k8s.io/kernelsession-operator-leader",
        "networkpolicy.networking.k8s.io/kernelsession-operator",
    ):
        assert obj in out, out


def _operator_docs() -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((MANIFESTS / "operator.yaml").read_text())
    return {d["kind"]: d for d in docs if d}


def test_two_replicas_one_active_and_a_disruption_budget() -> None:
    docs = _operator_docs()
    spec = docs["Deployment"]["spec"]
    assert spec["replicas"] == 2
    # A new pod starts (standby) before an old one stops: never zero operators.
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["KERNELSESSION_LEADER_ELECTION"]["value"] == "true"
    identity = env["KERNELSESSION_LEADER_IDENTITY"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert identity == "metadata.name"
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_operator_deployment_is_hardened() -> None:
    spec = _operator_docs()["Deployment"]["spec"]
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "kernelsession-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # a loop busy listing thousands of objects answers slowly; only a hung one is killed
    assert c["livenessProbe"]["timeoutSeconds"] >= 10
    assert c["readinessProbe"]["timeoutSeconds"] >= 5
    # Ready ~1 s after kopf serves (not a readiness period later), yet a slow start gets
    # two minutes before the kubelet restarts it.
    startup = c["startupProbe"]
    assert startup["httpGet"] == c["readinessProbe"]["httpGet"]
    assert startup["periodSeconds"] == 1
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert c["resources"]["requests"]
    labels = spec["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "kernelsession-operator"  # NetworkPolicy peer


@pytest.mark.parametrize("sample", ["minimal.yaml", "full.yaml", "labprofile.yaml"])
def test_samples_pass_server_validation(installed: LocalCluster, sample: str) -> None:
    out = installed.kubectl(
        "apply", "-f", str(MANIFESTS / "samples" / sample), "--dry-run=server"
    ).stdout
    assert ".kernelsession.dev/" in out
