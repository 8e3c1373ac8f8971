"""Pure builders of a session's children: Secret, Pod, Service, NetworkPolicy, home PVC
and Ingress.

Each takes the session body and the operator settings and returns a manifest dict
owned by the session (ownerReferences via ``kopf.adopt``), so deleting the session
deletes its children through the garbage collector, with no operator running.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
from collections.abc import Mapping
from typing import Any, cast

import kopf

from kernelsession.operator import naming
from kernelsession.operator.config import Settings

Body = Mapping[str, Any]
Manifest = dict[str, Any]


def _meta(body: Body) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = body["metadata"]
    return meta


def _spec(body: Body) -> Mapping[str, Any]:
    spec: Mapping[str, Any] = body.get("spec") or {}
    return spec


def _owned(body: Body, manifest: Manifest) -> Manifest:
    """Make the session the controller owner of ``manifest``, in its namespace."""
    owner = {
        "apiVersion": f"{naming.GROUP}/{naming.VERSION}",
        "kind": naming.KIND,
        "metadata": {
            "name": _meta(body)["name"],
            "uid": _meta(body)["uid"],
            "namespace": _meta(body)["namespace"],
            "labels": {},
        },
    }
    kopf.adopt(manifest, owner=cast(kopf.Body, owner))
    return manifest


def labels_for(body: Body) -> dict[str, str]:
    return naming.child_labels(_meta(body)["name"], _spec(body)["user"])


def lab_selector(session: str) -> dict[str, str]:
    """The labels that select a session's lab pod (Service and NetworkPolicy)."""
    return {naming.SESSION_LABEL: session, naming.COMPONENT_LABEL: "lab"}


def new_token() -> str:
    """A fresh lab token: 256 bits from the OS CSPRNG."""
    return secrets.token_urlsafe(32)


