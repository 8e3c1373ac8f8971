"""Reaching a lab's in-cluster URL from where the client runs.

``status.url`` names the lab's Service by its cluster DNS name
(``http://NAME.NAMESPACE.svc.cluster.local:8888/``), which resolves only inside the
cluster. A client on a machine that routes the cluster's service range (a node, or the
project's local cluster) but does not use the cluster's DNS gets the same Service by its
cluster IP instead, read from the API: :func:`service_host` parses, :func:`reachable_url`
rewrites when the name does not resolve here.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def service_host(host: str) -> tuple[str, str] | None:
    """``(service, namespace)`` when ``host`` is a Service DNS name
    (``svc.ns.svc`` or ``svc.ns.svc.<cluster domain>``), else None. Pure."""
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


async def _resolves(host: str, port: int) -> bool:
    loop = asyncio.get_running_loop()
    try:
        await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return True


async def reachable_url(url: str, core: Any) -> str:
    """``url``, or the same URL with the Service's cluster IP when its cluster DNS name
    does not resolve on this machine. ``core`` is a kubernetes_asyncio ``CoreV1Api``.

    Raises kubernetes_asyncio ApiException when the Service cannot be read.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    found = service_host(host)
    if found is None or await _resolves(host, parts.port or 80):
        return url
    service = await core.read_namespaced_service(found[0], found[1])
    cluster_ip = service.spec.cluster_ip
    if not cluster_ip or cluster_ip == "None":
        return url
    netloc = f"{cluster_ip}:{parts.port}" if parts.port else cluster_ip
    return urlunsplit(parts._replace(netloc=netloc))
