"""Real people for the tests: a kubeconfig with a client certificate (CN = user name,
O = groups) signed by the local cluster's CA, so the API server's x509 authenticator,
RBAC and admission see exactly that user, for kubectl and for the Python client alike
(kubernetes_asyncio ignores a kubeconfig's impersonation ``as:``).
"""

from __future__ import annotations

from pathlib import Path

from helpers import user_kubeconfig as _signed_kubeconfig

from kernelsession.localcluster.cluster import LocalCluster


def user_kubeconfig(
    cluster: LocalCluster, user: str, groups: tuple[str, ...] = (), *, directory: Path
) -> Path:
    """A kubeconfig authenticating as ``user`` in ``groups`` (a one-day certificate), its
    context in namespace ``default``: one signing path, :func:`helpers.user_kubeconfig`."""
    directory.mkdir(parents=True, exist_ok=True)
    return _signed_kubeconfig(
        cluster, user, groups, directory / f"{user}.kubeconfig", namespace="default"
    )
