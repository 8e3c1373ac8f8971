"""The local cluster's ingress controller, pure parts: Traefik's manifests and flags, its
image's files and content hash, and the error naming what is missing."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from kernelsession.localcluster.building import gobuild, images, ingressbinaries, oci
from kernelsession.localcluster.deploy import ingress

IMAGE = "localhost/kernelsession/traefik:0123456789abcdef"
PROXY_IMAGE = "localhost/kernelsession/base:0123456789abcdef"


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objs]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objs}


def test_objects_and_their_order() -> None:
    objs = ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE)
    assert [o["kind"] for o in objs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "IngressClass",
    ]
    ns = objs[0]
    assert ns["metadata"]["name"] == "kernelsession-ingress"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs[1:]:
        if o["kind"] in ("ServiceAccount", "Service", "Deployment"):
            assert o["metadata"]["namespace"] == "kernelsession-ingress"
        assert o["metadata"]["labels"]["app.kubernetes.io/name"] == "traefik"


def test_rbac_is_exactly_what_the_provider_reads_and_writes() -> None:
    k = _by_kind(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE))
    granted = {
        (group, resource, verb)
        for rule in k["ClusterRole"]["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    watched = [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.k8s.io", "ingresses"),
        ("networking.k8s.io", "ingressclasses"),
    ]
    expected = {(g, r, v) for g, r in watched for v in ("list", "watch")}
    expected.add(("networking.k8s.io", "ingresses/status", "update"))
    assert granted == expected
    binding = k["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == k["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "traefik", "namespace": "kernelsession-ingress"}
    ]
    assert k["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == "traefik"


def test_deployment_is_hardened_and_probed() -> None:
    k = _by_kind(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE))
    pod = k["Deployment"]["spec"]["template"]["spec"]
    container, _proxy = pod["containers"]
    assert container["image"] == IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == images.TRAEFIK_UID
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/ping", "port": "traefik"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": 8000, "traefik": 8080}
    assert "limits" in container["resources"]


def test_service_and_selector_match_the_pod_labels() -> None:
    k = _by_kind(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE))
    labels = k["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert ingress.POD_LABELS == {"app.kubernetes.io/name": "traefik"}
    assert k["Deployment"]["spec"]["selector"]["matchLabels"] == dict(ingress.POD_LABELS)
    assert k["Service"]["spec"]["selector"] == dict(ingress.POD_LABELS)
    assert all(labels[key] == v for key, v in ingress.POD_LABELS.items())
    assert k["Service"]["spec"]["type"] == "ClusterIP"
    # a fixed address in the static band of the service range, the one Traefik publishes
    assert k["Service"]["spec"]["clusterIP"] == ingress.SERVICE_IP == "10.96.0.80"
    assert k["Service"]["spec"]["ports"] == [
        {"name": "web", "port": 80, "targetPort": "web", "protocol": "TCP"}
    ]


def test_ingress_class() -> None:
    k = _by_kind(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE))
    ic = k["IngressClass"]
    assert ic["metadata"]["name"] == "traefik"
    assert ic["spec"] == {"controller": "traefik.io/ingress-controller"}
    assert ic["metadata"]["annotations"] == {"ingressclass.kubernetes.io/is-default-class": "true"}
    other = _by_kind(
        ingress.ingress_manifests(
            IMAGE, proxy_image=PROXY_IMAGE, class_name="edge", default_class=False
        )
    )
    assert "annotations" not in other["IngressClass"]["metadata"]
    assert (
        "--providers.kubernetesingress.ingressClass=edge"
        in (other["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"])
    )


def test_flags_route_ingresses_keep_websockets_and_contact_nothing_outside() -> None:
    args = ingress.traefik_args()
    assert "--providers.kubernetesingress=true" in args
    assert "--providers.kubernetesingress.ingressClass=traefik" in args
    assert "--providers.kubernetesingress.strictPrefixMatching=true" in args
    assert "--entryPoints.web.address=:8000" in args
    assert "--entryPoints.web.transport.respondingTimeouts.readTimeout=0s" in args
    assert "--global.checkNewVersion=false" in args
    assert "--global.sendAnonymousUsage=false" in args
    assert "--ping=true" in args
    assert "--accessLog=true" in args
    assert "--providers.kubernetesingress.ingressEndpoint.ip=10.96.0.80" in args
    # no dashboard/API, no plugins, no ACME, no tracing or metrics exporters
    for word in ("--api", "--experimental", "certificatesresolvers", "--tracing", "--metrics"):
        assert not any(a.lower().startswith(word.lower()) or word in a for a in args), word
    # every flag is a --key=value pair (Traefik's CLI syntax)
    assert all(a.startswith("--") and "=" in a for a in args)


def test_manifests_are_json_serialisable_and_deterministic() -> None:
    a = json.dumps(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE), sort_keys=True)
    assert a == json.dumps(
        ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE), sort_keys=True
    )


def test_controller_urls() -> None:
    c = ingress.IngressController(
        cluster=None,  # type: ignore[arg-type]  # url building needs no cluster
        namespace="kernelsession-ingress",
        class_name="traefik",
        service_name="traefik",
        service_ip="10.96.0.42",
        port=80,
        image=IMAGE,
        pod_labels=dict(ingress.POD_LABELS),
        ready_seconds=1.0,
    )
    assert c.address == "http://10.96.0.42"
    assert c.url("/labs/labs/alice/") == "http://10.96.0.42/labs/labs/alice/"
    assert c.url("x") == "http://10.96.0.42/x"
    assert c.service_dns == "traefik.kernelsession-ingress.svc.cluster.local"


def test_traefik_image_files_and_hash(tmp_path: Path) -> None:
    files = images.traefik_files(b"\x7fELF...")
    assert files["traefik"] == (b"\x7fELF...", 0o755)
    passwd = files["etc/passwd"][0].decode()
    assert f"traefik:x:{images.TRAEFIK_UID}:{images.TRAEFIK_UID}:" in passwd
    assert f"traefik:x:{images.TRAEFIK_UID}:" in files["etc/group"][0].decode()
    binary = tmp_path / "traefik"
    binary.write_bytes(b"one")
    h1 = images.traefik_hash(binary, "v3.7.13")
    assert h1 == images.traefik_hash(binary, "v3.7.13")
    assert h1 != images.traefik_hash(binary, "v3.7.12")
    binary.write_bytes(b"two")
    assert h1 != images.traefik_hash(binary, "v3.7.13")


def test_traefik_image_is_one_layer_run_as_non_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    binary = tmp_path / "traefik"
    binary.write_bytes(b"#!/not/really\n")
    binary.chmod(0o755)
    tag = images.traefik_hash(binary, "v3.7.13")
    built = images.build_traefik(binary, "v3.7.13", tag, log=False)
    assert built.ref == f"localhost/kernelsession/traefik:{tag}"
    assert images.cached("traefik", tag) is not None
    image = oci.read_archive(built.archive)
    assert image.user == f"{images.TRAEFIK_UID}:{images.TRAEFIK_UID}"
    assert len(image.manifest["layers"]) == 1
    assert image.config["config"]["Entrypoint"] == ["/traefik"]
    assert oci.list_files(built.archive) >= {"traefik", "etc/passwd", "etc/group"}
    with tarfile.open(built.archive) as tf:
        assert "index.json" in tf.getnames()


def test_missing_ingress_binary_error_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("KERNELSESSION_INGRESS_ASSETS", str(tmp_path / "nowhere"))
    with pytest.raises(gobuild.BinariesUnavailableError) as info:
        ingressbinaries.ensure_ingress(build_missing=False, log=False)
    message = str(info.value)
    assert ingressbinaries.TRAEFIK_VERSION in message
    assert "make ingress-binaries" in message
    assert "KERNELSESSION_INGRESS_ASSETS" in message
    assert str(tmp_path / "nowhere") in message
    assert ingressbinaries.TRAEFIK_VERSION in str(ingressbinaries.ingress_cache_dir())


def test_ingress_assets_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "traefik").write_bytes(b"")
    (assets / "traefik").chmod(0o755)
    monkeypatch.setenv("KERNELSESSION_INGRESS_ASSETS", str(assets))
    found = ingressbinaries.ensure_ingress(build_missing=False, log=False)
    assert found.traefik == assets.resolve() / "traefik"


def test_default_image_set_has_no_ingress() -> None:
    assert "traefik" not in images.NAMES
    assert "traefik" not in images.NODE_IMAGES
    assert images.OPTIONAL_IMAGES == ("traefik",)


def test_traefik_reads_no_secret_through_its_api_proxy() -> None:
    """Traefik's service account has no access to Secrets; its API proxy sidecar never asks
    the API server for one and answers Traefik's own requests for them with nothing."""
    k = _by_kind(ingress.ingress_manifests(IMAGE, proxy_image=PROXY_IMAGE))
    assert not any("secrets" in rule["resources"] for rule in k["ClusterRole"]["rules"])
    pod = k["Deployment"]["spec"]["template"]["spec"]
    traefik, proxy = pod["containers"]
    assert "--providers.kubernetesingress.endpoint=http://127.0.0.1:8001" in traefik["args"]
    assert proxy["image"] == PROXY_IMAGE
    assert proxy["securityContext"] == traefik["securityContext"]
    source = k["ConfigMap"]["data"]["apiproxy.py"]
    assert "def secret_answer" in source
    assert {"name": "apiproxy", "configMap": {"name": "traefik-apiproxy"}} in pod["volumes"]


