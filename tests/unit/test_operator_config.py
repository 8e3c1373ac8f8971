"""Operator configuration from the environment: defaults, parsing and clear errors."""

from __future__ import annotations

import pytest

from kernelsession.operator.config import ConfigError, from_env


def test_defaults_outside_a_cluster_use_pod_ips() -> None:
    s = from_env({})
    assert s.namespaces == ("labs",)
    assert s.url_mode == "pod-ip"
    assert from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).url_mode == "service"


def test_values_are_parsed() -> None:
    s = from_env(
        {
            "KERNELSESSION_NAMESPACES": "a, b",
            "KERNELSESSION_DEFAULT_IDLE_TIMEOUT": "0",
            "KERNELSESSION_CULL_INTERVAL": "0.5",
            "KERNELSESSION_DEFAULT_RESOURCES": '{"requests": {"cpu": "1"}}',
            "KERNELSESSION_URL_MODE": "service",
        }
    )
    assert s.namespaces == ("a", "b")
    assert s.default_idle_timeout == 0
    assert s.cull_interval == 0.5
    assert s.default_resources == {"requests": {"cpu": "1"}}
    assert from_env({"KERNELSESSION_NAMESPACES": "*"}).clusterwide


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DEFAULT_IDLE_TIMEOUT", "soon"),
        ("DEFAULT_START_TIMEOUT", "0"),
        ("CULL_INTERVAL", "-1"),
        ("DEFAULT_RESOURCES", "{not json"),
        ("DEFAULT_RESOURCES", '{"cpu": 1}'),
        ("URL_MODE", "magic"),
        ("LOG_FORMAT", "xml"),
        ("PROFILE_NAMESPACE_PREFIX", "Lab_"),
        ("PROFILE_NAMESPACE_PREFIX", "-lab"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"KERNELSESSION_{var}"):
        from_env({f"KERNELSESSION_{var}": value})


def test_new_settings_and_flags_override_the_environment() -> None:
    s = from_env(
        {
            "KERNELSESSION_UNSCHEDULABLE_GRACE": "5",
            "KERNELSESSION_LEADER_ELECTION": "true",
            "POD_NAME": "op-abc",
            "KERNELSESSION_OPERATOR_NAMESPACE": "ops",
            "KERNELSESSION_METRICS_PORT": "1",
        },
        {"METRICS_PORT": "2"},
    )
    assert s.unschedulable_grace == 5
    assert s.leader_election
    assert s.leader_identity == "op-abc"
    assert s.lease_namespace == "ops"
    assert s.metrics_port == 2
    assert from_env({}).unschedulable_grace == 120
    with pytest.raises(ConfigError, match="KERNELSESSION_LEADER_ELECTION"):
        from_env({"KERNELSESSION_LEADER_ELECTION": "maybe"})


INGRESS_ON = {
    "KERNELSESSION_INGRESS": "true",
    "KERNELSESSION_INGRESS_CONTROLLER_NAMESPACE": "ingress-nginx",
}


def test_no_ingress_unless_asked() -> None:
    assert from_env({}).ingress is None
    assert from_env({"KERNELSESSION_INGRESS": "false"}).ingress is None


def test_ingress_settings_are_parsed() -> None:
    s = from_env(
        INGRESS_ON
        | {
            "KERNELSESSION_INGRESS_CLASS": "nginx",
            "KERNELSESSION_INGRESS_HOST": "Labs.Example.org",
            "KERNELSESSION_INGRESS_TLS_SECRET": "labs-tls",
            "KERNELSESSION_INGRESS_PATH": "/jupyter/{namespace}/{name}/",
            "KERNELSESSION_INGRESS_ANNOTATIONS": '{"a.b/c": "3600"}',
            "KERNELSESSION_INGRESS_CONTROLLER_LABELS": "app=ingress, tier = edge",
        }
    ).ingress
    assert s is not None
    assert (s.class_name, s.host, s.tls_secret) == ("nginx", "labs.example.org", "labs-tls")
    assert s.path == "/jupyter/{namespace}/{name}/"
    assert s.annotations == {"a.b/c": "3600"}
    assert s.controller_namespace == "ingress-nginx"
    assert s.controller_labels == {"app": "ingress", "tier": "edge"}
    assert s.external_base == "https://labs.example.org"


def test_ingress_defaults_and_external_base() -> None:
    s = from_env(INGRESS_ON).ingress
    assert s is not None
    assert (s.class_name, s.host, s.tls_secret, s.path) == ("", "", "", "/labs/{namespace}/{name}/")
    assert s.external_base is None  # nothing names where users reach the controller
    url = from_env(INGRESS_ON | {"KERNELSESSION_INGRESS_URL": "http://10.0.0.5:8080/"}).ingress
    assert url is not None
    assert url.external_base == "http://10.0.0.5:8080"
    plain = from_env(INGRESS_ON | {"KERNELSESSION_INGRESS_HOST": "labs.test"}).ingress
    assert plain is not None
    assert plain.external_base == "http://labs.test"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("INGRESS_CONTROLLER_NAMESPACE", ""),
        ("INGRESS_HOST", "not a host"),
        ("INGRESS_PATH", "/labs/{name}/"),
        ("INGRESS_PATH", "labs/{namespace}/{name}/"),
        ("INGRESS_PATH", "/labs/{namespace}/{name}"),
        ("INGRESS_PATH", "/labs/{namespace}/{name}/{user}/"),
        ("INGRESS_URL", "https://labs.example.org/prefix"),
        ("INGRESS_ANNOTATIONS", '{"timeout": 3600}'),
        ("INGRESS_ANNOTATIONS", "[not json"),
        ("INGRESS_CONTROLLER_LABELS", "app"),
        ("INGRESS", "maybe"),
    ],
)
def test_bad_ingress_values_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"KERNELSESSION_{var}"):
        from_env(INGRESS_ON | {f"KERNELSESSION_{var}": value})


def test_profile_namespaces_and_patterns() -> None:
    s = from_env({"KERNELSESSION_NAMESPACES": "labs,lab-*"})
    assert s.namespaces == ("labs", "lab-*")
    assert s.profile_namespace_prefix == "lab-"
    assert (
        from_env({"KERNELSESSION_PROFILE_NAMESPACE_PREFIX": "u-"}).profile_namespace_prefix == "u-"
    )
