"""The node's daemons besides the Kubernetes ones: containerd (with ``ctr`` and the runc
shim), CoreDNS and local-path-provisioner, built once from the Go module proxy with
``hack/build-node.sh`` into ``$XDG_CACHE_HOME/kernelsession/node/<versions>/bin``
(``$KERNELSESSION_NODE_ASSETS`` may name a directory holding them instead); runc and the
CNI plugins come from Debian packages. Their versions are decided in :mod:`.pins`; they
are built from the module graph the control plane shares.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kernelsession.localcluster.building.gobuild import (
    BinariesUnavailableError,
    build_into,
    cache_root,
    first_complete,
    repo_root,
)
from kernelsession.localcluster.building.pins import (
    CONTAINERD_VERSION,
    COREDNS_VERSION,
    LOCAL_PATH_VERSION,
    graph_env,
    graph_key,
)

NODE_BUILD_SCRIPT = Path("hack") / "build-node.sh"
NODE_ASSETS_ENV = "KERNELSESSION_NODE_ASSETS"
NODE_REQUIRED = (
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "coredns",
    "local-path-provisioner",
)
# From Debian packages (installed by `make setup`): runc and the CNI plugins.
RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap", "tuning")


@dataclass(frozen=True)
class NodeBinaries:
    """The node's daemons besides the Kubernetes ones: containerd (+ ctr, the runc shim),
    CoreDNS, runc and the CNI plugins."""

    directory: Path
    runc: Path
    cni_bin_dir: Path

    @property
    def containerd(self) -> Path:
        return self.directory / "containerd"

    @property
    def ctr(self) -> Path:
        return self.directory / "ctr"

    @property
    def coredns(self) -> Path:
        return self.directory / "coredns"

    @property
    def local_path_provisioner(self) -> Path:
        return self.directory / "local-path-provisioner"

    @staticmethod
    def complete(directory: Path) -> bool:
        return all(os.access(directory / name, os.X_OK) for name in NODE_REQUIRED)


def node_cache_dir() -> Path:
    """Cache entry of the node daemons for the pinned versions and the graph."""
    key = (
        f"containerd-{CONTAINERD_VERSION}-coredns-{COREDNS_VERSION}"
        f"-localpath-{LOCAL_PATH_VERSION}-{graph_key()}"
    )
    return cache_root() / "node" / key


def ensure_node(*, build_missing: bool = True, log: bool = True) -> NodeBinaries:
    """Find (``$KERNELSESSION_NODE_ASSETS``, then the cache) or build containerd and CoreDNS;
    check runc and the CNI plugins.

    Raises:
        BinariesUnavailableError: something is missing and cannot be built; the message
            names it and how to provide it.
    """
    missing = [str(RUNC)] if not os.access(RUNC, os.X_OK) else []
    missing += [
        str(CNI_BIN_DIR / p) for p in CNI_PLUGINS if not os.access(CNI_BIN_DIR / p, os.X_OK)
    ]
    if missing:
        raise BinariesUnavailableError(
            f"node components missing: {', '.join(missing)}; install the Debian packages "
            "`runc containernetworking-plugins` (`make setup` does, as root)"
        )
    found = first_complete(NODE_ASSETS_ENV, node_cache_dir(), NodeBinaries.complete)
    if found is not None:
        return NodeBinaries(found, RUNC, CNI_BIN_DIR)
    root = repo_root()
    if not build_missing or root is None or shutil.which("go") is None:
        assets = os.environ.get(NODE_ASSETS_ENV)
        searched = f"{assets}, " if assets else ""
        searched += str(node_cache_dir() / "bin")
        raise BinariesUnavailableError(
            f"containerd {CONTAINERD_VERSION} and CoreDNS {COREDNS_VERSION} "
            f"({', '.join(NODE_REQUIRED)}) are not in {searched}; run `make binaries` "
            f"(needs Go and the Go module proxy) or set {NODE_ASSETS_ENV} to a "
            "directory holding them"
        )
    try:
        directory = build_into(
            node_cache_dir(),
            root / NODE_BUILD_SCRIPT,
            graph_env(),
            NodeBinaries.complete,
            f"containerd {CONTAINERD_VERSION} and CoreDNS {COREDNS_VERSION}",
            log=log,
        )
    except RuntimeError as exc:
        raise BinariesUnavailableError(f"node components: {exc}") from exc
    return NodeBinaries(directory.resolve(), RUNC, CNI_BIN_DIR)


def describe_node(node: NodeBinaries) -> str:
    """One line naming the node daemons' versions and where they are."""
    return (
        f"node: containerd {CONTAINERD_VERSION}, CoreDNS {COREDNS_VERSION} in "
        f"{node.directory}; runc {node.runc}; CNI plugins in {node.cni_bin_dir}"
    )
