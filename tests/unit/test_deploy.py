"""What `make run` and the tests apply: the overlay over manifests/ with the locally built
operator image and the operator's settings, rendered by kubectl's own kustomize (no
cluster). The apply itself is exercised by every cluster test (the ``operator`` fixture)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from kernelsession.localcluster.building import binaries
from kernelsession.localcluster.deploy import write_overlay
from kernelsession.localcluster.deploy.operator_process import manifests_dir


def _render(directory: Path) -> list[dict[str, Any]]:
    found = binaries.find()
    assert found is not None, "no control-plane binaries: run make setup"
    assert found.kubectl is not None, "no kubectl: run make setup"
    out = subprocess.run(
        [str(found.kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _operator(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "operator"
    ]
    return {"deployment": deployment, "container": container}


def test_overlay_sets_the_local_image_settings_and_replicas(tmp_path: Path) -> None:
    base = _render(manifests_dir())
    overlay = write_overlay(
        tmp_path / "overlay",
        manifests_dir(),
        "localhost/ks/op:2",
        {"KERNELSESSION_DEFAULT_IMAGE": "localhost/kernelsession/lab:1", "B_SETTING": "x"},
        replicas=3,
    )
    rendered = _render(overlay)
    op = _operator(rendered)
    assert op["container"]["image"] == "localhost/ks/op:2"
    assert op["deployment"]["spec"]["replicas"] == 3
    env = {e["name"]: e for e in op["container"]["env"]}
    assert env["KERNELSESSION_DEFAULT_IMAGE"]["value"] == "localhost/kernelsession/lab:1"
    assert env["B_SETTING"]["value"] == "x"
    # the manifests' own settings stay (a strategic merge, not a replacement)
    base_env = {e["name"] for e in _operator(base)["container"]["env"]}
    assert base_env <= set(env)
    # nothing but the operator's Deployment differs from manifests/ as users apply it
    others = {_key(o): o for o in rendered if o["kind"] != "Deployment"}
    assert others == {_key(o): o for o in base if o["kind"] != "Deployment"}
    # the CRDs install apart (manifests/crds), the admission policies with the operator
    assert not [k for k in others if k[0] == "CustomResourceDefinition"]
    assert ("ValidatingAdmissionPolicy", "", "kernelsession-session") in others


def test_overlay_without_replicas_keeps_the_manifests_count(tmp_path: Path) -> None:
    base = _operator(_render(manifests_dir()))["deployment"]["spec"].get("replicas")
    overlay = write_overlay(tmp_path / "o", manifests_dir(), "localhost/ks/op:9", {})
    assert _operator(_render(overlay))["deployment"]["spec"].get("replicas") == base
