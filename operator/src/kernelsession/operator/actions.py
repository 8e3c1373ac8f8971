"""What a decision asks for: the actions :mod:`act` carries out, and the decision itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CreateToken:
    """Create the token Secret with a fresh token (generated when acted upon)."""


@dataclass(frozen=True)
class Create:
    """Create a child (Service, NetworkPolicy, home PVC, lab Pod) unless it exists."""

    manifest: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class GrantTokenAccess:
    """Create (or bring the subjects of) the Role and RoleBinding that let the session's
    user read its token Secret."""

    role: Mapping[str, Any]
    binding: Mapping[str, Any]
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class Patch:
    """Merge-patch a child back into shape (NetworkPolicy, Ingress)."""

    kind: str
    name: str
    patch: Mapping[str, Any]


@dataclass(frozen=True)
class Delete:
    """Delete a child the session no longer has (an Ingress once Ingresses are off)."""

    kind: str
    name: str


@dataclass(frozen=True)
class DeletePod:
    name: str
    cull_reason: str | None = None
    """Set when the pod goes because the lab was culled (counted in metrics)."""
    rollout: bool = False
    """Set when an idle outdated lab is replaced under the rollout policy."""


@dataclass(frozen=True)
class WriteStatus:
    """Merge-patch the status subresource; phase/previous are for the log."""

    patch: Mapping[str, Any]
    phase: str
    reason: str
    previous: str | None


@dataclass(frozen=True)
class Emit:
    """Post an Event on the session."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class RecordSpawn:
    """Observe pod-creation-to-Ready seconds in the spawn histogram."""

    seconds: float


Action = (
    CreateToken
    | Create
    | GrantTokenAccess
    | Patch
    | Delete
    | DeletePod
    | WriteStatus
    | Emit
    | RecordSpawn
)


@dataclass(frozen=True)
class Decision:
    actions: tuple[Action, ...]
    phase: str
    """The session's phase after these actions (for the sessions-by-phase metric)."""
    requeue_after: float
    """Seconds until the next pass, unless something changes first."""
    warned: bool = False
    """Whether CullingSoon has been posted for the current idle stretch."""
    status: Mapping[str, Any] | None = None
    """The full status this decision renders (None: status left as it is)."""

    def of(self, kind: type[Any]) -> list[Any]:
        """The actions of one type (for tests and logs)."""
        return [a for a in self.actions if isinstance(a, kind)]
