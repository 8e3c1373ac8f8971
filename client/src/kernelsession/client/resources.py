"""The KernelSession resource as data: names, phases, status parsing and the token.

One place for what every part of kernelsession (client, CLI, bench, operator,
local cluster) needs to know about the custom resource, with no I/O:

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
    "CRD_NAME",
    "DEFAULT_NAMESPACE",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "TOKEN_KEY",
    "VERSION",
    "KernelSessionStatus",
    "Phase",
    "parse_status",
    "read_token",
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
