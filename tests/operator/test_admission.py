"""Tenancy on the real API server, with real identities (docs/tenancy-admission.md).

- The shared table (tests/policy_cases.yaml) through the admission policy, each case as
  its requester (impersonated: admission and the authorizer see that user).
- The shared `labs` namespace: alice and bob hold the sample Role
  (manifests/samples/lab-user-rbac.yaml: sessions, pods, logs, port-forward, no
  Secrets), each with an x509 client certificate of the cluster's CA. alice cannot make
  a session for bob, change or delete his, read his token, or reach his token, claim or
  lab through any spec field; her own session works end to end.
- The operator on its own (the policy's binding removed): a session breaking a rule is
  Failed/PolicyRejected naming the field, and no pod is created.
- A rule tightened under a running lab: the lab keeps running with condition
  PolicyViolation and is refused at its next start.
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

import pytest
import yaml
from admission_table import CASES, admit, expected_refusal, world
from helpers import (
    LABS,
    TEST_POLICY,
    apply_session,
    children,
    get_ks,
    set_labs_policy,
    user_kubeconfig,
    wait_for,
    wait_phase,
)

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
CLI = str(Path(sys.executable).parent / "kernelsession")
SAMPLE_RBAC = Path(__file__).parents[2] / "manifests" / "samples" / "lab-user-rbac.yaml"


@pytest.fixture(scope="module")
def table_namespaces(installed: LocalCluster) -> Iterator[dict[str, str]]:
    made = world(f"tbl{uuid.uuid4().hex[:6]}")
    objects = made["objects"]
    installed.apply([o for o in objects if o["kind"] == "Namespace"])
    installed.apply([o for o in objects if o["kind"] != "Namespace"])
    namespaces: dict[str, str] = made["namespaces"]
    # the policy's param informer sees the new ConfigMaps within moments
    first = next(c for c in CASES if "refused" not in c and c.get("as", "alice") == "alice")
    wait_for(
        lambda: admit(installed.kubectl, first, namespaces)[0],
        timeout=30,
        what="admission to see the table's namespaces",
    )
    yield namespaces
    for ns in namespaces.values():
        installed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_admission_table(
    installed: LocalCluster, table_namespaces: dict[str, str], case: dict[str, Any]
) -> None:
    accepted, stderr = admit(installed.kubectl, case, table_namespaces)
    expected = expected_refusal(case)
    if expected is None:
        assert accepted, stderr
    else:
        assert not accepted, f"{case['name']} was admitted"
        assert expected in stderr, stderr


# -- the shared labs namespace, with real identities ------------------------------------


def _session(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": name, "namespace": LABS},
        "spec": spec,
    }


class Person:
    """kubectl and the kernelsession CLI as one user (a client certificate)."""

    def __init__(self, cluster: LocalCluster, name: str, tmp: Path) -> None:
        self.cluster = cluster
        self.name = name
        self.kubeconfig = user_kubeconfig(cluster, name, ["lab-users"], tmp / f"{name}.yaml")

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(
            "-n", LABS, *args, input=input, check=False, kubeconfig=self.kubeconfig
        )

    def create(self, name: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("create", "-f", "-", input=json.dumps(_session(name, spec)))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop("JUPYTER_TOKEN", None)
        return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def people(installed: LocalCluster, tmp_path: Path) -> tuple[Person, Person]:
    installed.apply(SAMPLE_RBAC)
    return Person(installed, "alice", tmp_path), Person(installed, "bob", tmp_path)


def test_shared_labs_alice_reaches_only_her_own(
    installed: LocalCluster, operator: InClusterOperator, people: tuple[Person, Person]
) -> None:
    alice, bob = people
    tag = uuid.uuid4().hex[:6]
    hers, his = f"alice-{tag}", f"bob-{tag}"
    try:
        made = bob.create(his, {"user": "bob", "home": {"size": "16Mi"}})
        assert made.returncode == 0, made.stderr
        made = alice.create(hers, {"user": "alice"})
        assert made.returncode == 0, made.stderr
        wait_phase(installed, his, "Ready", timeout=180)
        wait_phase(installed, hers, "Ready", timeout=180)

        # her own lab works end to end, as her (the operator let her read its token)
        done = alice.cli("exec", hers, "-n", LABS, "-c", "print('mine')")
        assert (done.returncode, done.stdout) == (0, "mine\n"), done.stderr

        # bob's session, token and lab are not hers
        attempts = {
            "create for bob": alice.create(f"alice-as-bob-{tag}", {"user": "bob"}),
            "patch his": alice.kubectl(
                "patch", "ks", his, "--type=merge", "-p", '{"spec":{"suspend":true}}'
            ),
            "resume his": alice.kubectl(
                "annotate", "ks", his, "kernelsession.dev/resume=1", "--overwrite"
            ),
            "delete his": alice.kubectl("delete", "ks", his, "--wait=false"),
            "read his token": alice.kubectl("get", "secret", f"{his}-token"),
            "exec in his lab": alice.cli("exec", his, "-n", LABS, "-c", "print(1)"),
        }
        for what, result in attempts.items():
            print(f"{what}: {result.stderr.strip()[:300]}")
            assert result.returncode != 0, what
        assert "spec.user" in attempts["create for bob"].stderr
        for what in ("patch his", "resume his", "delete his"):
            assert "belongs to bob" in attempts[what].stderr, what
        assert "forbidden" in attempts["read his token"].stderr.lower()
        assert get_ks(installed, his)["status"]["phase"] == "Ready"

        # nor through any spec field of a session of her own
        steal = {"secretKeyRef": {"name": f"{his}-token", "key": "token"}}
        specs: dict[str, tuple[dict[str, Any], str]] = {
            "his token": (
                {"env": [{"name": "STOLEN", "valueFrom": steal}]},
                "spec.env[0].valueFrom.secretKeyRef.name",
            ),
            "his claim": (
                {"volumes": [{"name": "h", "persistentVolumeClaim": {"claimName": f"{his}-home"}}]},
                "spec.volumes[0].persistentVolumeClaim.claimName",
            ),
            "client label": (
                {"podLabels": {"kernelsession.dev/client": "true"}},
                "spec.podLabels[kernelsession.dev/client]",
            ),
            "hostPath": (
                {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
                "spec.volumes[0].hostPath",
            ),
            "toleration": (
                {"tolerations": [{"operator": "Exists"}]},
                "spec.tolerations[0]",
            ),
            "node selector": (
                {"nodeSelector": {"kubernetes.io/hostname": "local-node"}},
                "spec.nodeSelector[kubernetes.io/hostname]",
            ),
            "no limits": (
                {"resources": {"requests": {"cpu": "100m"}}},
                "spec.resources.limits.memory",
            ),
            "over limits": (
                {"resources": {"limits": {"cpu": "64", "memory": "1Ti"}}},
                "spec.resources.limits.cpu",
            ),
            "culling off": ({"culling": {"idleTimeoutSeconds": 0}}, "spec.culling"),
        }
        for i, (what, (spec, field)) in enumerate(specs.items()):
            result = alice.create(f"alice-{tag}-{i}", {"user": "alice", **spec})
            print(f"{what}: {result.stderr.strip()[:300]}")
            assert result.returncode != 0, what
            assert field in result.stderr, (what, result.stderr)
        # the attack of the issue: patching her own running session
        patch = json.dumps({"spec": {"env": [{"name": "STOLEN", "valueFrom": steal}]}})
        result = alice.kubectl("patch", "ks", hers, "--type=merge", "-p", patch)
        assert result.returncode != 0
        assert "spec.env[0].valueFrom.secretKeyRef.name" in result.stderr
        # what she may do to her own: suspend it and delete it
        assert (
            alice.kubectl(
                "patch", "ks", hers, "--type=merge", "-p", '{"spec":{"suspend":true}}'
            ).returncode
            == 0
        )
        assert alice.kubectl("delete", "ks", hers, "--wait=false").returncode == 0
    finally:
        for name in (hers, his):
            installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)
        installed.kubectl("-n", LABS, "delete", "pvc", f"{his}-home", "--wait=false", check=False)


# -- the operator on its own --------------------------------------------------------------


@pytest.fixture
def without_admission(installed: LocalCluster) -> Iterator[None]:
    """The session policy's binding removed (a cluster without it), restored after."""
    admission = Path(__file__).parents[2] / "manifests" / "admission.yaml"
    installed.kubectl("delete", "validatingadmissionpolicybinding", "kernelsession-session")
    probe = _session("probe-unbound", {"user": "x", "podLabels": {"kernelsession.dev/client": "y"}})
    try:
        wait_for(
            lambda: (
                installed.kubectl(
                    "create", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False
                ).returncode
                == 0
            ),
            timeout=30,
            what="the session policy's binding to be gone",
        )
        yield
    finally:
        installed.apply(admission)


