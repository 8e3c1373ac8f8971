"""A person is a tenant: what a ``LabProfile`` asks for, built as manifests (pure).

For each profile the operator makes and keeps in shape: the owner's Namespace (labelled
with the owner, Pod Security ``restricted``), the operator's own RoleBindings there, the
owner's RoleBinding, a ResourceQuota (``spec.quota`` verbatim), a LimitRange (so no lab
runs without limits), the ``kernelsession-policy`` ConfigMap (the admission policy's
parameters) and a default-deny NetworkPolicy (labs admit only what their own policy
lists). :func:`desired` builds them; :func:`repair` says how to put one back.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, cast

import kopf

from kernelsession.operator import naming, policy
from kernelsession.operator.config import Settings

Body = Mapping[str, Any]
Manifest = dict[str, Any]

PLURAL = "labprofiles"
KIND = "LabProfile"
FINALIZER = f"{naming.GROUP}/profile"
PROFILE_LABEL = f"{naming.GROUP}/profile"
OWNER_KIND_LABEL = f"{naming.GROUP}/owner-kind"
OWNER_LABEL = f"{naming.GROUP}/owner"
OWNER_ANNOTATION = f"{naming.GROUP}/owner"
QUOTA_NAME = "kernelsession-quota"
LIMITS_NAME = "kernelsession-limits"
DEFAULT_POLICY_NAME = "kernelsession-default-deny"
OWNER_BINDING = "kernelsession-owner"
OWNER_ROLE = "kernelsession-profile-owner"
OPERATOR_ROLES = ("kernelsession-operator", "kernelsession-operator-profile")
"""ClusterRoles the operator binds to itself in each profile namespace (manifests/rbac.yaml)."""
OPERATOR_ACCOUNT = "kernelsession-operator"
RBAC_GROUP = "rbac.authorization.k8s.io"
POD_SECURITY = {
    f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")
} | {"pod-security.kubernetes.io/enforce-version": "latest"}
_MAX_NAMESPACE = 63


def _spec(profile: Body) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = profile.get("spec") or {}
    return spec


def _name(profile: Body) -> str:
    return str(profile["metadata"]["name"])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def owner_slug(kind: str, name: str) -> str:
    """A DNS label for the owner: the name lower-cased with runs of anything but letters and
    digits as ``-``; groups start with ``group-``; a short digest of the exact owner is
    added when the name had to change, so two owners never share a slug."""
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if kind == "Group":
        base = f"group-{base}".rstrip("-")
    exact = base == (f"group-{name}" if kind == "Group" else name)
    if exact and base and len(base) <= 50:
        return base
    suffix = _digest(f"{kind}:{name}")
    return f"{base[:50].rstrip('-')}-{suffix}".lstrip("-")


def namespace_for(profile: Body, settings: Settings) -> str:
    """The profile's namespace: ``spec.namespace``, else the prefix and the owner's slug."""
    spec = _spec(profile)
    if spec.get("namespace"):
        return str(spec["namespace"])
    owner = spec["owner"]
    name = settings.profile_namespace_prefix + owner_slug(owner["kind"], owner["name"])
    return name[:_MAX_NAMESPACE].rstrip("-")


def served(namespace: str, settings: Settings) -> bool:
    """Whether the operator's namespace patterns (``KERNELSESSION_NAMESPACES``) cover it."""
    if settings.clusterwide:
        return True
    return any(fnmatch.fnmatchcase(namespace, p) for p in settings.namespaces)


def _labels(profile: Body) -> dict[str, str]:
    return {naming.MANAGED_BY: naming.MANAGER, PROFILE_LABEL: _name(profile)}


def _owned(profile: Body, manifest: Manifest) -> Manifest:
    """Owned by the profile: the garbage collector deletes it with the profile."""
    owner = {
        "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
        "kind": KIND,
        "metadata": {"name": _name(profile), "uid": profile["metadata"]["uid"], "labels": {}},
    }
    kopf.adopt(manifest, owner=cast(kopf.Body, owner))
    if manifest["metadata"].get("namespace") is None:  # a cluster-scoped owner has none
        manifest["metadata"].pop("namespace", None)
    return manifest


def namespace(profile: Body, settings: Settings) -> Manifest:
    """The owner's namespace; owned by the profile only under ``deletionPolicy: Delete``
    (the garbage collector then removes it, with no operator running)."""
    owner = _spec(profile)["owner"]
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace_for(profile, settings),
            "labels": _labels(profile)
            | POD_SECURITY
            | {
                OWNER_KIND_LABEL: owner["kind"],
                OWNER_LABEL: owner_slug(owner["kind"], owner["name"]),
                "app.kubernetes.io/part-of": "kernelsession",
            },
            "annotations": {OWNER_ANNOTATION: owner["name"]},
        },
    }
    if _spec(profile).get("deletionPolicy") == "Delete":
        _owned(profile, manifest)
    return manifest


