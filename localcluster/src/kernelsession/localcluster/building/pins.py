"""The Go programs the local cluster runs: their pinned versions and the one module graph
they are built from.

This module is the one place that decides the versions of Kubernetes and etcd (the control
plane, :mod:`.binaries`) and of containerd, CoreDNS and local-path-provisioner (the node's
daemons, :mod:`.nodebinaries`). ``hack/lib-build.sh`` (``write_graph_module``) puts all five
in one wrapper module, so the packages they share (client-go, apimachinery, api, grpc,
protobuf, otel, ...) compile once: the control plane's ``go build`` fills GOCACHE and the
node's reuses it. Each cache entry's key ends with :func:`graph_key`, which changes with any
of the five pins and with the build scripts, so a changed recipe is rebuilt.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

K8S_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.8"
CONTAINERD_VERSION = "v2.2.9"
COREDNS_VERSION = "v1.13.1"
LOCAL_PATH_VERSION = "v0.0.30"

#: The scripts that build from the graph, relative to the checkout, in :data:`SCRIPTS_SHA256`'s
#: order.
GRAPH_SCRIPTS = (
    Path("hack") / "lib-build.sh",
    Path("hack") / "build-controlplane.sh",
    Path("hack") / "build-node.sh",
)
#: sha256 of :data:`GRAPH_SCRIPTS`' contents, concatenated. A unit test recomputes it, so a
#: script changed without it fails the tests; it is part of :func:`graph_key`.
SCRIPTS_SHA256 = "f66ec02180970e726342a46e6fdc8aaaaa1d02b79628c38cfa2ba4a04b60ce57"


def scripts_sha256(root: Path) -> str:
    """sha256 of the graph's build scripts in the checkout at ``root``."""
    digest = hashlib.sha256()
    for script in GRAPH_SCRIPTS:
        digest.update((root / script).read_bytes())
    return digest.hexdigest()


def graph_env() -> dict[str, str]:
    """The environment both build scripts read the five pinned versions from."""
    return {
        "KS_K8S_VERSION": K8S_VERSION,
        "KS_ETCD_VERSION": ETCD_VERSION,
        "KS_CONTAINERD_VERSION": CONTAINERD_VERSION,
        "KS_COREDNS_VERSION": COREDNS_VERSION,
        "KS_LOCAL_PATH_VERSION": LOCAL_PATH_VERSION,
    }


def graph_key() -> str:
    """``graph-<10 hex>``: a digest of the five pins and the build scripts, the last part
    of both cache entries' keys."""
    pins = "\n".join(f"{k}={v}" for k, v in sorted(graph_env().items()))
    return "graph-" + hashlib.sha256(f"{pins}\n{SCRIPTS_SHA256}".encode()).hexdigest()[:10]
