"""LabProfile on the local cluster, with real identities (client certificates signed by
the cluster's CA: the API server, RBAC and admission see user ``carol-…``, not an admin).

An admin applies a profile; the operator makes the owner's namespace and keeps it in
shape; the owner runs a lab there end to end (``kernelsession exec``, ``open``); the
owner sees nothing of other namespaces; the quota refuses a session over the count at
apply and keeps a lab over its CPU Pending/QuotaExceeded; deleting a profile removes the
owner's access and stops the labs (Retain: namespace and homes stay) or removes the
namespace (Delete).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from headless import stop_process_tree
from helpers import hardened_pod, wait_for
from identities import user_kubeconfig

from kernelsession.client.resources import STOPPED_ANNOTATION
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator
from kernelsession.operator import profiles

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CLI = str(Path(sys.executable).parent / "kernelsession")
TAG = uuid.uuid4().hex[:6]
QUOTA_COUNT = "count/kernelsessions.kernelsession.dev"


def _profile(name: str, owner: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "LabProfile",
        "metadata": {"name": name},
        "spec": {"owner": owner, **spec},
    }


def _session(name: str, namespace: str, user: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"user": user, **spec},
    }


def _ready_profile(cluster: LocalCluster, name: str, timeout: float = 120) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        status = cluster.get_json(f"labprofile/{name}").get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        return status if conditions.get("Ready", {}).get("status") == "True" else None

    return wait_for(ready, timeout=timeout, what=f"labprofile/{name} Ready")


def _as(
    cluster: LocalCluster, kubeconfig: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(*args, kubeconfig=kubeconfig, check=False, input=input)


def _cli(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )


def _ks(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_json("-n", namespace, f"ks/{name}"))


def _wait_phase(
    cluster: LocalCluster, namespace: str, name: str, phase: str, reason: str | None = None
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = _ks(cluster, namespace, name).get("status") or {}
        ok = status.get("phase") == phase and reason in (None, status.get("reason"))
        return status if ok else None

    return wait_for(check, timeout=120, what=f"{namespace}/{name} {phase} {reason or ''}")


class Tenant:
    """A profile, its owner's kubeconfig and namespace."""

    def __init__(self, cluster: LocalCluster, user: str, kubeconfig: Path, **spec: Any) -> None:
        self.cluster, self.user, self.kubeconfig = cluster, user, kubeconfig
        self.name = user
        cluster.apply([_profile(user, {"kind": "User", "name": user}, **spec)])
        self.namespace = _ready_profile(cluster, user)["namespace"]

    def delete(self) -> None:
        self.cluster.kubectl(
            "delete", "labprofile", self.name, "--ignore-not-found", "--wait=false", check=False
        )


CAROL_SPEC: dict[str, Any] = {
    "quota": {QUOTA_COUNT: "3", "limits.cpu": "2", "limits.memory": "8Gi"},
    "lab": {
        "defaultResources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
        "maxCPU": "1",
        "maxMemory": "4Gi",
    },
    "images": ["localhost/kernelsession/lab:*"],
    "culling": {"maxIdleTimeoutSeconds": 7200},
}


@pytest.fixture(scope="module")
def carol(
    installed: LocalCluster, operator: InClusterOperator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenant]:
    user = f"carol-{TAG}"
    kubeconfig = user_kubeconfig(installed, user, directory=tmp_path_factory.mktemp("carol"))
    tenant = Tenant(installed, user, kubeconfig, **CAROL_SPEC)
    yield tenant
    tenant.delete()


