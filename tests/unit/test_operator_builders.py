"""Pure builders: children of a session, their ownership, labels and hardening (builders,
labpod, homeclaim)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kernelsession.operator import builders, homeclaim, labpod, naming
from kernelsession.operator.config import IngressSettings, Settings

SESSION: dict[str, Any] = {
    "apiVersion": "kernelsession.dev/v1alpha1",
    "kind": "KernelSession",
    "metadata": {"name": "alice", "namespace": "labs", "uid": "uid-1", "generation": 1},
    "spec": {"user": "alice"},
}


def _owner_ok(manifest: dict[str, Any]) -> None:
    (ref,) = manifest["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-1"
    assert ref["kind"] == "KernelSession"
    assert ref["controller"] is True
    assert manifest["metadata"]["namespace"] == "labs"
    labels = manifest["metadata"]["labels"]
    assert labels[naming.MANAGED_BY] == "kernelsession-operator"
    assert labels[naming.SESSION_LABEL] == "alice"
    assert labels[naming.USER_LABEL] == "alice"


def test_token_secret_holds_token_only_in_data() -> None:
    secret = builders.token_secret(SESSION, "s3cr3t-token")
    _owner_ok(secret)
    assert secret["metadata"]["name"] == "alice-token"
    assert base64.b64decode(secret["data"]["token"]).decode() == "s3cr3t-token"
    assert secret["immutable"] is True
    without_data = {k: v for k, v in secret.items() if k != "data"}
    assert "s3cr3t-token" not in json.dumps(without_data)


def test_new_tokens_are_long_and_distinct() -> None:
    tokens = {builders.new_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 40 for t in tokens)


def test_pod_is_hardened_and_gets_token_by_reference() -> None:
    pod = labpod.lab_pod(SESSION, Settings(), "secret-uid")
    _owner_ok(pod)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = spec["containers"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    token_env = next(e for e in c["env"] if e["name"] == "JUPYTER_TOKEN")
    assert token_env["valueFrom"]["secretKeyRef"] == {"name": "alice-token", "key": "token"}
    assert "value" not in token_env
    assert c["command"] == ["jupyter"]
    assert "--ServerApp.ip=0.0.0.0" in c["args"]
    assert "--ServerApp.port=8888" in c["args"]
    assert "--ServerApp.iopub_data_rate_limit=0" in c["args"]
    assert c["readinessProbe"]["httpGet"]["port"] == 8888
    assert c["image"] == Settings().default_image
    assert c["resources"] == dict(Settings().default_resources)


def test_pod_name_is_stable_and_changes_with_spec() -> None:
    a = labpod.lab_pod(SESSION, Settings(), "u")["metadata"]["name"]
    b = labpod.lab_pod(SESSION, Settings(), "u")["metadata"]["name"]
    assert a == b
    assert a.startswith("alice-lab-")
    changed = {**SESSION, "spec": {"user": "alice", "image": "other:1"}}
    assert labpod.lab_pod(changed, Settings(), "u")["metadata"]["name"] != a
    assert labpod.lab_pod(SESSION, Settings(), "new-secret")["metadata"]["name"] != a
    culling_only = {**SESSION, "spec": {"user": "alice", "culling": {"idleTimeoutSeconds": 5}}}
    assert labpod.lab_pod(culling_only, Settings(), "u")["metadata"]["name"] == a


def test_user_env_and_scheduling_fields_pass_through() -> None:
    spec = {
        "user": "bob",
        "env": [{"name": "A", "value": "1"}],
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "podLabels": {"team": "x", naming.SESSION_LABEL: "spoofed", naming.CLIENT_LABEL: "true"},
        "resources": {"requests": {"cpu": "1"}},
    }
    pod = labpod.lab_pod({**SESSION, "spec": spec}, Settings(), "u")
    (c,) = pod["spec"]["containers"]
    assert {"name": "A", "value": "1"} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "1"}}
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["metadata"]["labels"]["team"] == "x"
    assert pod["metadata"]["labels"][naming.SESSION_LABEL] == "alice"  # ours win
    assert naming.CLIENT_LABEL not in pod["metadata"]["labels"]  # a lab is never a client


def test_service_and_network_policy() -> None:
    svc = builders.service(SESSION, Settings())
    _owner_ok(svc)
    assert svc["spec"]["ports"][0]["port"] == 8888
    assert svc["spec"]["selector"][naming.SESSION_LABEL] == "alice"
    pol = builders.network_policy(SESSION, Settings(operator_namespace="ops"))
    _owner_ok(pol)
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = pol["spec"]["ingress"]
    client, operator = rule["from"]
    assert client == {"podSelector": {"matchLabels": {naming.CLIENT_LABEL: "true"}}}
    assert operator["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ops"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8888}]


@pytest.mark.parametrize(
    ("mode", "ip", "expected"),
    [
        ("service", None, "http://alice.labs.svc.cluster.local:8888/"),
        ("pod-ip", "127.0.1.5", "http://127.0.1.5:8888/"),
        ("pod-ip", None, None),
    ],
)
def test_lab_url(mode: str, ip: str | None, expected: str | None) -> None:
    assert builders.lab_url(SESSION, Settings(url_mode=mode), ip) == expected  # type: ignore[arg-type]


def test_home_claim_is_retained_by_default_owned_with_delete_labelled_and_sized() -> None:
    assert homeclaim.home_claim(SESSION) is None
    home = {"size": "5Gi", "storageClassName": "x"}
    body = SESSION | {"spec": {"user": "alice", "home": home}}
    claim = homeclaim.home_claim(body)
    assert claim is not None
    assert "ownerReferences" not in claim["metadata"]  # the garbage collector leaves it
    assert claim["metadata"]["labels"][naming.USER_LABEL] == "alice"
    assert claim["metadata"]["labels"][naming.SESSION_LABEL] == SESSION["metadata"]["name"]
    assert claim["metadata"]["namespace"] == SESSION["metadata"]["namespace"]
    deleted = SESSION | {"spec": {"user": "alice", "home": home | {"reclaimPolicy": "Delete"}}}
    owned = homeclaim.home_claim(deleted)
    assert owned is not None
    _owner_ok(owned)
    assert claim["metadata"]["name"] == "alice-home"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "x"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    default = homeclaim.home_claim(SESSION | {"spec": {"user": "alice", "home": {}}})
    assert default is not None
    assert "storageClassName" not in default["spec"]  # the cluster's default class


@pytest.mark.parametrize(
    ("home", "path"), [({}, "/home/jovyan"), ({"mountPath": "/work"}, "/work")]
)
def test_pod_mounts_home_with_fs_group(home: dict[str, Any], path: str) -> None:
    body = SESSION | {"spec": {"user": "alice", "home": home}}
    spec = labpod.pod_spec(body, Settings())
    (mount,) = spec["containers"][0]["volumeMounts"]
    assert mount == {"name": naming.HOME_VOLUME, "mountPath": path}
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "alice-home"}
    assert spec["securityContext"]["fsGroup"] == Settings().run_as_group
    assert spec["securityContext"]["runAsUser"] == 1000


def test_pod_without_home_is_unchanged() -> None:
    """Sessions that do not ask for a home keep their pod (and its name) on upgrade."""
    spec = labpod.pod_spec(SESSION, Settings())
    assert "volumes" not in spec
    assert "volumeMounts" not in spec["containers"][0]
    assert "fsGroupChangePolicy" not in spec["securityContext"]


def test_liveness_waits_for_the_startup_probe_over_the_start_timeout() -> None:
    """A slow start (a busy node) is never restarted by liveness: the startup probe allows
    the session's start timeout, then liveness takes over."""
    from kernelsession.operator.labpod import pod_spec

    body = {
        "metadata": {"name": "s", "namespace": "labs"},
        "spec": {"user": "u", "startTimeoutSeconds": 301},
    }
    (c,) = pod_spec(body, Settings())["containers"]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 301
    assert "initialDelaySeconds" not in c["livenessProbe"]


