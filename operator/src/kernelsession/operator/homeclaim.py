"""The session's home volume: its PersistentVolumeClaim, where it is mounted, and
who owns it (the session under ``reclaimPolicy: Delete``, nobody under ``Retain``). Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelsession.operator import naming
from kernelsession.operator.builders import Body, Manifest, labels_for, owned, session_owner

DEFAULT_HOME_SIZE = "1Gi"


def home_mount_path(spec: Mapping[str, Any]) -> str:
    home: Mapping[str, Any] = spec.get("home") or {}
    return str(home.get("mountPath") or naming.DEFAULT_HOME_MOUNT)


def reclaim_policy(spec: Mapping[str, Any]) -> str:
    """``spec.home.reclaimPolicy``: ``Retain`` (default) or ``Delete``."""
    home: Mapping[str, Any] = spec.get("home") or {}
    return "Delete" if home.get("reclaimPolicy") == "Delete" else "Retain"


def home_claim(body: Body) -> Manifest | None:
    """The session's home PersistentVolumeClaim (None when ``spec.home`` is unset).

    Culling, suspending and restarting the lab never touch it. With ``reclaimPolicy:
    Retain`` (the default) it has no owner and outlives the session (labelled with its
    user and session: a new session of that name and user mounts it again); with
    ``Delete`` the session owns it and it goes with the session.
    """
    spec: Mapping[str, Any] = body.get("spec") or {}
    home: Mapping[str, Any] | None = spec.get("home")
    if home is None:
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(home.get("size") or DEFAULT_HOME_SIZE)}},
    }
    if home.get("storageClassName"):
        claim_spec["storageClassName"] = home["storageClassName"]
    name = body["metadata"]["name"]
    claim: Manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": naming.home_claim_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels_for(body) | {naming.COMPONENT_LABEL: "home"},
        },
        "spec": claim_spec,
    }
    return owned(body, claim) if reclaim_policy(spec) == "Delete" else claim


def claim_owner_patch(
    body: Body, owners: tuple[str, ...], resource_version: str
) -> dict[str, Any] | None:
    """A merge patch giving the home claim the owners its reclaim policy asks for (the
    session for ``Delete``, none for ``Retain``); None when it has them already."""
    uid = str(body["metadata"]["uid"])
    if reclaim_policy(body.get("spec") or {}) == "Delete":
        wanted: list[dict[str, Any]] | None = [session_owner(body)]
        if owners == (uid,):
            return None
    else:
        wanted = None
        if not owners:
            return None
    return {"metadata": {"ownerReferences": wanted, "resourceVersion": resource_version}}