def test_the_profile_makes_the_owners_namespace(installed: LocalCluster, carol: Tenant) -> None:
    ns = installed.get_json(f"namespace/{carol.namespace}")
    assert carol.namespace == f"lab-{carol.user}"
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels[profiles.PROFILE_LABEL] == carol.name
    assert labels[profiles.OWNER_KIND_LABEL] == "User"
    assert ns["metadata"]["annotations"][profiles.OWNER_ANNOTATION] == carol.user
    assert "ownerReferences" not in ns["metadata"]  # Retain: the namespace outlives it
    binding = installed.get_json("-n", carol.namespace, "rolebinding/kernelsession-owner")
    assert binding["roleRef"]["name"] == "kernelsession-profile-owner"
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": carol.user}
    ]
    quota = installed.get_json("-n", carol.namespace, "resourcequota/kernelsession-quota")
    assert quota["spec"]["hard"] == CAROL_SPEC["quota"]
    limits = installed.get_json("-n", carol.namespace, "limitrange/kernelsession-limits")
    (item,) = limits["spec"]["limits"]
    assert item["default"] == {"cpu": "500m", "memory": "1Gi"}
    assert item["max"] == {"cpu": "1", "memory": "4Gi"}
    policy = installed.get_json("-n", carol.namespace, "configmap/kernelsession-policy")
    assert policy["data"] == {
        "images": "localhost/kernelsession/lab:*",
        "maxCPU": "1",
        "maxMemory": "4Gi",
        "maxIdleTimeoutSeconds": "7200",
        "cullingNeverAllowed": "false",
        "owner": f"User {carol.user}",
    }
    deny = installed.get_json("-n", carol.namespace, "networkpolicy/kernelsession-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_the_owner_runs_a_lab_end_to_end(
    installed: LocalCluster, carol: Tenant, tmp_path: Path
) -> None:
    """carol creates a session in her namespace as herself; it becomes Ready, runs code,
    `kernelsession open` serves it; her lab admits client pods of her namespace only."""
    ns, name = carol.namespace, f"lab{TAG}"

    def create() -> subprocess.CompletedProcess[str] | None:
        done = _as(
            installed, carol.kubeconfig, "apply", "-f", "-",
            input=json.dumps(_session(name, ns, carol.user)),
        )  # fmt: skip
        # A quota the API server's quota admission has not seen counted yet refuses with
        # "status unknown for quota" (its own cache lags the quota controller): retryable,
        # as kubectl's message says; anything else is an answer.
        return None if "status unknown for quota" in done.stderr else done

    created = wait_for(create, timeout=60, what="the quota admission to count sessions")
    assert created.returncode == 0, created.stderr
    _wait_phase(installed, ns, name, "Ready")
    pod = installed.get_json("-n", ns, "pods", "-l", f"kernelsession.dev/session={name}")
    (container,) = pod["items"][0]["spec"]["containers"]
    assert container["resources"]["limits"]["cpu"] == "500m"  # the LimitRange's default
    result = _cli(carol.kubeconfig, "exec", name, "-n", ns, "-c", "print(6 * 7)")
    assert (result.returncode, result.stdout.strip()) == (0, "42"), result.stderr
    # her RoleBinding reads the token (exec just did): no per-session reader made here
    readers = installed.kubectl("-n", ns, "get", "roles,rolebindings", "-o", "name").stdout
    assert f"{name}-token-reader" not in readers
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_TOKEN", "DISPLAY")}
    env["KUBECONFIG"] = str(carol.kubeconfig)
    process = subprocess.Popen(
        [CLI, "open", name, "-n", ns, "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        with httpx.Client(trust_env=False, follow_redirects=True, timeout=30) as browser:
            assert browser.get(url).status_code == 200
    finally:
        stop_process_tree(process)
    _clients_of_own_namespace_only(installed, ns, name)


def _clients_of_own_namespace_only(cluster: LocalCluster, ns: str, session: str) -> None:
    """A client-labelled pod in carol's namespace reaches her lab; the same pod in `labs`
    (another tenant's clients) times out."""
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=4).status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    ip = cluster.get_json("-n", ns, "pods", "-l", f"kernelsession.dev/session={session}")
    url = f"http://{ip['items'][0]['status']['podIP']}:8888/labs/{ns}/{session}/api"
    client = f"client{TAG}"
    labels = {"kernelsession.dev/client": "true"}
    resources = {"limits": {"cpu": "100m", "memory": "64Mi"}}
    for where in (ns, "labs"):
        pod = hardened_pod(cluster, client, ["sleep", "300"], labels=labels)
        pod["spec"]["containers"][0]["resources"] |= resources
        pod["metadata"]["namespace"] = where
        cluster.apply([pod])
    try:
        for where in (ns, "labs"):
            cluster.kubectl(
                "-n", where, "wait", "--for=condition=Ready", f"pod/{client}", "--timeout=90s"
            )

        def get_from(where: str) -> str:
            out = cluster.kubectl("-n", where, "exec", client, "--", "python", "-c", code, url)
            return out.stdout.strip()

        assert get_from(ns) == "200"
        assert "timed out" in get_from("labs")
    finally:
        for where in (ns, "labs"):
            cluster.kubectl("-n", where, "delete", "pod", client, "--wait=false", check=False)


@pytest.mark.parametrize(
    ("namespace", "args"),
    [
        ("labs", ("get", "secrets")),
        ("labs", ("get", "ks")),
        ("kube-system", ("get", "pods")),
        ("OWN", ("get", "rolebindings")),
        ("OWN", ("delete", "resourcequota", "kernelsession-quota")),
        ("OWN", ("create", "configmap", "x")),
        ("OWN", ("run", "shell", "--image=busybox")),
    ],
)
def test_the_owner_sees_and_changes_nothing_else(
    installed: LocalCluster, carol: Tenant, namespace: str, args: tuple[str, ...]
) -> None:
    ns = carol.namespace if namespace == "OWN" else namespace
    result = _as(installed, carol.kubeconfig, "-n", ns, *args)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr


def test_the_owners_rights_in_their_namespace(installed: LocalCluster, carol: Tenant) -> None:
    def can(verb: str, resource: str) -> bool:
        # kubectl auth can-i takes a subresource apart (`pods/log` alone is not one)
        kind, _, sub = resource.partition("/")
        extra = ("--subresource", sub) if sub else ()
        out = _as(
            installed,
            carol.kubeconfig,
            "auth",
            "can-i",
            verb,
            kind,
            *extra,
            "-n",
            carol.namespace,
        )
        return out.stdout.strip() == "yes"

    for verb, resource in [
        ("create", "kernelsessions.kernelsession.dev"),
        ("delete", "kernelsessions.kernelsession.dev"),
        ("get", "secrets"),
        ("list", "pods"),
        ("get", "pods/log"),
        ("create", "pods/portforward"),
    ]:
        assert can(verb, resource), (verb, resource)
    for verb, resource in [
        ("list", "secrets"),
        ("create", "pods"),
        ("create", "pods/exec"),
        ("update", "resourcequotas"),
        ("create", "rolebindings"),
        ("patch", "namespaces"),
    ]:
        assert not can(verb, resource), (verb, resource)


def test_hand_edits_are_put_back(installed: LocalCluster, carol: Tenant) -> None:
    ns = carol.namespace
    quota = "resourcequota/kernelsession-quota"
    installed.kubectl(
        "-n", ns, "patch", quota, "--type=merge", "-p",
        json.dumps({"spec": {"hard": {"limits.cpu": "100", "pods": "1000"}}}),
    )  # fmt: skip
    installed.kubectl(
        "-n", ns, "patch", "rolebinding/kernelsession-owner", "--type=json", "-p",
        json.dumps([{"op": "add", "path": "/subjects/-", "value": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "mallory"}}]),
    )  # fmt: skip
    installed.kubectl(
        "label", f"namespace/{ns}", "pod-security.kubernetes.io/enforce=privileged", "--overwrite"
    )
    installed.kubectl("-n", ns, "delete", "limitrange/kernelsession-limits")
    installed.kubectl(
        "-n", ns, "label", "configmap/kernelsession-policy", f"{profiles.PROFILE_LABEL}-"
    )
    installed.kubectl(
        "-n", ns, "patch", "configmap/kernelsession-policy", "--type=merge", "-p",
        json.dumps({"data": {"images": "*"}}),
    )  # fmt: skip

    def in_shape() -> bool:
        hard = installed.get_json("-n", ns, quota)["spec"]["hard"]
        subjects = installed.get_json("-n", ns, "rolebinding/kernelsession-owner")["subjects"]
        labels = installed.get_json(f"namespace/{ns}")["metadata"]["labels"]
        installed.get_json("-n", ns, "limitrange/kernelsession-limits")
        data = installed.get_json("-n", ns, "configmap/kernelsession-policy")["data"]
        return (
            hard == CAROL_SPEC["quota"]
            and [s["name"] for s in subjects] == [carol.user]
            and labels["pod-security.kubernetes.io/enforce"] == "restricted"
            and data["images"] == "localhost/kernelsession/lab:*"
        )

    wait_for(in_shape, timeout=30, what="the profile's objects put back")
    events = installed.get_json(
        "events",
        "-A",
        "--field-selector",
        f"involvedObject.kind=LabProfile,involvedObject.name={carol.name}",
    )["items"]
    assert {"Restored"} <= {e["reason"] for e in events}