def _binding(profile: Body, ns: str, name: str, role: str, subject: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": ns, "labels": _labels(profile)},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [dict(subject)],
    }


def operator_bindings(profile: Body, settings: Settings) -> list[Manifest]:
    """The operator's own access to the namespace (made first: its watches there need it)."""
    ns = namespace_for(profile, settings)
    account = {"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT}
    account["namespace"] = settings.operator_namespace
    return [_binding(profile, ns, role, role, account) for role in OPERATOR_ROLES]


def owner_binding(profile: Body, settings: Settings) -> Manifest:
    """The owner's access: owned by the profile, so deleting the profile removes it even
    when no operator runs."""
    owner = _spec(profile)["owner"]
    subject = {"apiGroup": RBAC_GROUP, "kind": owner["kind"], "name": owner["name"]}
    ns = namespace_for(profile, settings)
    return _owned(profile, _binding(profile, ns, OWNER_BINDING, OWNER_ROLE, subject))


def resource_quota(profile: Body, settings: Settings) -> Manifest:
    """``spec.quota`` verbatim as ``spec.hard``."""
    hard = {k: str(v) for k, v in (_spec(profile).get("quota") or {}).items()}
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": QUOTA_NAME,
            "namespace": namespace_for(profile, settings),
            "labels": _labels(profile),
        },
        "spec": {"hard": hard},
    }


def limit_range(profile: Body, settings: Settings) -> Manifest:
    """Defaults and bounds of every container: the profile's ``lab.defaultResources``
    (else the operator's default lab resources) and ``lab.maxCPU``/``maxMemory``."""
    lab: Mapping[str, Any] = _spec(profile).get("lab") or {}
    defaults: Mapping[str, Any] = lab.get("defaultResources") or settings.default_resources
    item: dict[str, Any] = {"type": "Container"}
    limits = {k: str(v) for k, v in (defaults.get("limits") or {}).items()}
    requests = {k: str(v) for k, v in (defaults.get("requests") or {}).items()}
    maximum = {
        key: str(lab[field])
        for key, field in (("cpu", "maxCPU"), ("memory", "maxMemory"))
        if lab.get(field) is not None
    }
    for key, most in maximum.items():  # defaults within the bounds (else a 422)
        if key in limits and _above(limits[key], most):
            limits[key] = most
        limits.setdefault(key, most)  # the API server's own defaulting, made explicit:
    for key, cap in limits.items():  # what it stores is what is compared for drift
        if key in requests and _above(requests[key], cap):
            requests[key] = cap
        requests.setdefault(key, cap)
    if limits:
        item["default"] = limits
    if requests:
        item["defaultRequest"] = requests
    if maximum:
        item["max"] = maximum
    return {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {
            "name": LIMITS_NAME,
            "namespace": namespace_for(profile, settings),
            "labels": _labels(profile),
        },
        "spec": {"limits": [item]},
    }


def _lines(values: Iterable[Any]) -> str:
    return "\n".join(str(v) for v in values)


def toleration_line(toleration: Mapping[str, Any]) -> str:
    """``key=value:Effect``, ``key:Effect`` (operator Exists) or ``key=value``."""
    key = str(toleration["key"])
    exists = toleration.get("operator") == "Exists"
    head = key if exists else f"{key}={toleration.get('value', '')}"
    return f"{head}:{toleration['effect']}" if toleration.get("effect") else head


def policy_data(spec: Mapping[str, Any]) -> dict[str, str]:
    """The ``kernelsession-policy`` ConfigMap's data from a profile's spec: the admission
    policy's (and the operator's check's) parameters for the namespace. Lists are one item
    per line; an absent key means the rule's default (``images`` absent: any image)."""
    data: dict[str, str] = {}
    for key in ("images", "secrets", "configMaps", "claims"):
        if spec.get(key) is not None:
            data[key] = _lines(spec[key])
    if spec.get("tolerations") is not None:
        data["tolerations"] = _lines(toleration_line(t) for t in spec["tolerations"])
    if spec.get("nodeSelector") is not None:
        data["nodeSelector"] = _lines(f"{k}={v}" for k, v in sorted(spec["nodeSelector"].items()))
    lab: Mapping[str, Any] = spec.get("lab") or {}
    for field in ("maxCPU", "maxMemory"):
        if lab.get(field) is not None:
            data[field] = str(lab[field])
    culling: Mapping[str, Any] = spec.get("culling") or {}
    if culling.get("maxIdleTimeoutSeconds") is not None:
        data["maxIdleTimeoutSeconds"] = str(int(culling["maxIdleTimeoutSeconds"]))
    if culling.get("maxAgeSeconds") is not None:
        data["maxAgeSeconds"] = str(int(culling["maxAgeSeconds"]))
    data["cullingNeverAllowed"] = "true" if culling.get("neverAllowed") else "false"
    owner = spec.get("owner")
    if owner is not None:  # its RoleBinding reads the labs' tokens: no per-lab readers
        data["owner"] = f"{owner['kind']} {owner['name']}"
    return data


