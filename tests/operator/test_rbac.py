"""Least privilege, proven on the local cluster with the API server's audit log.

(a) What the operator's service account may do in ``labs`` is exactly what
    ``manifests/rbac.yaml`` grants (minus what any authenticated account may do).
(b) Every granted (verb, resource) is used by the real operator during a session's
    lifecycle; ``kernelsessions/finalizers update`` is needed by admission
    (OwnerReferencesPermissionEnforcement) and a role without it cannot create a lab pod.
    The operator never gets a 403 while doing its job.
(c) The account is refused (403) secrets outside its namespaces.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    LABS,
    TEST_POLICY,
    WaitTimeoutError,
    apply_session,
    get_ks,
    set_labs_policy,
    wait_for,
    wait_phase,
)

from kernelsession.client.resources import STOPPED_ANNOTATION
from kernelsession.localcluster.cluster import LocalCluster, audit
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.localcluster.deploy.operator_process import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    manifests_dir,
)
from kernelsession.operator.profiles import OPERATOR_ROLES

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

OPERATOR_USER = audit.service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT)
# Checked by admission or the RBAC escalation check, never a request of their own:
# children's blockOwnerDeletion (sessions; profiles own a namespace and a RoleBinding)
# and `bind` of the roles the operator hands out in a profile's namespace.
ADMISSION_ONLY = {
    ("kernelsession.dev", "kernelsessions/finalizers", "update"),
    ("kernelsession.dev", "labprofiles/finalizers", "update"),
    ("rbac.authorization.k8s.io", "clusterroles", "bind"),
}
# What every authenticated account may do, used by the operator (not in the manifests):
# it checks that a RoleBinding it gave itself in a new profile namespace took effect.
EVERYONE = {("authorization.k8s.io", "selfsubjectaccessreviews", "create")}
PROFILE_PREFIX = "lab-"  # the manifests' KERNELSESSION_NAMESPACES: labs,lab-*
# Used only when the operator is set to create no Ingress after it did: proven to succeed
# under this RBAC by tests/operator/test_ingress.py (test_turning_ingresses_off_and_on).
RECONFIGURATION_ONLY = {
    ("networking.k8s.io", "ingresses", "delete"),
    # Only when a home claim's owners differ from its reclaimPolicy (a claim of an older
    # operator, or the policy changed): tests/operator/test_operations.py
    # (test_delete_and_recreate_finds_the_file_in_the_retained_home).
    ("", "persistentvolumeclaims", "patch"),
    # never called: OwnerReferencesPermissionEnforcement asks for it before that patch
    ("", "persistentvolumeclaims", "delete"),
}
Triple = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _rbac_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((manifests_dir() / "rbac.yaml").read_text()) if d]


def _cluster_role(name: str = OPERATOR_ACCOUNT) -> dict[str, Any]:
    return next(
        d for d in _rbac_docs() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == name
    )


def _bound_in(namespace: str) -> list[dict[str, Any]]:
    """The roles the manifests bind to the operator that apply in ``namespace``."""
    docs = _rbac_docs()
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    found = []
    for binding in docs:
        if binding["kind"] == "ClusterRoleBinding" or (
            binding["kind"] == "RoleBinding" and binding["metadata"]["namespace"] == namespace
        ):
            ref = binding["roleRef"]
            found.append(roles[(ref["kind"], ref["name"])])
    return found


def _expand(rules: Iterable[dict[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        if not rule.get("nonResourceURLs")
        for group in rule.get("apiGroups") or [""]
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def _granted(namespace: str | None = None) -> set[Triple]:
    """What the manifests grant the operator: in ``namespace``, or anywhere (None)."""
    if namespace is not None:
        return {t for role in _bound_in(namespace) for t in _expand(role["rules"])}
    docs = _rbac_docs()
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"].endswith("Role")}
    # Bound to the operator by the manifests, or by the operator to itself in a profile's
    # namespace; not the roles it only hands out (the owner's), which it may `bind`.
    bound = [
        roles[(d["roleRef"]["kind"], d["roleRef"]["name"])]
        for d in docs
        if d["kind"].endswith("RoleBinding")
        and any(s.get("name") == OPERATOR_ACCOUNT for s in d.get("subjects") or [])
    ]
    bound += [roles[("ClusterRole", name)] for name in OPERATOR_ROLES]
    return {t for role in bound for t in _expand(role["rules"])}


def _rules_review(cluster: LocalCluster, user: str, namespace: str) -> set[Triple]:
    """What ``user`` may do in ``namespace`` (the data behind ``kubectl auth can-i --list``)."""
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace},
    }
    result = cluster.kubectl(
        "create",
        "--validate=false",
        f"--as={user}",
        "-o",
        "json",
        "-f",
        "-",
        input=json.dumps(review),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    status = json.loads(out)["status"]
    assert not status.get("incomplete"), status
    return _expand(status["resourceRules"])


def _kubectl_as(
    cluster: LocalCluster, kubeconfig: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, input=input, check=False, kubeconfig=kubeconfig)


def _operator_entries(cluster: LocalCluster) -> list[audit.Entry]:
    """Requests the operator process made (the account's kubectl use by tests excluded)."""
    log = cluster.audit_log
    assert log is not None, "the shared cluster runs with audit=True"
    return [
        e
        for e in audit.read(log, user=OPERATOR_USER)
        if not e.user_agent.startswith("kubectl/") and not e.resource.startswith("/")
    ]


@pytest.fixture
def lifecycle(installed: LocalCluster, operator: InClusterOperator) -> Iterator[str]:
    """One session through its whole life: created, Ready, culled (maxAge), deleted; and
    two with home volumes that cannot bind (a class without a provisioner: its events are
    read; a class that does not exist: it is looked up). The waiting one's Ingress and
    NetworkPolicy are edited, and the operator patches them back. One names a ConfigMap
    its user may not read (the operator asks the authorizer: PolicyRejected); the
    namespace's userMapping changes meanwhile (its token-reader RoleBinding gets the new
    subjects)."""
    tag = uuid.uuid4().hex[:6]
    name, pending, missing = f"rbac{tag}", f"rbac{tag}-home", f"rbac{tag}-noclass"
    unreadable = f"rbac{tag}-unreadable"
    noprov = f"ks-rbac-noprov-{tag}"
    installed.apply(
        [
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": noprov},
                "provisioner": "kubernetes.io/no-provisioner",
                "volumeBindingMode": "Immediate",
            }
        ]
    )
    apply_session(installed, name, {"user": "rbac", "culling": {"maxAgeSeconds": 10}})
    apply_session(installed, pending, {"user": "rbac", "home": {"storageClassName": noprov}})
    apply_session(installed, missing, {"user": "rbac", "home": {"storageClassName": "nope"}})
    ref = {"configMapKeyRef": {"name": "kube-root-ca.crt", "key": "ca.crt"}}
    apply_session(installed, unreadable, {"user": "rbac", "env": [{"name": "C", "valueFrom": ref}]})
    try:
        wait_phase(installed, unreadable, "Failed", timeout=60, reason="PolicyRejected")
        wait_phase(installed, pending, "Pending", timeout=60, reason="HomePending")
        _edit_and_wait_for_repair(installed, pending)
        wait_phase(installed, missing, "Failed", timeout=60, reason="HomeUnavailable")
        wait_phase(installed, name, "Ready", timeout=60)
        mapped = f"rbac@{tag}.test"
        set_labs_policy(installed, TEST_POLICY | {"userMapping": f"stripSuffix=@{tag}.test"})
        try:
            wait_for(
                lambda: (
                    mapped
                    in json.dumps(
                        installed.get_json("-n", LABS, f"rolebinding/{unreadable}-token-reader")
                    )
                ),
                timeout=60,
                what=f"{mapped} in the token-reader RoleBinding",
            )
        finally:
            set_labs_policy(installed, TEST_POLICY)
        wait_phase(installed, name, "Culled", timeout=60)
        installed.kubectl(
            "-n", LABS, "delete", "ks", name, pending, missing, unreadable, "--timeout=60s"
        )
        _profile_lifecycle(installed, f"rbac-{tag}")
        yield name
    finally:
        installed.kubectl(
            "-n",
            LABS,
            "delete",
            "ks",
            name,
            pending,
            missing,
            unreadable,
            "--ignore-not-found",
            "--wait=false",
            check=False,
        )
        installed.kubectl("delete", "storageclass", noprov, "--ignore-not-found", check=False)


