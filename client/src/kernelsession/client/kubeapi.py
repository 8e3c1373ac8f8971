"""Loading the Kubernetes API client (kubernetes_asyncio), for every part of kernelsession.

>>> api = await load_api_client()  # $KUBECONFIG, ~/.kube/config, or the service account
>>> ...
>>> await api.close()
"""

from __future__ import annotations

import json
import os

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from ._apiclient import (
    DEFAULT_REQUEST_TIMEOUT,
    DeadlineApiClient,
    KubernetesDeadlineError,
    api_timeout_from_env,
)

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MERGE_PATCH",
    "DeadlineApiClient",
    "KubernetesDeadlineError",
    "api_message",
    "load_api_client",
]

#: The content type of a JSON merge patch (``_content_type=MERGE_PATCH``).
MERGE_PATCH = "application/merge-patch+json"


async def load_api_client(
    kubeconfig: str | None = None, *, request_timeout: float | None = None
) -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, ``$KUBECONFIG``, or the in-cluster service account.

    Every request has a deadline of ``request_timeout`` seconds (default:
    ``$KERNELSESSION_API_TIMEOUT``, else 30) unless the call passes its own
    ``_request_timeout``; a request past it raises :class:`KubernetesDeadlineError` (a
    ``TimeoutError``) naming the method and path.
    """
    if request_timeout is None:
        request_timeout = api_timeout_from_env()
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        await config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return DeadlineApiClient(cfg, request_timeout=request_timeout)


def api_message(exc: ApiException) -> str:
    """The API server's message (e.g. which field a 422 names), without the raw body."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)
