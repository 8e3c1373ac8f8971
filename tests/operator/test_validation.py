"""Bad input: the API server itself rejects invalid sessions (422) naming the field;
specs it admits but cannot run turn Failed naming the field; the operator keeps serving
valid sessions meanwhile."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from helpers import LABS, children, wait_phase

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-user", {}, "spec.user"),
    ("upper-user", {"user": "Alice"}, "spec.user"),
    ("empty-user", {"user": ""}, "spec.user"),
    ("long-user", {"user": "a" * 64}, "spec.user"),
    ("inject-user", {"user": "a; rm -rf /"}, "spec.user"),
    ("user-type", {"user": 7}, "spec.user"),
    (
        "neg-idle",
        {"user": "a", "culling": {"idleTimeoutSeconds": -1}},
        "spec.culling.idleTimeoutSeconds",
    ),
    ("neg-age", {"user": "a", "culling": {"maxAgeSeconds": -5}}, "spec.culling.maxAgeSeconds"),
    ("zero-start", {"user": "a", "startTimeoutSeconds": 0}, "spec.startTimeoutSeconds"),
    ("str-start", {"user": "a", "startTimeoutSeconds": "soon"}, "spec.startTimeoutSeconds"),
    ("unknown", {"user": "a", "colour": "blue"}, "colour"),
    ("token-env", {"user": "a", "env": [{"name": "JUPYTER_TOKEN", "value": "x"}]}, "spec.env"),
    (
        "env-both",
        {
            "user": "a",
            "env": [
                {
                    "name": "A",
                    "value": "1",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                }
            ],
        },
        "spec.env[0]",
    ),
    ("env-name", {"user": "a", "env": [{"name": "1$(whoami)", "value": "x"}]}, "spec.env[0].name"),
    ("env-huge", {"user": "a", "env": [{"name": "A", "value": "x" * 40000}]}, "spec.env[0].value"),
    (
        "quantity",
        {"user": "a", "resources": {"limits": {"memory": "lots"}}},
        "spec.resources.limits",
    ),
    ("image-space", {"user": "a", "image": "bad image"}, "spec.image"),
    (
        "env-two-sources",
        {
            "user": "a",
            "env": [
                {
                    "name": "A",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ],
        },
        "spec.env[0].valueFrom",
    ),
    ("selector-long", {"user": "a", "nodeSelector": {"zone": "z" * 64}}, "spec.nodeSelector"),
    (
        "toleration-op",
        {"user": "a", "tolerations": [{"key": "k", "operator": "Contains"}]},
        "spec.tolerations[0].operator",
    ),
    (
        "toleration-neg",
        {"user": "a", "tolerations": [{"operator": "Exists", "tolerationSeconds": -1}]},
        "spec.tolerations[0].tolerationSeconds",
    ),
    ("unicode-user", {"user": "\u00e5sa"}, "spec.user"),
    ("control-user", {"user": "a\nb"}, "spec.user"),
    ("nul-user", {"user": "a\x00b"}, "spec.user"),
    ("huge-user", {"user": "a" * 1_000_000}, "spec.user"),
    ("inject-user-label", {"user": "a,kernelsession.dev/client=true"}, "spec.user"),
    (
        "env-name-newline",
        {"user": "a", "env": [{"name": "A\nB", "value": "x"}]},
        "spec.env[0].name",
    ),
    ("env-pod-ip", {"user": "a", "env": [{"name": "POD_IP", "value": "0.0.0.0"}]}, "spec.env"),
    (
        "volume-name",
        {"user": "a", "volumes": [{"name": "../etc", "emptyDir": {}}]},
        "spec.volumes[0].name",
    ),
    (
        "neg-request",
        {"user": "a", "resources": {"requests": {"cpu": "-1"}}},
        "spec.resources.requests",
    ),
    ("culling-type", {"user": "a", "culling": "never"}, "spec.culling"),
    ("suspend-type", {"user": "a", "suspend": "yes"}, "spec.suspend"),
    ("home-type", {"user": "a", "home": "big"}, "spec.home"),
    ("home-size", {"user": "a", "home": {"size": "lots"}}, "spec.home.size"),
    ("home-size-type", {"user": "a", "home": {"size": 10}}, "spec.home.size"),
    ("home-relative", {"user": "a", "home": {"mountPath": "home/me"}}, "spec.home.mountPath"),
    (
        "home-class",
        {"user": "a", "home": {"storageClassName": "Fast_SSD"}},
        "spec.home.storageClassName",
    ),
]


@pytest.mark.parametrize(("name", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected_naming_field(
    installed: LocalCluster, name: str, spec: dict[str, Any], field: str
) -> None:
    obj = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": f"bad-{name}", "namespace": LABS},
        "spec": spec,
    }
    result = installed.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0
    assert field in result.stderr, result.stderr
    assert installed.kubectl("-n", LABS, "get", "ks", f"bad-{name}", check=False).returncode != 0


@pytest.mark.parametrize("name", ["1starts-with-digit", "x" * 51])
def test_invalid_session_names_rejected(installed: LocalCluster, name: str) -> None:
    obj = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": LABS},
        "spec": {"user": "a"},
    }
    result = installed.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
    assert result.returncode != 0
    assert "metadata.name" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("before", "after", "field"),
    [
        ({"storageClassName": "a"}, {"storageClassName": "b"}, "spec.home.storageClassName"),
        ({"size": "1Gi"}, {"size": "2Gi"}, "spec.home.size"),
    ],
)
def test_home_volume_cannot_change_class_or_size(
    installed: LocalCluster, before: dict[str, Any], after: dict[str, Any], field: str
) -> None:
    name = f"home-{uuid.uuid4().hex[:6]}"
    obj = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": LABS},
        "spec": {"user": "a", "suspend": True, "home": before},
    }
    installed.kubectl("create", "-f", "-", input=json.dumps(obj))
    try:
        patch = json.dumps({"spec": {"home": after}})
        result = installed.kubectl(
            "-n", LABS, "patch", "ks", name, "--type", "merge", "-p", patch, check=False
        )
        assert result.returncode != 0
        assert field in result.stderr, result.stderr
        assert "cannot change" in result.stderr
    finally:
        installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)


async def test_api_answers_422(installed: LocalCluster) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    from kernelsession.client import KernelSessionClient

    async with KernelSessionClient(namespace=LABS, kubeconfig=str(installed.kubeconfig)) as ks:
        with pytest.raises(ApiException) as info:
            await ks.create("bad-api", "a", culling={"idleTimeoutSeconds": -3})
    assert info.value.status == 422
    assert "spec.culling.idleTimeoutSeconds" in json.loads(info.value.body)["message"]


# Specs the schema admits but the API server refuses on the lab pod (Pod Security
# "restricted" in namespace labs, core pod validation): the session goes Failed and
# the message names the session field to fix.
POD_REJECTED: list[tuple[str, dict[str, Any], str]] = [
    (
        "request-over-limit",
        {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1", "memory": "64Mi"}}},
        "spec.resources",
    ),
    (
        "mount-unknown-volume",
        {"volumeMounts": [{"name": "nope", "mountPath": "/data"}]},
        "spec.volumeMounts",
    ),
]


def _reconcile_errors(operator: InClusterOperator) -> float:
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("kernelsession_reconcile_errors_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_operator_keeps_serving_valid_sessions_among_invalid(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    """Everything invalid at once (the 422 table, names, pod-rejected specs) with a
    valid session in the middle: the invalid ones are refused naming the field or turn
    Failed naming it; the valid one becomes Ready; the operator stays up and does not
    loop on errors."""
    pid = operator.instance()
    errors_before = _reconcile_errors(operator)
    tag = uuid.uuid4().hex[:6]
    valid = f"valid{tag}"
    rejected_names = [f"rej{tag}-{case}" for case, _, _ in POD_REJECTED]
    try:
        for case, spec, field in INVALID[: len(INVALID) // 2]:
            obj = _session(f"bad{tag}-{case}", spec)
            result = installed.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
            assert field in result.stderr, (case, result.stderr)
        for name, (_, spec, _) in zip(rejected_names, POD_REJECTED, strict=True):
            installed.apply([_session(name, {"user": "pat", **spec})])
        installed.apply([_session(valid, {"user": "pat"})])
        for case, spec, field in INVALID[len(INVALID) // 2 :]:
            obj = _session(f"bad{tag}-{case}", spec)
            result = installed.kubectl("create", "-f", "-", input=json.dumps(obj), check=False)
            assert field in result.stderr, (case, result.stderr)

        for name, (case, _, field) in zip(rejected_names, POD_REJECTED, strict=True):
            status = wait_phase(installed, name, "Failed", timeout=60)
            print(f"{case}: {status['reason']}: {status['message']}")
            assert status["reason"] == "PodRejected"
            assert f"Check {field}." in status["message"], (case, status["message"])
            assert not children(installed, name).get("Pod")
        wait_phase(installed, valid, "Ready", timeout=90)

        assert operator.instance() == pid
        assert operator.running()
        errors = _reconcile_errors(operator) - errors_before
        assert errors <= 3, f"{errors} reconcile errors while rejecting bad input"
        listed = installed.get_json("-n", LABS, "ks")["items"]
        assert not [k for k in listed if k["metadata"]["name"].startswith(f"bad{tag}")]
    finally:
        installed.kubectl(
            "-n",
            LABS,
            "delete",
            "ks",
            valid,
            *rejected_names,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )


def _session(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": LABS},
        "spec": spec,
    }