@pytest.mark.parametrize(
    ("method", "target", "status", "documents", "kept_open"),
    [
        ("GET", "/api/v1/secrets?labelSelector=owner%21%3Dhelm&limit=500", 200, 1, 0.0),
        ("GET", "/api/v1/namespaces/labs/secrets?resourceVersion=0", 200, 1, 0.0),
        ("GET", "/api/v1/secrets?watch=true&timeoutSeconds=42", 200, 0, 42.0),
        ("GET", "/api/v1/secrets?watch=1&sendInitialEvents=true&timeoutSeconds=9", 200, 1, 9.0),
        ("GET", "/api/v1/namespaces/labs/secrets/acc-bob-token", 404, 1, 0.0),
        ("DELETE", "/api/v1/namespaces/labs/secrets/acc-bob-token", 403, 1, 0.0),
    ],
)
def test_api_proxy_answers_secret_requests_itself(
    method: str, target: str, status: int, documents: int, kept_open: float
) -> None:
    from kernelsession.localcluster.deploy._ingress_apiproxy import secret_answer

    answer = secret_answer(method, target)
    assert answer is not None
    got_status, docs, seconds = answer
    assert (got_status, len(docs), seconds) == (status, documents, kept_open)
    for doc in docs:
        parsed = json.loads(doc)
        assert "data" not in parsed
        assert "data" not in parsed.get("object", {})
        if parsed.get("kind") == "SecretList":
            assert parsed["items"] == []


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/services?watch=true",
        "/apis/networking.k8s.io/v1/ingresses",
        "/api/v1/namespaces/secrets/services",  # a namespace named "secrets"
        "/version",
    ],
)
def test_api_proxy_forwards_everything_else(target: str) -> None:
    from kernelsession.localcluster.deploy._ingress_apiproxy import secret_answer

    assert secret_answer("GET", target) is None
