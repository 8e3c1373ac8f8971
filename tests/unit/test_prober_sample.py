"""manifests/samples/prober.yaml says what the prober needs, and no more (pure YAML checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

SAMPLES = Path(__file__).parents[2] / "manifests" / "samples"
SAMPLE = SAMPLES / "prober.yaml"


def _objects(path: Path = SAMPLE) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(path.read_text()) if d}


@pytest.mark.parametrize("sample", ["prober.yaml", "spawn-prober.yaml"])
def test_prober_samples_are_hardened_and_labelled_as_clients(sample: str) -> None:
    objects = _objects(SAMPLES / sample)
    assert {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"} <= set(objects)
    template = objects["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"]["kernelsession.dev/client"] == "true"
    pod = template["spec"]
    assert pod["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert container["command"] == ["kernelsession"]
    assert container["resources"]["limits"]["memory"]
    for o in objects.values():
        assert o["metadata"]["namespace"] == "labs"


def test_prober_sample_rbac_is_the_least_it_needs() -> None:
    objects = _objects()
    session = objects["KernelSession"]["metadata"]["name"]
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["probe", session]
    rules = objects["Role"]["rules"]
    assert rules == [
        {
            "apiGroups": ["kernelsession.dev"],
            "resources": ["kernelsessions"],
            "resourceNames": [session],
            "verbs": ["get"],
        },
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [f"{session}-token"],
            "verbs": ["get"],
        },
    ]
    binding = objects["RoleBinding"]
    assert binding["roleRef"]["name"] == objects["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == objects["ServiceAccount"]["metadata"]["name"]


def test_prober_sample_service_exposes_the_metrics_port() -> None:
    objects = _objects()
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9100" in container["args"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9100}]
    (port,) = objects["Service"]["spec"]["ports"]
    assert port["port"] == 9100
    assert port["targetPort"] == "metrics"
    assert objects["Service"]["spec"]["selector"].items() <= (
        objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    )


def test_spawn_prober_sample_asks_only_for_what_the_spawn_probe_does() -> None:
    objects = _objects(SAMPLES / "spawn-prober.yaml")
    verbs = {
        (group, resource): set(rule["verbs"])
        for rule in objects["Role"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert verbs == {
        ("kernelsession.dev", "kernelsessions"): {"create", "get", "list", "watch", "delete"},
        ("", "secrets"): {"get", "list"},
        ("", "pods"): {"get", "list"},
        ("", "services"): {"get", "list"},
        ("networking.k8s.io", "networkpolicies"): {"list"},
        ("", "persistentvolumeclaims"): {"list"},
    }
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["probe", "--spawn"]
    assert objects["Deployment"]["spec"]["strategy"]["type"] == "Recreate"
