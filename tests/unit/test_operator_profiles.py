"""LabProfile's pure parts: the namespace name, the objects kept in shape, the policy
ConfigMap's data (the admission policy's parameters), drift repair, plan and status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from kernelsession.operator import profileplan, profiles, quotas
from kernelsession.operator import status as st
from kernelsession.operator.config import Settings

SETTINGS = Settings(namespaces=("labs", "lab-*"), operator_namespace="ops")


def _profile(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "LabProfile",
        "metadata": {"name": "carol", "uid": "uid-1", "generation": 2, "resourceVersion": "7"},
        "spec": {"owner": {"kind": "User", "name": "carol"}, **spec},
    }


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("User", "carol", "carol"),
        ("Group", "ml-team", "group-ml-team"),
    ],
)
def test_owner_slug_keeps_valid_names(kind: str, name: str, expected: str) -> None:
    assert profiles.owner_slug(kind, name) == expected


def test_owner_slug_of_other_names_is_a_dns_label_with_a_digest() -> None:
    email = profiles.owner_slug("User", "Carol@Example.com")
    assert email.startswith("carol-example-com-")
    assert len(email) == len("carol-example-com-") + 6
    # two owners whose names sanitize alike never share a slug
    assert profiles.owner_slug("User", "carol.x") != profiles.owner_slug("User", "carol_x")
    long = profiles.owner_slug("User", "a" * 200)
    assert len(long) <= 57
    assert long[-7] == "-"


def test_namespace_defaults_to_prefix_and_owner_and_spec_wins() -> None:
    assert profiles.namespace_for(_profile(), SETTINGS) == "lab-carol"
    assert profiles.namespace_for(_profile(namespace="team-x"), SETTINGS) == "team-x"
    assert profiles.served("lab-carol", SETTINGS)
    assert profiles.served("labs", SETTINGS)
    assert not profiles.served("team-x", SETTINGS)
    assert profiles.served("anything", Settings(namespaces=()))  # cluster-wide


FULL_SPEC: dict[str, Any] = {
    "images": ["localhost/kernelsession/lab:*", "jupyter/base-notebook:2024"],
    "secrets": ["s3-creds"],
    "configMaps": ["team-config", "other"],
    "claims": ["shared-data"],
    "tolerations": [
        {"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"},
        {"key": "zone", "operator": "Equal", "value": "b"},
    ],
    "nodeSelector": {"pool": "labs", "disk": "ssd"},
    "lab": {"maxCPU": "2", "maxMemory": "4Gi"},
    "culling": {"maxIdleTimeoutSeconds": 7200, "maxAgeSeconds": 86400, "neverAllowed": True},
}


def test_policy_data_renders_every_key_in_the_agreed_format() -> None:
    assert profiles.policy_data(FULL_SPEC) == {
        "images": "localhost/kernelsession/lab:*\njupyter/base-notebook:2024",
        "secrets": "s3-creds",
        "configMaps": "team-config\nother",
        "claims": "shared-data",
        "tolerations": "gpu=a100:NoSchedule\nspot:NoExecute\nzone=b",
        "nodeSelector": "disk=ssd\npool=labs",
        "maxCPU": "2",
        "maxMemory": "4Gi",
        "maxIdleTimeoutSeconds": "7200",
        "maxAgeSeconds": "86400",
        "cullingNeverAllowed": "true",
    }


def test_policy_data_of_an_empty_profile_leaves_the_defaults() -> None:
    # images absent = any image; culling off is refused unless a profile allows it
    assert profiles.policy_data({"owner": {"kind": "User", "name": "x"}}) == {
        "cullingNeverAllowed": "false",
        "owner": "User x",
    }
    # an empty list is a rule too (nothing extra allowed), not an absent key
    assert profiles.policy_data({"secrets": []}) == {"secrets": "", "cullingNeverAllowed": "false"}


def test_desired_objects_in_order_labelled_and_owned_as_designed() -> None:
    profile = _profile(quota={"count/kernelsessions.kernelsession.dev": 3, "limits.cpu": "4"})
    objs = profiles.desired(profile, SETTINGS)
    names = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert names == [
        ("RoleBinding", "kernelsession-operator"),
        ("RoleBinding", "kernelsession-operator-profile"),
        ("ResourceQuota", "kernelsession-quota"),
        ("LimitRange", "kernelsession-limits"),
        ("ConfigMap", "kernelsession-policy"),
        ("NetworkPolicy", "kernelsession-default-deny"),
        ("RoleBinding", "kernelsession-owner"),  # the owner's access comes last
    ]
    for obj in objs:
        assert obj["metadata"]["namespace"] == "lab-carol"
        assert obj["metadata"]["labels"][profiles.PROFILE_LABEL] == "carol"
    operator, _, quota, _, _, policy, owner = objs
    assert operator["subjects"] == [
        {"kind": "ServiceAccount", "name": "kernelsession-operator", "namespace": "ops"}
    ]
    assert quota["spec"]["hard"] == {
        "count/kernelsessions.kernelsession.dev": "3",
        "limits.cpu": "4",
    }
    assert policy["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    assert owner["roleRef"]["name"] == profiles.OWNER_ROLE
    assert owner["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "carol"}
    ]
    # the owner's access goes with the profile (garbage collector), nothing else does
    (ref,) = owner["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["uid"], ref["name"]) == ("LabProfile", "uid-1", "carol")
    assert all("ownerReferences" not in o["metadata"] for o in objs[:-1])


def test_namespace_is_restricted_labelled_and_owned_only_under_delete() -> None:
    ns = profiles.namespace(_profile(owner={"kind": "Group", "name": "ML Team"}), SETTINGS)
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels[profiles.OWNER_KIND_LABEL] == "Group"
    assert labels[profiles.OWNER_LABEL].startswith("group-ml-team-")
    assert ns["metadata"]["annotations"][profiles.OWNER_ANNOTATION] == "ML Team"
    assert "ownerReferences" not in ns["metadata"]  # Retain: the namespace stays
    assert "namespace" not in ns["metadata"]
    deleted = profiles.namespace(_profile(deletionPolicy="Delete"), SETTINGS)
    assert deleted["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "namespace" not in deleted["metadata"]


def test_limit_range_from_the_profile_else_the_operator_defaults() -> None:
    lab = {
        "defaultResources": {"requests": {"cpu": "100m"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "maxCPU": "2",
        "maxMemory": "4Gi",
    }
    (item,) = profiles.limit_range(_profile(lab=lab), SETTINGS)["spec"]["limits"]
    assert item == {
        "type": "Container",
        "default": {"cpu": "1", "memory": "1Gi"},
        "defaultRequest": {"cpu": "100m", "memory": "1Gi"},  # as the API server defaults
        "max": {"cpu": "2", "memory": "4Gi"},
    }
    (fallback,) = profiles.limit_range(_profile(), SETTINGS)["spec"]["limits"]
    assert fallback["default"] == {"memory": "2Gi"}  # no lab runs without a memory limit
    # the operator's defaults are clamped to the profile's maximum (else the API refuses)
    small = {"maxMemory": "1Gi", "maxCPU": "200m"}
    (clamped,) = profiles.limit_range(_profile(lab=small), SETTINGS)["spec"]["limits"]
    assert clamped["default"] == {"memory": "1Gi", "cpu": "200m"}
    assert clamped["defaultRequest"] == {"cpu": "100m", "memory": "256Mi"}


def _as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    stored = copy.deepcopy(obj)
    stored["metadata"]["resourceVersion"] = "41"
    stored["metadata"].setdefault("labels", {})["other"] = "kept"
    return stored


def test_repair_is_none_in_shape_and_quantities_compare_by_value() -> None:
    for obj in profiles.desired(_profile(quota={"requests.memory": "1Gi"}), SETTINGS):
        assert profiles.repair(obj, _as_stored(obj)) is None
    quota = profiles.resource_quota(_profile(quota={"requests.memory": "1Gi"}), SETTINGS)
    stored = _as_stored(quota)
    stored["spec"]["hard"]["requests.memory"] = "1024Mi"  # how the API server may print it
    assert profiles.repair(quota, stored) is None


def test_repair_puts_edits_back_with_a_precondition() -> None:
    quota = profiles.resource_quota(_profile(quota={"limits.cpu": "2"}), SETTINGS)
    stored = _as_stored(quota)
    stored["spec"]["hard"] = {"limits.cpu": "200", "pods": "100"}
    assert profiles.repair(quota, stored) == {
        "spec": {"hard": {"limits.cpu": "2", "pods": None}},
        "metadata": {"resourceVersion": "41"},
    }
    ns = profiles.namespace(_profile(), SETTINGS)
    stored = _as_stored(ns)
    del stored["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
    stored["metadata"]["labels"][profiles.OWNER_KIND_LABEL] = "Group"
    patch = profiles.repair(ns, stored)
    assert patch == {
        "metadata": {
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                profiles.OWNER_KIND_LABEL: "User",
            },
            "resourceVersion": "41",
        }
    }
    owner = profiles.owner_binding(_profile(), SETTINGS)
    stored = _as_stored(owner)
    stored["subjects"].append({"kind": "User", "name": "mallory"})
    assert profiles.repair(owner, stored)["subjects"] == owner["subjects"]  # type: ignore[index]
    stored["roleRef"]["name"] = "cluster-admin"
    with pytest.raises(ValueError, match="refers to another role"):
        profiles.repair(owner, stored)
    config = profiles.policy_configmap(_profile(images=["a"]), SETTINGS)
    stored = _as_stored(config)
    stored["data"] = {"images": "*", "secrets": "acc-bob-token"}
    patch = profiles.repair(config, stored)
    assert patch is not None
    assert patch["data"] == {
        "images": "a",
        "secrets": None,
        "cullingNeverAllowed": "false",
        "owner": "User carol",
    }


def test_repair_sets_the_namespace_owner_when_the_policy_becomes_delete() -> None:
    retained = _as_stored(profiles.namespace(_profile(), SETTINGS))
    wanted = profiles.namespace(_profile(deletionPolicy="Delete"), SETTINGS)
    patch = profiles.repair(wanted, retained)
    assert patch is not None
    assert patch["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def _existing(profile: dict[str, Any], counted: bool = True) -> dict[profileplan.ObjectKey, Any]:
    objs = [profiles.namespace(profile, SETTINGS), *profiles.desired(profile, SETTINGS)]
    found = {profileplan.key_of(o): _as_stored(o) for o in objs}
    quota = found[("ResourceQuota", "lab-carol", "kernelsession-quota")]
    if counted:
        quota["status"] = {"hard": dict(quota["spec"]["hard"]), "used": {}}
        quota["status"]["used"] = {k: "0" for k in quota["spec"]["hard"]}
    return found


def test_not_ready_until_the_quota_controller_has_counted() -> None:
    profile = _profile(quota={"count/kernelsessions.kernelsession.dev": "3"})
    waiting = profileplan.plan(profile, SETTINGS, _existing(profile, counted=False))
    assert (waiting.ready, waiting.reason, waiting.steps) == (False, "QuotaPending", [])
    # hard copied to status at once, the count not yet: still waiting
    unknown = _existing(profile, counted=False)
    quota = unknown[("ResourceQuota", "lab-carol", "kernelsession-quota")]
    quota["status"] = {"hard": dict(quota["spec"]["hard"])}
    assert profileplan.plan(profile, SETTINGS, unknown).reason == "QuotaPending"
    assert profileplan.plan(profile, SETTINGS, _existing(profile)).ready


def test_a_new_profile_is_made_but_not_ready_before_its_quota_is_counted() -> None:
    profile = _profile(quota={"count/kernelsessions.kernelsession.dev": "3"})
    fresh = profileplan.plan(profile, SETTINGS, {})
    assert (fresh.ready, fresh.reason) == (False, "QuotaPending")
    assert [s.verb for s in fresh.steps] == ["create"] * len(fresh.steps)
    assert ("ResourceQuota", "lab-carol", "kernelsession-quota") in [s.key for s in fresh.steps]
    unlimited = _profile(quota={})
    assert profileplan.plan(unlimited, SETTINGS, {}).ready  # nothing to count


def test_plan_creates_everything_then_nothing() -> None:
    profile = _profile()
    first = profileplan.plan(profile, SETTINGS, {})
    assert first.ready
    assert first.namespace == "lab-carol"
    assert [s.verb for s in first.steps] == ["create"] * 8
    assert first.steps[0].manifest["kind"] == "Namespace"
    assert profileplan.plan(profile, SETTINGS, _existing(profile)).steps == []


def test_plan_never_takes_over_a_namespace_it_did_not_make() -> None:
    foreign = {("Namespace", "", "lab-carol"): {"metadata": {"name": "lab-carol", "labels": {}}}}
    result = profileplan.plan(_profile(), SETTINGS, foreign)
    assert (result.ready, result.reason, result.steps) == (False, "NamespaceConflict", [])
    other = _existing(_profile())
    other[("Namespace", "", "lab-carol")]["metadata"]["labels"][profiles.PROFILE_LABEL] = "dave"
    result = profileplan.plan(_profile(), SETTINGS, other)
    assert result.reason == "NamespaceConflict"
    assert "dave" in result.message


def test_plan_refuses_a_namespace_the_operator_does_not_serve() -> None:
    result = profileplan.plan(_profile(namespace="kube-system"), SETTINGS, {})
    assert (result.ready, result.reason) == (False, "NamespaceNotServed")
    assert "spec.namespace" in result.message


def test_plan_replaces_a_rolebinding_whose_role_changed() -> None:
    profile = _profile()
    existing = _existing(profile)
    existing[("RoleBinding", "lab-carol", "kernelsession-owner")]["roleRef"]["name"] = "edit"
    (step,) = profileplan.plan(profile, SETTINGS, existing).steps
    assert (step.verb, step.key) == ("replace", ("RoleBinding", "lab-carol", "kernelsession-owner"))


def test_status_patch_only_when_something_changed() -> None:
    now = datetime(2026, 12, 4, tzinfo=UTC)
    profile = _profile()
    result = profileplan.plan(profile, SETTINGS, _existing(profile))
    patch = profileplan.status_patch(profile, result, now)
    assert patch is not None
    assert patch["namespace"] == "lab-carol"
    assert patch["observedGeneration"] == 2
    (ready,) = patch["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Ready")
    assert profileplan.status_patch({**profile, "status": patch}, result, now) is None


def test_retire_removes_the_owners_binding() -> None:
    namespace, step = profileplan.retire(_profile(), SETTINGS)
    assert namespace == "lab-carol"
    assert (step.verb, step.key) == ("delete", ("RoleBinding", "lab-carol", "kernelsession-owner"))


# -- quota refusals --------------------------------------------------------------------
POD_OVER = (
    'pods "x-lab-1" is forbidden: exceeded quota: kernelsession-quota, requested: '
    "limits.cpu=2,requests.cpu=1, used: limits.cpu=1,requests.cpu=500m, "
    "limited: limits.cpu=2,requests.cpu=1"
)
CLAIM_OVER = (
    'persistentvolumeclaims "x-home" is forbidden: exceeded quota: kernelsession-quota, '
    "requested: requests.storage=5Gi, used: requests.storage=0, limited: requests.storage=1Gi"
)
UNSPECIFIED = (
    'pods "x" is forbidden: failed quota: kernelsession-quota: must specify '
    "limits.cpu for: lab; requests.memory for: lab"
)


def test_quota_refusals_name_the_quota_and_the_resources() -> None:
    pod = quotas.quota_refusal(POD_OVER)
    assert pod is not None
    assert (pod.quota, pod.resources) == ("kernelsession-quota", ("limits.cpu", "requests.cpu"))
    claim = quotas.quota_refusal(CLAIM_OVER)
    assert claim is not None
    assert claim.resources == ("requests.storage",)
    unspecified = quotas.quota_refusal(UNSPECIFIED)
    assert unspecified is not None
    assert unspecified.resources == ("limits.cpu", "requests.memory")
    assert quotas.quota_refusal('pods "x" is forbidden: violates PodSecurity') is None


def test_a_lab_pod_over_quota_is_pending_not_failed() -> None:
    verdict = st.pod_rejected(POD_OVER)
    assert (verdict.phase, verdict.reason) == (st.PENDING, "QuotaExceeded")
    assert "kernelsession-quota" in verdict.message
    assert "limits.cpu" in verdict.message
    other = st.pod_rejected('pods "x" is forbidden: violates PodSecurity "restricted"')
    assert (other.phase, other.reason) == (st.FAILED, "PodRejected")