INGRESS = IngressSettings(
    controller_namespace="edge",
    controller_labels={"app": "traefik"},
    class_name="traefik",
    host="labs.example.org",
    tls_secret="labs-tls",
    annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "3600"},
)


def test_without_ingress_settings_there_is_no_ingress_and_no_base_url() -> None:
    cfg = Settings()
    assert builders.ingress(SESSION, cfg) is None
    assert builders.external_url(SESSION, cfg) is None
    assert builders.base_path(SESSION, cfg) == "/"
    container = labpod.pod_spec(SESSION, cfg)["containers"][0]
    assert not [a for a in container["args"] if "base_url" in a]
    assert container["readinessProbe"]["httpGet"]["path"] == "/api"


def test_ingress_routes_the_session_path_to_its_service() -> None:
    cfg = Settings(ingress=INGRESS)
    ing = builders.ingress(SESSION, cfg)
    assert ing is not None
    _owner_ok(ing)
    assert ing["metadata"]["name"] == "alice"
    assert ing["metadata"]["annotations"] == dict(INGRESS.annotations)
    assert ing["spec"]["ingressClassName"] == "traefik"
    assert ing["spec"]["tls"] == [{"secretName": "labs-tls", "hosts": ["labs.example.org"]}]
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "labs.example.org"
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/labs/labs/alice/"
    assert path["pathType"] == "Prefix"
    assert path["backend"]["service"] == {"name": "alice", "port": {"name": "http"}}
    assert builders.external_url(SESSION, cfg) == "https://labs.example.org/labs/labs/alice/"


