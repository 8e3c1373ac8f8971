"""Pure builders of a session's children: token Secret and its readers' Role, Service,
NetworkPolicy and Ingress, and the URLs clients reach the lab by. The lab pod's template
is :mod:`labpod`'s, the home volume's claim :mod:`homeclaim`'s.

Each takes the session body and the operator settings and returns a manifest dict
owned by the session (ownerReferences via ``kopf.adopt``), so deleting the session
deletes its children through the garbage collector, with no operator running.
"""

from __future__ import annotations

import base64
import copy
import secrets
from collections.abc import Mapping
from typing import Any, cast

import kopf

from kernelsession.operator import naming
from kernelsession.operator.config import Settings

Body = Mapping[str, Any]
Manifest = dict[str, Any]


def metadata_of(body: Body) -> Mapping[str, Any]:
    """The session's ``metadata``."""
    meta: Mapping[str, Any] = body["metadata"]
    return meta


def spec_of(body: Body) -> Mapping[str, Any]:
    """The session's ``spec`` (empty when it has none)."""
    spec: Mapping[str, Any] = body.get("spec") or {}
    return spec


def owned(body: Body, manifest: Manifest) -> Manifest:
    """Make the session the controller owner of ``manifest``, in its namespace."""
    owner = {
        "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
        "kind": naming.KIND,
        "metadata": {
            "name": metadata_of(body)["name"],
            "uid": metadata_of(body)["uid"],
            "namespace": metadata_of(body)["namespace"],
            "labels": {},
        },
    }
    kopf.adopt(manifest, owner=cast(kopf.Body, owner))
    return manifest


def session_owner(body: Body) -> dict[str, Any]:
    """The ownerReference that makes a child go with the session (the garbage collector)."""
    reference = owned(body, {"metadata": {}})
    return dict(reference["metadata"]["ownerReferences"][0])


def labels_for(body: Body) -> dict[str, str]:
    return naming.child_labels(metadata_of(body)["name"], spec_of(body)["user"])


def lab_selector(session: str) -> dict[str, str]:
    """The labels that select a session's lab pod (Service and NetworkPolicy)."""
    return {naming.SESSION_LABEL: session, naming.COMPONENT_LABEL: "lab"}


def new_token() -> str:
    """A fresh lab token: 256 bits from the OS CSPRNG."""
    return secrets.token_urlsafe(32)


def token_secret(body: Body, token: str) -> Manifest:
    """The immutable Secret holding the lab token under key ``token``."""
    name = metadata_of(body)["name"]
    return owned(
        body,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": naming.token_secret_name(name),
                "labels": labels_for(body) | {naming.COMPONENT_LABEL: "token"},
            },
            "type": "Opaque",
            "immutable": True,
            "data": {naming.TOKEN_KEY: base64.b64encode(token.encode()).decode()},
        },
    )


def token_reader(body: Body, subjects: list[str]) -> tuple[Manifest, Manifest]:
    """A Role reading only the session's token Secret, bound to the Kubernetes users that
    stand for ``spec.user`` (``subjects``): in a namespace shared by many people, each
    reads their own labs' tokens and no other (RBAC cannot say "Secrets of my sessions")."""
    session = metadata_of(body)["name"]
    name = naming.token_reader_name(session)
    labels = labels_for(body) | {naming.COMPONENT_LABEL: "token"}
    role = owned(
        body,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "labels": labels},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["secrets"],
                    "resourceNames": [naming.token_secret_name(session)],
                    "verbs": ["get"],
                }
            ],
        },
    )
    binding = owned(
        body,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": subject}
                for subject in subjects
            ],
        },
    )
    return role, binding


def base_path(body: Body, settings: Settings) -> str:
    """The lab's base_url: ``/``, or the session's Ingress path (links and websockets
    then work behind the Ingress, through the Service and through a port-forward alike)."""
    ingress = settings.ingress
    if ingress is None:
        return "/"
    meta = metadata_of(body)
    return ingress.path.format(namespace=meta["namespace"], name=meta["name"])


def service(body: Body, settings: Settings) -> Manifest:
    """ClusterIP Service in front of the lab, port 8888."""
    name = metadata_of(body)["name"]
    return owned(
        body,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": naming.service_name(name),
                "labels": labels_for(body) | {naming.COMPONENT_LABEL: "lab"},
            },
            "spec": {
                "type": "ClusterIP",
                "selector": lab_selector(name),
                "ports": [
                    {
                        "name": naming.LAB_PORT_NAME,
                        "port": settings.lab_port,
                        "targetPort": naming.LAB_PORT_NAME,
                        "protocol": "TCP",
                    }
                ],
            },
        },
    )


