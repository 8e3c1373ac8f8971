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

__all__ = ["MERGE_PATCH", "api_message", "load_api_client"]

#: The content type of a JSON merge patch (``_content_type=MERGE_PATCH``).
MERGE_PATCH = "application/merge-patch+json"


async def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from ``kubeconfig``, ``$KUBECONFIG``, or the in-cluster service account."""
    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        await config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def api_message(exc: ApiException) -> str:
    """The API server's message (e.g. which field a 422 names), without the raw body."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return str(exc.reason)
    return str(body.get("message") or exc.reason)
