"""The KernelSession resource as data: names, phases, reasons, labels, children,
status parsing and the token.

One place for what every part of kernelsession (client, CLI, bench, operator,
local cluster) needs to know about the custom resource and its children, with no I/O:

>>> from kernelsession.client import resources
>>> resources.GROUP, resources.VERSION, resources.PLURAL
('kernelsession.dev', 'v1alpha1', 'kernelsessions')
>>> resources.Phase.parse("Ready") is resources.Phase.READY
True
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "API_VERSION",
    "CLIENT_LABEL",
    "COMPONENT_LABEL",
    "CRD_NAME",
    "DEFAULT_HOME_MOUNT",
    "DEFAULT_NAMESPACE",
    "GROUP",
    "HASH_LABEL",
    "KIND",
    "LAB_PORT",
    "LAB_PORT_NAME",
    "MANAGED_BY",
    "MANAGER",
    "PLURAL",
    "RESUME_ANNOTATION",
    "SESSION_LABEL",
    "SHORT_NAME",
    "SPEC_HASH_LABEL",
    "STOPPED_ANNOTATION",
    "TOKEN_KEY",
    "USER_LABEL",
    "VERSION",
    "KernelSessionStatus",
    "Phase",
    "Reason",
    "child_labels",
    "home_claim_name",
    "ingress_name",
    "network_policy_name",
    "parse_status",
    "pod_name",
    "read_token",
    "service_name",
    "token_secret_name",
]

GROUP = "kernelsession.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "KernelSession"
PLURAL = "kernelsessions"
SHORT_NAME = "ks"
CRD_NAME = f"{PLURAL}.{GROUP}"
#: Namespace of sessions when none is given (samples, CLI, client, operator default).
DEFAULT_NAMESPACE = "labs"
#: Key of the lab token in the Secret named by ``status.tokenSecretName``.
TOKEN_KEY = "token"
#: The lab's HTTP port (container, Service and ``status.url``) and its port name.
LAB_PORT = 8888
LAB_PORT_NAME = "http"

# Labels and annotations (children carry MANAGED_BY, SESSION_LABEL and USER_LABEL).
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kernelsession-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
SESSION_LABEL = f"{GROUP}/session"
USER_LABEL = f"{GROUP}/user"
#: Pods labelled ``"true"`` in a lab's namespace may reach the lab (its NetworkPolicy).
CLIENT_LABEL = f"{GROUP}/client"
#: The hash of the lab pod's template (part of the pod's name).
HASH_LABEL = f"{GROUP}/pod-hash"
#: The hash of the session spec a lab pod was built from (not the operator's defaults).
SPEC_HASH_LABEL = f"{GROUP}/spec-hash"
#: Set (to any new value, e.g. the time) to start a Culled or timed-out lab again.
RESUME_ANNOTATION = f"{GROUP}/resume"
#: Set by the operator when an admin's act stopped the lab (its LabProfile was deleted
#: with ``deletionPolicy: Retain``; the value names the profile): the lab stays stopped,
#: phase Suspended, while the annotation is there. The session's spec is never written.
STOPPED_ANNOTATION = f"{GROUP}/stopped-by"
#: Where ``spec.home`` is mounted unless ``spec.home.mountPath`` says otherwise.
DEFAULT_HOME_MOUNT = "/home/jovyan"


class Phase(StrEnum):
    """``status.phase`` of a KernelSession."""

    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    FAILED = "Failed"
    CULLED = "Culled"
    SUSPENDED = "Suspended"
    TERMINATING = "Terminating"

    @classmethod
    def parse(cls, value: object) -> Phase | None:
        """The phase named by ``value``, or ``None`` when unset or unknown."""
        if not isinstance(value, str):
            return None
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def terminal(self) -> bool:
        """Whether a session in this phase will not become Ready by waiting."""
        return self in (Phase.FAILED, Phase.CULLED, Phase.SUSPENDED, Phase.TERMINATING)


class Reason(StrEnum):
    """``status.reason`` (and the Ready condition's reason) the operator writes."""

    # Pending / Starting / Ready
    CREATING = "Creating"
    POD_TERMINATING = "PodTerminating"
    POD_PENDING = "PodPending"
    HOME_PENDING = "HomePending"
    TOKEN_PENDING = "TokenPending"
    QUOTA_EXCEEDED = "QuotaExceeded"
    """The namespace's ResourceQuota refused the lab pod or home claim (tried again)."""
    WAITING_FOR_CAPACITY = "WaitingForCapacity"
    LAB_STARTING = "LabStarting"
    LAB_RESTARTING = "LabRestarting"
    ROLLING = "Rolling"
    LAB_READY = "LabReady"
    # Failed
    INVALID_SPEC = "InvalidSpec"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CONFIG_ERROR = "ConfigError"
    CANNOT_RUN = "CannotRun"
    CRASH_LOOP = "CrashLoop"
    LAB_EXITED = "LabExited"
    START_TIMEOUT = "StartTimeout"
    UNSCHEDULABLE = "Unschedulable"
    POD_REJECTED = "PodRejected"
    HOME_UNAVAILABLE = "HomeUnavailable"
    HOME_CONFLICT = "HomeConflict"
    POLICY_REJECTED = "PolicyRejected"
    # Culled, Suspended, Terminating
    IDLE_TIMEOUT = "IdleTimeout"
    MAX_AGE = "MaxAge"
    SUSPENDED = "Suspended"
    PROFILE_DELETED = "ProfileDeleted"
    """The namespace's LabProfile was deleted (Retain): the lab is stopped, files kept."""
    DELETING = "Deleting"


def token_secret_name(session: str) -> str:
    """The session's token Secret (also in ``status.tokenSecretName``)."""
    return f"{session}-token"


def service_name(session: str) -> str:
    """The lab's ClusterIP Service (port :data:`LAB_PORT`)."""
    return session


def network_policy_name(session: str) -> str:
    return f"{session}-lab"


def ingress_name(session: str) -> str:
    return session


def home_claim_name(session: str) -> str:
    """The PersistentVolumeClaim of ``spec.home``."""
    return f"{session}-home"


def pod_name(session: str, pod_hash: str) -> str:
    """The lab pod for the template with hash ``pod_hash``."""
    return f"{session}-lab-{pod_hash}"


def child_labels(session: str, user: str) -> dict[str, str]:
    """Labels every child of a session carries."""
    return {
        MANAGED_BY: MANAGER,
        SESSION_LABEL: session,
        USER_LABEL: user,
        "app.kubernetes.io/name": "jupyterlab",
        "app.kubernetes.io/instance": session,
    }


@dataclass(frozen=True)
class KernelSessionStatus:
    """What the operator reports about a session (``status``), typed.

    ``phase`` is the raw string (``None`` before the operator wrote one); use
    :attr:`phase_enum` for a :class:`Phase`.
    """

    name: str
    namespace: str
    user: str
    phase: str | None
    ready: bool
    reason: str | None = None
    message: str | None = None
    url: str | None = None
    """The lab's base URL for clients inside the cluster (``status.url``)."""
    external_url: str | None = None
    """The lab's URL through its Ingress (``status.externalURL``), when there is one."""
    token_secret_name: str | None = None
    pod_name: str | None = None
    observed_generation: int | None = None
    generation: int | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KernelSessionStatus:
        """Parse a KernelSession object (a dict as the API server returns it)."""
        return parse_status(obj)

    @property
    def phase_enum(self) -> Phase | None:
        return Phase.parse(self.phase)

    @property
    def current(self) -> bool:
        """Whether the status describes the latest spec."""
        return self.observed_generation is not None and self.observed_generation == self.generation

    def describe(self) -> str:
        text = f"{self.namespace}/{self.name}: {self.phase or 'Unknown'}"
        if self.reason:
            text += f" ({self.reason})"
        if self.message:
            text += f": {self.message}"
        return text


def parse_status(obj: Mapping[str, Any]) -> KernelSessionStatus:
    """Parse a KernelSession object into a :class:`KernelSessionStatus`.

    ``ready`` is the ``Ready`` condition being ``True`` (not the phase alone).
    """
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return KernelSessionStatus(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        user=(obj.get("spec") or {}).get("user", ""),
        phase=status.get("phase"),
        ready=ready,
        reason=status.get("reason"),
        message=status.get("message"),
        url=status.get("url"),
        external_url=status.get("externalURL"),
        token_secret_name=status.get("tokenSecretName"),
        pod_name=status.get("podName"),
        observed_generation=status.get("observedGeneration"),
        generation=meta.get("generation"),
        raw=obj,
    )


def read_token(secret_data: Mapping[str, str] | None) -> str | None:
    """The lab token from a token Secret's ``data`` (base64), or ``None`` if absent or bad."""
    raw = (secret_data or {}).get(TOKEN_KEY)
    if not raw:
        return None
    try:
        token = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return token or None
