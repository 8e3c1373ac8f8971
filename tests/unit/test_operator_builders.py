"""Pure builders: children of a session, their ownership, labels and hardening."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from kernelsession.operator import builders, naming
from kernelsession.operator.config import Settings

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
    pod = builders.lab_pod(SESSION, Settings(), "secret-uid")
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
    a = builders.lab_pod(SESSION, Settings(), "u")["metadata"]["name"]
    b = builders.lab_pod(SESSION, Settings(), "u")["metadata"]["name"]
    assert a == b
    assert a.startswith("alice-lab-")
    changed = {**SESSION, "spec": {"user": "alice", "image": "other:1"}}
    assert builders.lab_pod(changed, Settings(), "u")["metadata"]["name"] != a
    assert builders.lab_pod(SESSION, Settings(), "new-secret")["metadata"]["name"] != a
    culling_only = {**SESSION, "spec": {"user": "alice", "culling": {"idleTimeoutSeconds": 5}}}
    assert builders.lab_pod(culling_only, Settings(), "u")["metadata"]["name"] == a


def test_user_env_and_scheduling_fields_pass_through() -> None:
    spec = {
        "user": "bob",
        "env": [{"name": "A", "value": "1"}],
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "podLabels": {"team": "x", naming.SESSION_LABEL: "spoofed"},
        "resources": {"requests": {"cpu": "1"}},
    }
    pod = builders.lab_pod({**SESSION, "spec": spec}, Settings(), "u")
    (c,) = pod["spec"]["containers"]
    assert {"name": "A", "value": "1"} in c["env"]
    assert c["resources"] == {"requests": {"cpu": "1"}}
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["metadata"]["labels"]["team"] == "x"
    assert pod["metadata"]["labels"][naming.SESSION_LABEL] == "alice"  # ours win


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
    assert client["podSelector"]["matchLabels"] == {naming.CLIENT_LABEL: "true"}
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


def test_home_claim_is_owned_labelled_and_sized() -> None:
    assert builders.home_claim(SESSION) is None
    body = SESSION | {"spec": {"user": "alice", "home": {"size": "5Gi", "storageClassName": "x"}}}
    claim = builders.home_claim(body)
    assert claim is not None
    _owner_ok(claim)
    assert claim["metadata"]["name"] == "alice-home"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["storageClassName"] == "x"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    default = builders.home_claim(SESSION | {"spec": {"user": "alice", "home": {}}})
    assert default is not None
    assert "storageClassName" not in default["spec"]  # the cluster's default class


@pytest.mark.parametrize(
    ("home", "path"), [({}, "/home/jovyan"), ({"mountPath": "/work"}, "/work")]
)
def test_pod_mounts_home_with_fs_group(home: dict[str, Any], path: str) -> None:
    body = SESSION | {"spec": {"user": "alice", "home": home}}
    spec = builders.pod_spec(body, Settings())
    (mount,) = spec["containers"][0]["volumeMounts"]
    assert mount == {"name": naming.HOME_VOLUME, "mountPath": path}
    (volume,) = spec["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "alice-home"}
    assert spec["securityContext"]["fsGroup"] == Settings().run_as_group
    assert spec["securityContext"]["runAsUser"] == 1000


def test_pod_without_home_is_unchanged() -> None:
    """Sessions that do not ask for a home keep their pod (and its name) on upgrade."""
    spec = builders.pod_spec(SESSION, Settings())
    assert "volumes" not in spec
    assert "volumeMounts" not in spec["containers"][0]
    assert "fsGroupChangePolicy" not in spec["securityContext"]


def test_liveness_waits_for_the_startup_probe_over_the_start_timeout() -> None:
    """A slow start (a busy node) is never restarted by liveness: the startup probe allows
    the session's start timeout, then liveness takes over."""
    from kernelsession.operator.builders import pod_spec
    from kernelsession.operator.config import Settings

    body = {
        "metadata": {"name": "s", "namespace": "labs"},
        "spec": {"user": "u", "startTimeoutSeconds": 301},
    }
    (c,) = pod_spec(body, Settings())["containers"]
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 301
    assert "initialDelaySeconds" not in c["livenessProbe"]
