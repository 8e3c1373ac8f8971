"""Names and labels of a session's children: the one place that decides them."""

from __future__ import annotations

# The resource's own names (one place: kernelsession.client.resources), re-exported.
from kernelsession.client.resources import GROUP as GROUP
from kernelsession.client.resources import KIND as KIND
from kernelsession.client.resources import PLURAL as PLURAL
from kernelsession.client.resources import TOKEN_KEY as TOKEN_KEY
from kernelsession.client.resources import VERSION as VERSION

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "kernelsession-operator"
SESSION_LABEL = f"{GROUP}/session"
USER_LABEL = f"{GROUP}/user"
CLIENT_LABEL = f"{GROUP}/client"
HASH_LABEL = f"{GROUP}/pod-hash"
SPEC_HASH_LABEL = f"{GROUP}/spec-hash"
"""On a lab pod: digest of the session spec it was built from (not operator defaults)."""
COMPONENT_LABEL = "app.kubernetes.io/component"
RESUME_ANNOTATION = f"{GROUP}/resume"
LAB_PORT_NAME = "http"


def token_secret_name(session: str) -> str:
    return f"{session}-token"


def service_name(session: str) -> str:
    return session


def network_policy_name(session: str) -> str:
    return f"{session}-lab"


def ingress_name(session: str) -> str:
    return session


def home_claim_name(session: str) -> str:
    return f"{session}-home"


HOME_VOLUME = "kernelsession-home"
DEFAULT_HOME_MOUNT = "/home/jovyan"
LEASE_NAME = "kernelsession-operator"


def pod_name(session: str, pod_hash: str) -> str:
    return f"{session}-lab-{pod_hash}"


def child_labels(session: str, user: str) -> dict[str, str]:
    """Labels every child carries (DESIGN.md contract)."""
    return {
        MANAGED_BY: MANAGER,
        SESSION_LABEL: session,
        USER_LABEL: user,
        "app.kubernetes.io/name": "jupyterlab",
        "app.kubernetes.io/instance": session,
    }
