"""The API server itself rejects invalid sessions (422) and names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import LABS

from kernelsession.localcluster.cluster import LocalCluster

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


async def test_api_answers_422(installed: LocalCluster) -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    from kernelsession.client import KernelSessionClient

    async with KernelSessionClient(namespace=LABS, kubeconfig=str(installed.kubeconfig)) as ks:
        with pytest.raises(ApiException) as info:
            await ks.create("bad-api", "a", culling={"idleTimeoutSeconds": -3})
    assert info.value.status == 422
    assert "spec.culling.idleTimeoutSeconds" in json.loads(info.value.body)["message"]