def policy_configmap(profile: Body, settings: Settings) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": policy.CONFIGMAP,
            "namespace": namespace_for(profile, settings),
            "labels": _labels(profile),
        },
        "data": policy_data(_spec(profile)),
    }


def default_network_policy(profile: Body, settings: Settings) -> Manifest:
    """Deny all ingress to every pod of the namespace: policies add up, so each lab admits
    exactly what its own NetworkPolicy lists, and nothing else there is reachable."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": DEFAULT_POLICY_NAME,
            "namespace": namespace_for(profile, settings),
            "labels": _labels(profile),
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }


def desired(profile: Body, settings: Settings) -> list[Manifest]:
    """Everything in the namespace, in the order to create it (the operator's access
    first, the owner's last: nothing is theirs before the quota and limits are there)."""
    return [
        *operator_bindings(profile, settings),
        resource_quota(profile, settings),
        limit_range(profile, settings),
        policy_configmap(profile, settings),
        default_network_policy(profile, settings),
        owner_binding(profile, settings),
    ]


# -- drift ---------------------------------------------------------------------------
def quantity(value: Any) -> Decimal | str:
    """A Kubernetes quantity as a number (``"1Gi"`` == ``"1024Mi"``, :func:`policy.quantity`);
    the text itself when it is not one (so it still compares)."""
    try:
        return policy.quantity(value)
    except ValueError:
        return str(value).strip()


def _above(value: Any, bound: Any) -> bool:
    a, b = quantity(value), quantity(bound)
    return isinstance(a, Decimal) and isinstance(b, Decimal) and a > b


def _quantities(values: Mapping[str, Any] | None) -> dict[str, Decimal | str]:
    return {k: quantity(v) for k, v in (values or {}).items()}


def _limits_shape(limits: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: _quantities(v) if isinstance(v, Mapping) else v for k, v in item.items()}
        for item in limits
    ]


def _owner_refs(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    return sorted((r.get("kind", ""), r.get("uid", "")) for r in meta.get("ownerReferences") or [])


def repair(desired_obj: Mapping[str, Any], existing: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch taking ``existing`` back to ``desired_obj`` (with its resourceVersion
    as precondition), or None when it is in shape. Labels and annotations the operator
    sets must have its values (others may add theirs); quantities compare by value.

    Raises:
        ValueError: a RoleBinding's roleRef differs (immutable: delete and create it).
    """
    kind = desired_obj["kind"]
    want_meta: Mapping[str, Any] = desired_obj["metadata"]
    meta: Mapping[str, Any] = existing.get("metadata") or {}
    patch: dict[str, Any] = {}
    meta_patch: dict[str, Any] = {}
    for part in ("labels", "annotations"):
        wanted: Mapping[str, str] = want_meta.get(part) or {}
        have: Mapping[str, str] = meta.get(part) or {}
        changed = {k: v for k, v in wanted.items() if have.get(k) != v}
        if changed:
            meta_patch[part] = changed
    if kind == "Namespace" and _owner_refs(want_meta) != _owner_refs(meta):
        meta_patch["ownerReferences"] = copy.deepcopy(want_meta.get("ownerReferences") or [])
    if kind == "RoleBinding":
        if existing.get("roleRef") != desired_obj["roleRef"]:
            raise ValueError(f"RoleBinding {want_meta['name']} refers to another role")
        if existing.get("subjects") != desired_obj["subjects"]:
            patch["subjects"] = copy.deepcopy(desired_obj["subjects"])
    elif kind == "ResourceQuota":
        hard = (existing.get("spec") or {}).get("hard") or {}
        if _quantities(hard) != _quantities(desired_obj["spec"]["hard"]):
            patch["spec"] = {"hard": {k: None for k in hard} | desired_obj["spec"]["hard"]}
    elif kind == "LimitRange":
        limits = (existing.get("spec") or {}).get("limits") or []
        if _limits_shape(limits) != _limits_shape(desired_obj["spec"]["limits"]):
            patch["spec"] = copy.deepcopy(desired_obj["spec"])
    elif kind == "ConfigMap":
        data = existing.get("data") or {}
        if data != desired_obj["data"]:
            patch["data"] = {k: None for k in data} | desired_obj["data"]
    elif kind == "NetworkPolicy":
        spec = existing.get("spec") or {}
        if spec != desired_obj["spec"]:
            patch["spec"] = {k: None for k in spec} | copy.deepcopy(desired_obj["spec"])
    if not patch and not meta_patch:
        return None
    meta_patch["resourceVersion"] = meta.get("resourceVersion")
    patch["metadata"] = meta_patch
    return patch