def _profile_lifecycle(cluster: LocalCluster, user: str) -> None:
    """A LabProfile made, every object of its namespace relabelled by hand (read back and
    repaired), a session there, the profile deleted (owner's access removed, lab
    stopped, profile released); then the retained namespace is deleted."""
    profile = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "LabProfile",
        "metadata": {"name": user},
        "spec": {"owner": {"kind": "User", "name": user}, "quota": {"limits.cpu": "2"}},
    }
    cluster.apply([profile])
    ns = f"{PROFILE_PREFIX}{user}"

    def ready() -> bool:
        status = cluster.get_json(f"labprofile/{user}").get("status") or {}
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
        )

    wait_for(ready, timeout=120, what=f"labprofile/{user} Ready")
    label = "kernelsession.dev/profile"
    objects = [
        "resourcequota/kernelsession-quota",
        "limitrange/kernelsession-limits",
        "configmap/kernelsession-policy",
        "networkpolicy/kernelsession-default-deny",
        "rolebinding/kernelsession-owner",
    ]
    for obj in objects:
        cluster.kubectl("-n", ns, "label", obj, f"{label}-")
    cluster.kubectl("label", f"namespace/{ns}", f"{label}-")

    def unlabelled() -> list[str]:
        items = {obj: cluster.get_json("-n", ns, obj) for obj in objects}
        items[f"namespace/{ns}"] = cluster.get_json(f"namespace/{ns}")
        return [k for k, i in items.items() if i["metadata"].get("labels", {}).get(label) != user]

    try:
        wait_for(lambda: not unlabelled(), timeout=90, what=f"{ns}'s objects relabelled")
    except WaitTimeoutError as exc:
        raise WaitTimeoutError(f"{exc}; still without the label: {unlabelled()}") from exc
    session = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": "work", "namespace": ns},
        "spec": {"user": user},
    }
    cluster.apply([session])
    wait_for(
        lambda: (cluster.get_json("-n", ns, "ks/work").get("status") or {}).get("phase"),
        timeout=30,
        what="the profile's session seen",
    )
    cluster.kubectl("delete", "labprofile", user, "--timeout=60s")
    stopped = cluster.get_json("-n", ns, "ks/work")
    assert stopped["metadata"]["annotations"][STOPPED_ANNOTATION] == user
    assert not stopped["spec"].get("suspend")  # the operator never writes a session's spec
    cluster.kubectl("delete", "namespace", ns, "--wait=false")