def test_operator_refuses_on_its_own(
    installed: LocalCluster, operator: InClusterOperator, without_admission: None
) -> None:
    tag = uuid.uuid4().hex[:6]
    cases = {
        f"pr{tag}-token": (
            {
                "env": [
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "x-token", "key": "t"}}}
                ]
            },
            "spec.env[0].valueFrom.secretKeyRef.name",
        ),
        f"pr{tag}-secret": (
            {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "other", "key": "t"}}}]},
            "spec.env[0].valueFrom.secretKeyRef.name",
        ),
        f"pr{tag}-label": (
            {"podLabels": {"kernelsession.dev/client": "true"}},
            "spec.podLabels[kernelsession.dev/client]",
        ),
        f"pr{tag}-culling": ({"culling": {"maxAgeSeconds": 0}}, "spec.culling.maxAgeSeconds"),
        f"pr{tag}-selector": ({"nodeSelector": {"zone": "x"}}, "spec.nodeSelector[zone]"),
    }
    try:
        for name, (spec, _) in cases.items():
            # as the admin, for a user who may read nothing: only the operator is left
            apply_session(installed, name, {"user": "mallory", **spec})
        for name, (_, field) in cases.items():
            status = wait_phase(installed, name, "Failed", timeout=60, reason="PolicyRejected")
            print(f"{name}: {status['message']}")
            assert field in status["message"]
            assert not children(installed, name).get("Pod")
    finally:
        for name in cases:
            installed.kubectl("-n", LABS, "delete", "ks", name, "--wait=false", check=False)


