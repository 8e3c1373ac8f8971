"""The lab pod: its template (hardened, the token from the Secret, the home volume
mounted), the hashes that name it and say which pods still do what the session asks.

Pure: :mod:`observe` builds the desired pod once per pass; :mod:`rollout` picks the pod
that serves the session by its spec hash.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from kernelsession.operator import naming
from kernelsession.operator.builders import (
    Body,
    Manifest,
    base_path,
    labels_for,
    metadata_of,
    owned,
    spec_of,
)
from kernelsession.operator.config import Settings
from kernelsession.operator.homeclaim import home_mount_path


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
    spec = spec_of(body)
    start_timeout = int(spec.get("startTimeoutSeconds") or settings.default_start_timeout)
    name = metadata_of(body)["name"]
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
    spec = {k: v for k, v in spec_of(body).items() if k not in _NOT_IN_POD}
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
        for k, v in (spec_of(body).get("podLabels") or {}).items()
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
    return owned(
        body,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": naming.pod_name(metadata_of(body)["name"], digest),
                "labels": labels,
            },
            "spec": spec,
        },
    )