def _edit_and_wait_for_repair(cluster: LocalCluster, name: str) -> None:
    def shapes() -> tuple[Any, Any] | None:
        found = cluster.kubectl(
            "-n",
            LABS,
            "get",
            f"ingress/{name}",
            f"networkpolicy/{name}-lab",
            "-o",
            "json",
            check=False,
        )
        if found.returncode != 0:
            return None
        ingress, policy = json.loads(found.stdout)["items"]
        return ingress["spec"], policy["spec"]

    good = wait_for(shapes, timeout=30, what=f"Ingress and NetworkPolicy of {name}")
    host = json.dumps([{"op": "replace", "path": "/spec/rules/0/host", "value": "x.test"}])
    cluster.kubectl("-n", LABS, "patch", f"ingress/{name}", "--type=json", "-p", host)
    peers = json.dumps([{"op": "replace", "path": "/spec/ingress/0/from", "value": []}])
    cluster.kubectl("-n", LABS, "patch", f"networkpolicy/{name}-lab", "--type=json", "-p", peers)
    wait_for(lambda: shapes() == good, timeout=30, what=f"{name}'s children patched back")


def test_permissions_in_labs_are_exactly_the_manifest(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    # What every authenticated account gets (self reviews...): an account with no bindings.
    installed.kubectl("-n", OPERATOR_NAMESPACE, "create", "serviceaccount", "nobody", check=False)
    baseline = _rules_review(installed, audit.service_account(OPERATOR_NAMESPACE, "nobody"), LABS)
    effective = _rules_review(installed, OPERATOR_USER, LABS) - baseline
    assert effective == _granted(LABS)
    leader = _rules_review(installed, OPERATOR_USER, OPERATOR_NAMESPACE) - baseline
    assert ("coordination.k8s.io", "leases", "create") in leader
    assert ("", "pods", "create") not in leader  # no labs rights in its own namespace


def test_permissions_in_a_profile_namespace_are_the_two_roles_it_binds(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    """In a LabProfile's namespace the operator holds what it bound to itself there
    (kernelsession-operator, kernelsession-operator-profile) and its cluster-wide rules."""
    user = f"rbacns-{uuid.uuid4().hex[:6]}"
    profile = {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "LabProfile",
        "metadata": {"name": user},
        "spec": {"owner": {"kind": "User", "name": user}, "deletionPolicy": "Delete"},
    }
    installed.apply([profile])
    ns = f"{PROFILE_PREFIX}{user}"
    try:
        installed.kubectl(
            "-n", OPERATOR_NAMESPACE, "create", "serviceaccount", "nobody", check=False
        )
        nobody = audit.service_account(OPERATOR_NAMESPACE, "nobody")
        roles = [_cluster_role(), _cluster_role("kernelsession-operator-profile")]
        cluster_wide = {
            t
            for d in _rbac_docs()
            if d["kind"] == "ClusterRoleBinding"
            for t in _expand(_cluster_role(d["roleRef"]["name"])["rules"])
        }
        expected = {t for role in roles for t in _expand(role["rules"])} | cluster_wide

        def effective() -> set[Triple] | None:
            found = _rules_review(installed, OPERATOR_USER, ns) - _rules_review(
                installed, nobody, ns
            )
            return found if found == expected else None

        wait_for(effective, timeout=60, what=f"the operator's rights in {ns}")
    finally:
        installed.kubectl("delete", "labprofile", user, "--wait=false", check=False)


def test_every_granted_permission_is_used_and_none_denied(
    installed: LocalCluster, operator: InClusterOperator, lifecycle: str
) -> None:
    granted = _granted()
    entries = _operator_entries(installed)
    assert all(
        e.namespace in (LABS, OPERATOR_NAMESPACE, None, "", "default")  # default: events
        or e.namespace.startswith(PROFILE_PREFIX)
        for e in entries
    )
    used = {(e.api_group, e.resource, e.verb) for e in entries}
    assert granted - ADMISSION_ONLY - RECONFIGURATION_ONLY - used == set(), "granted, never used"
    assert used - granted - EVERYONE == set(), "used but not granted (would be 403)"
    # kopf starts watching a profile's namespace as soon as it exists, a moment before the
    # operator's RoleBinding there does: its first lists may be refused, and are retried.
    # Not a missing grant either: a quota's refusal, a request retried into success (the
    # API server restart of test_operations), one while its binding there did not exist.
    log = installed.audit_log
    assert log is not None
    refused = audit.unexplained_refusals(entries, audit.read(log), OPERATOR_ROLES[0])
    denied = [
        (e.key, e.namespace, e.name)
        for e in refused
        if not (e.verb == "list" and (e.namespace or "").startswith(PROFILE_PREFIX))
    ]
    assert denied == []


def test_owner_references_need_finalizers_update(
    installed: LocalCluster, operator: InClusterOperator, session_name: str, tmp_path: Path
) -> None:
    """Without ``kernelsessions/finalizers update`` the lab pod (blockOwnerDeletion) is
    refused by admission; with the manifest's role it is admitted (server dry run)."""
    apply_session(installed, session_name, {"user": "owner"})
    wait_for(
        lambda: get_ks(installed, session_name)["metadata"].get("uid"),
        timeout=30,
        what="session uid",
    )
    uid = get_ks(installed, session_name)["metadata"]["uid"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{session_name}-ownerprobe",
            "namespace": LABS,
            "ownerReferences": [
                {
                    "apiVersion": "kernelsession.dev/v1alpha1",
                    "kind": "KernelSession",
                    "name": session_name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "lab",
                    "image": "busybox",
                    "command": ["true"],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }
    create = ("-n", LABS, "create", "--dry-run=server", "-f", "-")
    allowed = _kubectl_as(installed, operator.kubeconfig, *create, input=json.dumps(pod))
    assert allowed.returncode == 0, allowed.stderr

    role = _cluster_role()
    stripped = f"ks-rbac-nofinalizers-{uuid.uuid4().hex[:6]}"
    role["metadata"] = {"name": stripped}
    role["rules"] = [r for r in role["rules"] if "kernelsessions/finalizers" not in r["resources"]]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": stripped, "namespace": LABS},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": stripped,
        },
        "subjects": [{"kind": "ServiceAccount", "name": stripped, "namespace": LABS}],
    }
    installed.apply([role, binding])
    try:
        kubeconfig = installed.service_account_kubeconfig(
            LABS, stripped, tmp_path / "stripped.kubeconfig"
        )

        def refused() -> str | None:
            result = _kubectl_as(installed, kubeconfig, *create, input=json.dumps(pod))
            # RBAC bindings take effect asynchronously; wait until pods create is allowed
            # and only the owner reference is refused.
            return result.stderr if "blockOwnerDeletion" in result.stderr else None

        message = wait_for(refused, timeout=30, what="admission refusing blockOwnerDeletion")
        assert "Forbidden" in message or "forbidden" in message
    finally:
        installed.kubectl("delete", "clusterrole", stripped, check=False)
        installed.kubectl("-n", LABS, "delete", "rolebinding,serviceaccount", stripped, check=False)


@pytest.mark.parametrize("namespace", ["default", "kube-system", OPERATOR_NAMESPACE])
def test_no_secrets_outside_watched_namespaces(
    installed: LocalCluster, operator: InClusterOperator, namespace: str
) -> None:
    installed.kubectl(
        "-n",
        namespace,
        "create",
        "secret",
        "generic",
        "ks-rbac-probe",
        "--from-literal=k=v",
        check=False,
    )
    for args in (("get", "secret", "ks-rbac-probe"), ("get", "secrets")):
        result = _kubectl_as(installed, operator.kubeconfig, "-n", namespace, *args)
        assert result.returncode != 0
        assert "Forbidden" in result.stderr, result.stderr


def test_secrets_in_labs_are_read_by_name_only(
    installed: LocalCluster, operator: InClusterOperator
) -> None:
    for verb in ("list", "watch", "update", "delete"):
        result = installed.kubectl(
            "auth", "can-i", verb, "secrets", f"--as={OPERATOR_USER}", "-n", LABS, check=False
        )
        assert result.stdout.strip() == "no", (verb, result.stdout)