def test_tightened_rule_keeps_the_running_lab_and_refuses_its_next_start(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    image = installed.image_refs["lab"]
    apply_session(installed, session_name, {"user": "tess", "image": image})
    ready = wait_phase(installed, session_name, "Ready", timeout=120)
    pod = ready["podName"]
    try:
        set_labs_policy(installed, TEST_POLICY | {"images": "registry.example.org/only/*"})

        def violation() -> dict[str, Any] | None:
            status = get_ks(installed, session_name)["status"]
            found = [c for c in status.get("conditions") or [] if c["type"] == "PolicyViolation"]
            return status if found and status["phase"] == "Ready" else None

        status = wait_for(violation, timeout=60, what="condition PolicyViolation")
        (condition,) = [c for c in status["conditions"] if c["type"] == "PolicyViolation"]
        assert "spec.image" in condition["message"]
        assert status["podName"] == pod  # still running, untouched

        installed.kubectl("-n", LABS, "delete", "pod", pod)  # its next start
        refused = wait_phase(installed, session_name, "Failed", 60, reason="PolicyRejected")
        assert "spec.image" in refused["message"]
        assert not [
            p
            for p in children(installed, session_name).get("Pod", [])
            if not p["metadata"].get("deletionTimestamp")
        ]
    finally:
        set_labs_policy(installed, TEST_POLICY)
    # loosened again: it starts by itself
    wait_phase(installed, session_name, "Ready", timeout=180)


def test_shipped_labs_policy_is_the_admission_file(installed: LocalCluster) -> None:
    """The labs ConfigMap exists (the binding refuses every session in a namespace without
    one) and parses."""
    from kernelsession.operator import policy

    data = installed.get_json("-n", LABS, "configmap/kernelsession-policy")["data"]
    shipped = next(
        d
        for d in yaml.safe_load_all((SAMPLE_RBAC.parents[1] / "admission.yaml").read_text())
        if d and d["kind"] == "ConfigMap"
    )
    assert shipped["data"].items() <= data.items()
    assert policy.parse(data).max_memory is not None


def test_namespace_deletion_is_not_blocked(installed: LocalCluster) -> None:
    """The namespace controller deletes a namespace's sessions (and its ConfigMap, in
    whatever order) although it is not their user."""
    ns = f"t-del-{uuid.uuid4().hex[:6]}"
    installed.kubectl("create", "namespace", ns)
    installed.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "kernelsession-policy", "namespace": ns},
                "data": {},
            },
            _session("doomed", {"user": "someone"})
            | {"metadata": {"name": "doomed", "namespace": ns}},
        ]
    )
    installed.kubectl("delete", "namespace", ns, "--wait=false")
    wait_for(
        lambda: installed.kubectl("get", "namespace", ns, check=False).returncode != 0,
        timeout=90,
        what=f"namespace {ns} gone",
    )