def test_minimal_ingress_has_no_class_host_or_tls() -> None:
    cfg = Settings(ingress=IngressSettings(controller_namespace="edge"))
    ing = builders.ingress(SESSION, cfg)
    assert ing is not None
    assert set(ing["spec"]) == {"rules"}
    assert "host" not in ing["spec"]["rules"][0]
    assert "annotations" not in ing["metadata"]
    assert builders.external_url(SESSION, cfg) is None


def test_the_lab_serves_under_the_ingress_path_everywhere() -> None:
    cfg = Settings(ingress=INGRESS, url_mode="service")
    container = labpod.pod_spec(SESSION, cfg)["containers"][0]
    assert "--ServerApp.base_url=/labs/labs/alice/" in container["args"]
    for probe in ("readinessProbe", "startupProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/labs/labs/alice/api"
    assert builders.lab_url(SESSION, cfg, None) == (
        "http://alice.labs.svc.cluster.local:8888/labs/labs/alice/"
    )
    other = Settings(ingress=INGRESS, url_mode="pod-ip")
    assert builders.lab_url(SESSION, other, "10.0.0.9") == "http://10.0.0.9:8888/labs/labs/alice/"


def test_network_policy_admits_the_ingress_controller() -> None:
    pol = builders.network_policy(SESSION, Settings(ingress=INGRESS))
    (rule,) = pol["spec"]["ingress"]
    assert len(rule["from"]) == 3
    controller = rule["from"][2]
    assert controller["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "edge"}
    assert controller["podSelector"]["matchLabels"] == {"app": "traefik"}
    assert rule["ports"] == [{"protocol": "TCP", "port": 8888}]


def test_child_patch_restores_spec_and_our_annotations_only() -> None:
    desired = builders.ingress(SESSION, Settings(ingress=INGRESS))
    assert desired is not None
    spec = desired["spec"]
    ours = dict(INGRESS.annotations)
    assert builders.child_patch(desired, spec, ours | {"controller/x": "1"}, "5") is None
    edited = json.loads(json.dumps(spec))
    edited["rules"][0]["http"]["paths"][0]["path"] = "/"
    edited["defaultBackend"] = {"service": {"name": "evil", "port": {"number": 80}}}
    patch = builders.child_patch(desired, edited, {}, "5")
    assert patch is not None
    assert patch["metadata"] == {"resourceVersion": "5", "annotations": ours}
    assert patch["spec"]["rules"] == spec["rules"]
    assert patch["spec"]["defaultBackend"] is None  # removed by the merge patch
    assert patch["spec"]["tls"] == spec["tls"]


def test_claim_owner_patch_follows_the_reclaim_policy() -> None:
    uid = SESSION["metadata"]["uid"]
    retain = SESSION | {"spec": {"user": "alice", "home": {}}}
    delete = SESSION | {"spec": {"user": "alice", "home": {"reclaimPolicy": "Delete"}}}
    assert homeclaim.claim_owner_patch(retain, (), "5") is None
    drop = homeclaim.claim_owner_patch(retain, (uid,), "5")
    assert drop == {"metadata": {"ownerReferences": None, "resourceVersion": "5"}}
    assert homeclaim.claim_owner_patch(delete, (uid,), "5") is None
    add = homeclaim.claim_owner_patch(delete, (), "5")
    assert add is not None
    assert [o["uid"] for o in add["metadata"]["ownerReferences"]] == [uid]


def test_spec_hash_ignores_what_needs_no_new_pod() -> None:
    base = labpod.spec_hash(SESSION, "u")
    calm = SESSION | {
        "spec": {
            **SESSION["spec"],
            "culling": {"idleTimeoutSeconds": 5},
            "startTimeoutSeconds": 9,
            "suspend": False,
        }
    }
    assert labpod.spec_hash(calm, "u") == base
    assert labpod.spec_hash(SESSION, "other-token") != base
    image = SESSION | {"spec": {**SESSION["spec"], "image": "x:2"}}
    assert labpod.spec_hash(image, "u") != base
