"""Names and labels of a session's children, from the resource's public contract
(:mod:`kernelsession.client.resources`), plus the operator's own names."""

from __future__ import annotations

from kernelsession.client.resources import (
    CLIENT_LABEL,
    COMPONENT_LABEL,
    DEFAULT_HOME_MOUNT,
    GROUP,
    HASH_LABEL,
    KIND,
    LAB_PORT_NAME,
    MANAGED_BY,
    MANAGER,
    PLURAL,
    RESUME_ANNOTATION,
    SESSION_LABEL,
    SPEC_HASH_LABEL,
    STOPPED_ANNOTATION,
    TOKEN_KEY,
    USER_LABEL,
    VERSION,
    child_labels,
    home_claim_name,
    ingress_name,
    network_policy_name,
    pod_name,
    service_name,
    token_secret_name,
)

__all__ = [
    "CLIENT_LABEL",
    "COMPONENT_LABEL",
    "DEFAULT_HOME_MOUNT",
    "GROUP",
    "HASH_LABEL",
    "HOME_VOLUME",
    "KIND",
    "LAB_PORT_NAME",
    "LEASE_NAME",
    "MANAGED_BY",
    "MANAGER",
    "PLURAL",
    "RESUME_ANNOTATION",
    "SESSION_LABEL",
    "SPEC_HASH_LABEL",
    "STOPPED_ANNOTATION",
    "TOKEN_KEY",
    "USER_LABEL",
    "VERSION",
    "child_labels",
    "home_claim_name",
    "ingress_name",
    "network_policy_name",
    "pod_name",
    "service_name",
    "token_secret_name",
]

#: The pod volume that mounts ``spec.home``.
HOME_VOLUME = "kernelsession-home"
#: The Lease of the active operator replica.
LEASE_NAME = "kernelsession-operator"


def token_reader_name(session: str) -> str:
    """The Role and RoleBinding letting the session's user read its token Secret."""
    return f"{session}-token-reader"
