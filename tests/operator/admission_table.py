"""The shared table of session-rule cases (tests/policy_cases.yaml) run through the
admission policy on a real API server, as each case's requester (impersonation: the
authorizer and admission see the impersonated user as they would the real one)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Kubectl = Callable[..., subprocess.CompletedProcess[str]]
TABLE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parents[1] / "policy_cases.yaml").read_text()
)
CASES: list[dict[str, Any]] = TABLE["cases"]
USER_ROLE = "kernelsession-table-user"
USER_VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


def world(prefix: str) -> dict[str, Any]:
    """The objects that make the table's world real: a namespace per parameter set with
    its ConfigMap, every requester may manage sessions there, the readable grants,
    ``assign`` for its holders, and the claims with their labels. Returns
    ``{"objects": [...], "namespaces": {policy: namespace}}``."""
    namespaces = {name: f"{prefix}-{name}" for name in TABLE["policies"]}
    objects: list[dict[str, Any]] = []
    for key, ns in namespaces.items():
        objects.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "kernelsession-policy", "namespace": ns},
                "data": TABLE["policies"][key],
            }
        )
        objects.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": USER_ROLE, "namespace": ns},
                "rules": [
                    {
                        "apiGroups": ["kernelsession.dev"],
                        "resources": ["kernelsessions"],
                        # listed: "*" would include the verb assign
                        "verbs": USER_VERBS,
                    }
                ],
            }
        )
        objects.append(_binding(ns, USER_ROLE, "Role", "Group", "system:authenticated"))
        for user in TABLE["world"]["assign"]:
            objects.append(_binding(ns, "kernelsession-assign", "ClusterRole", "User", user))
        for user, items in TABLE["world"]["readable"].items():
            safe = user.replace("@", "-at-").replace(":", "-").replace(".", "-").lower()
            rules = []
            for item in items:
                kind, _, name = item.partition("/")
                resource = "secrets" if kind == "Secret" else "configmaps"
                rules.append(
                    {
                        "apiGroups": [""],
                        "resources": [resource],
                        "resourceNames": [name],
                        "verbs": ["get"],
                    }
                )
            objects.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": f"reads-{safe}", "namespace": ns},
                    "rules": rules,
                }
            )
            objects.append(_binding(ns, f"reads-{safe}", "Role", "User", user))
        for claim, user in TABLE["world"]["claims"].items():
            labels = {"kernelsession.dev/user": user} if user else {}
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": claim, "namespace": ns, "labels": labels},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": "1Mi"}},
                        "storageClassName": "none",
                    },
                }
            )
    return {"objects": objects, "namespaces": namespaces}


def _binding(ns: str, role: str, role_kind: str, kind: str, name: str) -> dict[str, Any]:
    safe = name.replace("@", "-at-").replace(":", "-").replace(".", "-").lower()
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{role}-{safe}", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}],
    }


def session(case: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kernelsession.dev/v1alpha1",
        "kind": "KernelSession",
        "metadata": {"name": case["name"], "namespace": namespace},
        "spec": {"user": "alice", **case["spec"]},
    }


def admit(kubectl: Kubectl, case: dict[str, Any], namespaces: dict[str, str]) -> tuple[bool, str]:
    """(accepted, stderr) of creating the case's session as its requester, dry run."""
    ns = namespaces[case.get("policy", "strict")]
    result = kubectl(
        "create",
        "--dry-run=server",
        "-f",
        "-",
        f"--as={case.get('as', 'alice')}",
        input=json.dumps(session(case, ns)),
        check=False,
    )
    return result.returncode == 0, result.stderr.strip()


def expected_refusal(case: dict[str, Any]) -> str | None:
    """The field path admission's refusal names (None: admission accepts)."""
    return case.get("refused") or case.get("admission_refused")