def test_schema_refuses_bad_profiles_naming_the_field(installed: LocalCluster) -> None:
    for spec, field in [
        ({"owner": {"kind": "Robot", "name": "x"}}, "spec.owner.kind"),
        ({"owner": {"kind": "User", "name": "system:admin"}}, "spec.owner.name"),
        ({"owner": {"kind": "User", "name": "x"}, "quota": {"limits.cpu": "lots"}}, "spec.quota"),
        ({"owner": {"kind": "User", "name": "x"}, "deletionPolicy": "Keep"}, "spec.deletionPolicy"),
        ({"owner": {"kind": "User", "name": "x"}, "namespace": "Bad_NS"}, "spec.namespace"),
        ({"owner": {"kind": "User", "name": "x"}, "images": ["a b"]}, "spec.images[0]"),
    ]:
        body = json.dumps(_profile(f"bad-{TAG}", **spec))  # type: ignore[arg-type]
        result = installed.kubectl("apply", "--dry-run=server", "-f", "-", input=body, check=False)
        assert result.returncode != 0
        assert field in result.stderr, (field, result.stderr)


def test_an_owner_cannot_be_changed(installed: LocalCluster, carol: Tenant) -> None:
    patch = json.dumps({"spec": {"owner": {"kind": "User", "name": "mallory"}}})
    result = installed.kubectl(
        "patch", f"labprofile/{carol.name}", "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0
    assert "spec.owner cannot change" in result.stderr


def test_quota_refuses_sessions_over_the_count_and_labs_over_cpu(
    installed: LocalCluster, operator: InClusterOperator, tmp_path: Path
) -> None:
    user = f"dana-{TAG}"
    kubeconfig = user_kubeconfig(installed, user, directory=tmp_path)
    tenant = Tenant(
        installed,
        user,
        kubeconfig,
        quota={QUOTA_COUNT: "2", "limits.cpu": "500m"},
        lab={"defaultResources": {"limits": {"cpu": "400m", "memory": "512Mi"}}},
    )
    ns = tenant.namespace
    try:
        for name in ("q1", "q2"):
            created = _as(
                installed, kubeconfig, "apply", "-f", "-",
                input=json.dumps(_session(name, ns, user)),
            )  # fmt: skip
            assert created.returncode == 0, created.stderr
            if name == "q1":  # its pod is admitted first
                wait_for(
                    lambda: _ks(installed, ns, "q1").get("status", {}).get("podName"),
                    timeout=60,
                    what="q1's pod",
                )
        status = _wait_phase(installed, ns, "q2", "Pending", "QuotaExceeded")
        assert "kernelsession-quota" in status["message"]
        assert "limits.cpu" in status["message"]
        over = _as(
            installed, kubeconfig, "apply", "-f", "-", input=json.dumps(_session("q3", ns, user))
        )
        assert over.returncode != 0
        assert "exceeded quota: kernelsession-quota" in over.stderr
        assert QUOTA_COUNT in over.stderr
        print(
            f"\n[profiles] count refusal: {over.stderr.strip()}\n[profiles] q2: {status['message']}"
        )
    finally:
        tenant.delete()


def test_deleting_a_retained_profile_stops_labs_and_keeps_homes(
    installed: LocalCluster, operator: InClusterOperator, tmp_path: Path
) -> None:
    user = f"erin-{TAG}"
    kubeconfig = user_kubeconfig(installed, user, directory=tmp_path)
    tenant = Tenant(installed, user, kubeconfig)
    ns, name = tenant.namespace, "work"
    created = _as(
        installed, kubeconfig, "apply", "-f", "-",
        input=json.dumps(_session(name, ns, user, home={"size": "64Mi"})),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    _wait_phase(installed, ns, name, "Ready")
    generation = _ks(installed, ns, name)["metadata"]["generation"]
    installed.kubectl("delete", "labprofile", tenant.name, "--timeout=60s")
    status = _wait_phase(installed, ns, name, "Suspended", "ProfileDeleted")
    assert tenant.name in status["message"]
    session = _ks(installed, ns, name)
    # stopped by an annotation: the user's spec is never written by the operator
    assert not session["spec"].get("suspend")
    assert session["metadata"]["generation"] == generation
    assert session["metadata"]["annotations"][STOPPED_ANNOTATION] == tenant.name
    wait_for(
        lambda: not installed.kubectl("-n", ns, "get", "pods", "-o", "name").stdout.strip(),
        timeout=60,
        what="the lab pod gone",
    )
    denied = _as(installed, kubeconfig, "-n", ns, "get", "ks")
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr
    namespace = installed.get_json(f"namespace/{ns}")
    assert namespace["status"]["phase"] == "Active"
    claim = installed.get_json("-n", ns, f"pvc/{name}-home")
    assert claim["status"]["phase"] == "Bound"
    # the admin re-creates the profile: the owner's access and the lab come back
    tenant = Tenant(installed, user, kubeconfig)
    _wait_phase(installed, ns, name, "Ready")
    annotations = _ks(installed, ns, name)["metadata"].get("annotations") or {}
    assert STOPPED_ANNOTATION not in annotations
    assert _as(installed, kubeconfig, "-n", ns, "get", "ks").returncode == 0
    tenant.delete()
    installed.kubectl("delete", "namespace", ns, "--wait=false")


def test_a_group_shares_the_namespace_and_delete_removes_it(
    installed: LocalCluster, operator: InClusterOperator, tmp_path: Path
) -> None:
    group = f"team-{TAG}"
    member = user_kubeconfig(installed, f"gina-{TAG}", (group,), directory=tmp_path)
    other = user_kubeconfig(installed, f"hank-{TAG}", directory=tmp_path)
    name = f"group-{TAG}"
    installed.apply([_profile(name, {"kind": "Group", "name": group}, deletionPolicy="Delete")])
    ns = _ready_profile(installed, name)["namespace"]
    assert ns == f"lab-group-{group}"
    namespace = installed.get_json(f"namespace/{ns}")
    (owner,) = namespace["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("LabProfile", name)
    assert _as(installed, member, "-n", ns, "get", "ks").returncode == 0
    denied = _as(installed, other, "-n", ns, "get", "ks")
    assert "Forbidden" in denied.stderr
    installed.kubectl("delete", "labprofile", name, "--timeout=60s")

    def going() -> bool:
        found = installed.kubectl("get", f"namespace/{ns}", "-o", "json", check=False)
        return found.returncode != 0 or bool(
            json.loads(found.stdout)["metadata"].get("deletionTimestamp")
        )

    wait_for(going, timeout=60, what=f"namespace {ns} deleted with its profile")


def test_a_stray_namespace_matching_the_pattern_never_stops_the_operator(
    installed: LocalCluster, operator: InClusterOperator, carol: Tenant
) -> None:
    """A namespace someone made by hand under the profile pattern (`lab-*`) has no
    RoleBinding for the operator: kopf's watches there are refused (403) and retried for
    ever, beyond kopf's default 8 attempts, and the operator keeps serving: profiles are
    kept in shape, and a session in a namespace made meanwhile gets its status (kopf
    holds every new worker until each watcher has listed once; without
    ``kopfwatch`` the stray's watchers held it for as long as the stray existed)."""
    before = operator.instance()
    stray = f"lab-stray-{TAG}"
    installed.kubectl("create", "namespace", stray)
    try:
        wait_for(
            lambda: (
                "Request attempt #10 failed; will retry: GET" in operator.logs()
                and stray in operator.logs()
            ),
            timeout=150,
            interval=5,
            what=f"kopf retrying its refused watches in {stray} past 9 attempts",
        )
        assert operator.instance() == before  # same pod, no restart
        ns = carol.namespace
        installed.kubectl("-n", ns, "delete", "limitrange/kernelsession-limits")
        wait_for(
            lambda: installed.get_json("-n", ns, "limitrange/kernelsession-limits"),
            timeout=30,
            what="the profile still kept in shape",
        )
        owner = {"kind": "User", "name": f"late-{TAG}"}
        installed.apply([_profile(f"late-{TAG}", owner, deletionPolicy="Delete")])
        late = _ready_profile(installed, f"late-{TAG}")["namespace"]
        installed.apply([_session("first", late, owner["name"])])
        wait_for(
            lambda: (_ks(installed, late, "first").get("status") or {}).get("phase"),
            timeout=60,
            what=f"a status for a session in {late}, made while {stray} exists",
        )
    finally:
        installed.kubectl("delete", "labprofile", f"late-{TAG}", "--wait=false", check=False)
        installed.kubectl("delete", "namespace", stray, "--wait=false", check=False)