def token_secret(body: Body, token: str) -> Manifest:
    """The immutable Secret holding the lab token under key ``token``."""
    name = _meta(body)["name"]
    return _owned(
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
    session = _meta(body)["name"]
    name = naming.token_reader_name(session)
    labels = labels_for(body) | {naming.COMPONENT_LABEL: "token"}
    role = _owned(
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
    binding = _owned(
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
    meta = _meta(body)
    return ingress.path.format(namespace=meta["namespace"], name=meta["name"])


def lab_args(settings: Settings, base: str = "/") -> list[str]:
    """Arguments of ``jupyter server``: listen on the pod IP, token from the environment,
    served under ``base``."""
    return [
        "server",
        # all of the pod's addresses: the pod IP (Service, probes) and its loopback,
        # where `kubectl port-forward` (and `kernelsession open`) connect
        "--ServerApp.ip=0.0.0.0",
        f"--ServerApp.port={settings.lab_port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
        "--ServerApp.allow_remote_access=True",
        # Programmatic clients read large outputs: never drop IOPub messages.
        "--ServerApp.iopub_data_rate_limit=0",
        "--ServerApp.iopub_msg_rate_limit=0",
        *([f"--ServerApp.base_url={base}"] if base != "/" else []),
        *settings.lab_extra_args,
    ]


def pod_spec(body: Body, settings: Settings) -> dict[str, Any]:
    """The lab pod's ``spec``: hardened, token via secretKeyRef, no service-account token."""
    spec = _spec(body)
    start_timeout = int(spec.get("startTimeoutSeconds") or settings.default_start_timeout)
    name = _meta(body)["name"]
    env: list[dict[str, Any]] = [
        {
            "name": "JUPYTER_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": naming.token_secret_name(name), "key": naming.TOKEN_KEY}
            },
        },
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "KERNELSESSION_USER", "value": spec["user"]},
    ]
    env.extend(copy.deepcopy(list(spec.get("env") or [])))
    base = base_path(body, settings)
    probe_get = {"path": f"{base}api", "port": settings.lab_port, "scheme": "HTTP"}
    container: dict[str, Any] = {
        "name": "lab",
        "image": spec.get("image") or settings.default_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["jupyter"],
        "args": lab_args(settings, base),
        "env": env,
        "ports": [
            {"name": naming.LAB_PORT_NAME, "containerPort": settings.lab_port, "protocol": "TCP"}
        ],
        "resources": copy.deepcopy(dict(spec.get("resources") or settings.default_resources)),
        "readinessProbe": {
            "httpGet": probe_get,
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        # Liveness starts only once the lab has answered: a lab that starts slowly (a busy
        # node starting many labs) is never restarted for it; the operator's own
        # startTimeoutSeconds decides when a start has failed.
        "startupProbe": {
            "httpGet": dict(probe_get),
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": max(1, -(-start_timeout // 2)),
        },
        "livenessProbe": {
            "httpGet": dict(probe_get),
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    mounts = copy.deepcopy(list(spec.get("volumeMounts") or []))
    home = spec.get("home")
    if home is not None:
        mounts.append({"name": naming.HOME_VOLUME, "mountPath": home_mount_path(spec)})
    if mounts:
        container["volumeMounts"] = mounts
    result: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 10,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_group,
            "fsGroup": settings.run_as_group,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if home is not None:
        # The volume's files belong to the lab's group; only fix them when the root differs.
        result["securityContext"]["fsGroupChangePolicy"] = "OnRootMismatch"
    for key in ("nodeSelector", "tolerations", "volumes"):
        if spec.get(key):
            result[key] = copy.deepcopy(spec[key])
    if home is not None:
        result.setdefault("volumes", []).append(
            {
                "name": naming.HOME_VOLUME,
                "persistentVolumeClaim": {"claimName": naming.home_claim_name(name)},
            }
        )
    return result


def pod_hash(spec: Mapping[str, Any], token_secret_uid: str) -> str:
    """Short digest of everything that needs a new pod when it changes."""
    blob = json.dumps({"spec": spec, "secret": token_secret_uid}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


# Session fields that never need a new pod: the running lab keeps going when they change.
_NOT_IN_POD = frozenset({"culling", "suspend", "startTimeoutSeconds"})


def spec_hash(body: Body, token_secret_uid: str) -> str:
    """Short digest of the session's own wishes for its pod (its spec, not the operator's
    defaults or code): a lab is replaced when this changes, never when only the operator's
    template does (that applies at the next start, or under ``KERNELSESSION_ROLLOUT``)."""
    spec = {k: v for k, v in _spec(body).items() if k not in _NOT_IN_POD}
    home = dict(spec.get("home") or {})
    if home:
        home.pop("reclaimPolicy", None)
        spec["home"] = home
    return pod_hash(spec, token_secret_uid)


def lab_pod(body: Body, settings: Settings, token_secret_uid: str) -> Manifest:
    """The lab Pod; its name carries a hash of its spec, so a re-run never duplicates it.
    Labelled with :func:`spec_hash` (which pods still do what the session asks)."""
    spec = pod_spec(body, settings)
    digest = pod_hash(spec, token_secret_uid)
    # Labels under kernelsession.dev/ are the operator's: a lab pod never carries one it
    # did not set (above all kernelsession.dev/client, which would admit it to every lab).
    extra = {
        k: v
        for k, v in (_spec(body).get("podLabels") or {}).items()
        if not k.startswith(f"{naming.GROUP}/")
    }
    labels = (
        extra
        | labels_for(body)
        | {
            naming.COMPONENT_LABEL: "lab",
            naming.HASH_LABEL: digest,
            naming.SPEC_HASH_LABEL: spec_hash(body, token_secret_uid),
        }
    )
    return _owned(
        body,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": naming.pod_name(_meta(body)["name"], digest), "labels": labels},
            "spec": spec,
        },
    )


def service(body: Body, settings: Settings) -> Manifest:
    """ClusterIP Service in front of the lab, port 8888."""
    name = _meta(body)["name"]
    return _owned(
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
    name = _meta(body)["name"]
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
    return _owned(
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


DEFAULT_HOME_SIZE = "1Gi"


def home_mount_path(spec: Mapping[str, Any]) -> str:
    home: Mapping[str, Any] = spec.get("home") or {}
    return str(home.get("mountPath") or naming.DEFAULT_HOME_MOUNT)


def reclaim_policy(spec: Mapping[str, Any]) -> str:
    """``spec.home.reclaimPolicy``: ``Retain`` (default) or ``Delete``."""
    home: Mapping[str, Any] = spec.get("home") or {}
    return "Delete" if home.get("reclaimPolicy") == "Delete" else "Retain"


def session_owner(body: Body) -> dict[str, Any]:
    """The ownerReference that makes a child go with the session (the garbage collector)."""
    owned = _owned(body, {"metadata": {}})
    return dict(owned["metadata"]["ownerReferences"][0])


def home_claim(body: Body) -> Manifest | None:
    """The session's home PersistentVolumeClaim (None when ``spec.home`` is unset).

    Culling, suspending and restarting the lab never touch it. With ``reclaimPolicy:
    Retain`` (the default) it has no owner and outlives the session (labelled with its
    user and session: a new session of that name and user mounts it again); with
    ``Delete`` the session owns it and it goes with the session.
    """
    spec = _spec(body)
    home: Mapping[str, Any] | None = spec.get("home")
    if home is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(home.get("size") or DEFAULT_HOME_SIZE)}},
    }
    if home.get("storageClassName"):
        claim_spec["storageClassName"] = home["storageClassName"]
    name = _meta(body)["name"]
    claim: Manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": naming.home_claim_name(name),
            "namespace": _meta(body)["namespace"],
            "labels": labels_for(body) | {naming.COMPONENT_LABEL: "home"},
        },
        "spec": claim_spec,
    }
    return _owned(body, claim) if reclaim_policy(spec) == "Delete" else claim


def claim_owner_patch(
    body: Body, owners: tuple[str, ...], resource_version: str
) -> dict[str, Any] | None:
    """A merge patch giving the home claim the owners its reclaim policy asks for (the
    session for ``Delete``, none for ``Retain``); None when it has them already."""
    uid = str(_meta(body)["uid"])
    if reclaim_policy(_spec(body)) == "Delete":
        wanted: list[dict[str, Any]] | None = [session_owner(body)]
        if owners == (uid,):
            return None
    else:
        wanted = None
        if not owners:
            return None
    return {"metadata": {"ownerReferences": wanted, "resourceVersion": resource_version}}


def lab_url(
    body: Body, settings: Settings, pod_ip: str | None, *, base: str | None = None
) -> str | None:
    """Base URL of the lab for clients in this deployment (ends with ``/``); ``base``:
    the base path the running pod serves (an outdated pod keeps its own)."""
    meta = _meta(body)
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
    name = _meta(body)["name"]
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
    return _owned(
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