def network_policy(body: Body, settings: Settings) -> Manifest:
    """Ingress to the lab only from client-labelled pods of the lab's own namespace (no
    namespaceSelector: a tenant's clients never reach another tenant's labs), from the
    operator, and from the ingress controller's pods when the operator creates an Ingress
    per session."""
    name = metadata_of(body)["name"]
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": {naming.CLIENT_LABEL: "true"}}},
        {
            "namespaceSelector": {
                "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
            },
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": naming.MANAGER}},
        },
    ]
    if settings.ingress is not None:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {
                        "kubernetes.io/metadata.name": settings.ingress.controller_namespace
                    }
                },
                "podSelector": {"matchLabels": dict(settings.ingress.controller_labels)},
            }
        )
    return owned(
        body,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": naming.network_policy_name(name),
                "labels": labels_for(body) | {naming.COMPONENT_LABEL: "lab"},
            },
            "spec": {
                "podSelector": {"matchLabels": lab_selector(name)},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": peers,
                        "ports": [{"protocol": "TCP", "port": settings.lab_port}],
                    }
                ],
            },
        },
    )


def lab_url(
    body: Body, settings: Settings, pod_ip: str | None, *, base: str | None = None
) -> str | None:
    """Base URL of the lab for clients in this deployment (ends with ``/``); ``base``:
    the base path the running pod serves (an outdated pod keeps its own)."""
    meta = metadata_of(body)
    base = base or base_path(body, settings)
    if settings.url_mode == "service":
        svc = naming.service_name(meta["name"])
        host = f"{svc}.{meta['namespace']}.svc.{settings.cluster_domain}"
        return f"http://{host}:{settings.lab_port}{base}"
    if not pod_ip:
        return None
    return f"http://{pod_ip}:{settings.lab_port}{base}"


def external_url(body: Body, settings: Settings) -> str | None:
    """The lab's URL through its Ingress (None without an Ingress, or when neither a host
    nor ``KERNELSESSION_INGRESS_URL`` names where users reach the controller)."""
    if settings.ingress is None or settings.ingress.external_base is None:
        return None
    return settings.ingress.external_base + base_path(body, settings)


def ingress(body: Body, settings: Settings) -> Manifest | None:
    """The session's Ingress: its path (the lab's base_url) on the configured host, to the
    lab's Service; None when the operator creates no Ingress."""
    cfg = settings.ingress
    if cfg is None:
        return None
    name = metadata_of(body)["name"]
    rule: dict[str, Any] = {
        "http": {
            "paths": [
                {
                    "path": base_path(body, settings),
                    "pathType": "Prefix",
                    "backend": {
                        "service": {
                            "name": naming.service_name(name),
                            "port": {"name": naming.LAB_PORT_NAME},
                        }
                    },
                }
            ]
        }
    }
    spec: dict[str, Any] = {}
    if cfg.class_name:
        spec["ingressClassName"] = cfg.class_name
    if cfg.tls_secret:
        tls: dict[str, Any] = {"secretName": cfg.tls_secret}
        if cfg.host:
            tls["hosts"] = [cfg.host]
        spec["tls"] = [tls]
    if cfg.host:
        rule = {"host": cfg.host, **rule}
    spec["rules"] = [rule]
    metadata: dict[str, Any] = {
        "name": naming.ingress_name(name),
        "labels": labels_for(body) | {naming.COMPONENT_LABEL: "lab"},
    }
    if cfg.annotations:
        metadata["annotations"] = dict(cfg.annotations)
    return owned(
        body,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": metadata,
            "spec": spec,
        },
    )


def child_patch(
    desired: Mapping[str, Any],
    spec: Mapping[str, Any],
    annotations: Mapping[str, str],
    resource_version: str,
) -> dict[str, Any] | None:
    """A merge patch taking an existing child (its ``spec`` and ``annotations``) back to
    ``desired``, or None when nothing differs: someone edited it, or the operator's
    settings changed. Annotations others add (controllers do) are left alone; the
    ``resourceVersion`` makes the patch fail rather than overwrite a newer change."""
    wanted: Mapping[str, str] = desired["metadata"].get("annotations") or {}
    changed = {k: v for k, v in wanted.items() if annotations.get(k) != v}
    if dict(spec) == desired["spec"] and not changed:
        return None
    new_spec: dict[str, Any] = {k: None for k in spec if k not in desired["spec"]}
    new_spec.update(copy.deepcopy(dict(desired["spec"])))
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if changed:
        metadata["annotations"] = changed
    return {"metadata": metadata, "spec": new_spec}
