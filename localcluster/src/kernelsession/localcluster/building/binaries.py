"""Control-plane binaries: the pinned versions and where to find (or build) them.

The Kubernetes and etcd versions are decided in :mod:`.pins`, with the node's daemons', and
built from one module graph with them.

Lookup order for a directory holding ``etcd``, ``kube-apiserver`` and
``kube-controller-manager`` (and, optionally, ``kubectl``):

1. ``$KUBEBUILDER_ASSETS`` (the controller-runtime envtest convention; ``setup-envtest use``
   prints such a directory),
2. ``<repo>/../shared/controlplane/bin`` (a directory shared between checkouts),
3. the cache ``$XDG_CACHE_HOME/kernelsession/controlplane/k8s-<v>-etcd-<v>/bin``
   (``~/.cache`` when ``XDG_CACHE_HOME`` is unset),
4. otherwise they are built from the Go module proxy with ``hack/build-controlplane.sh``
   into a temporary directory next to the cache entry, which is then renamed atomically.

The node's daemons (:mod:`.nodebinaries`) and the optional ingress controller
(:mod:`.ingressbinaries`: Traefik, only when asked for) have their own modules and cache
entries; :mod:`.gobuild` builds them all. This module's CLI finds or builds any of them:

``python -m kernelsession.localcluster.building.binaries ensure`` (used by ``make binaries``),
``python -m kernelsession.localcluster.building.binaries ensure --ingress`` (only the ingress
controller; ``make ingress-binaries``) and ``python -m kernelsession.localcluster.building.binaries
path``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kernelsession.localcluster.building.gobuild import (
    BinariesUnavailableError,
    build_into,
    cache_root,
    repo_root,
)
from kernelsession.localcluster.building.ingressbinaries import TRAEFIK_VERSION, ensure_ingress
from kernelsession.localcluster.building.nodebinaries import describe_node, ensure_node
from kernelsession.localcluster.building.pins import (
    ETCD_VERSION,
    K8S_VERSION,
    graph_env,
    graph_key,
)

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
BUILD_SCRIPT = Path("hack") / "build-controlplane.sh"
#: What ``ensure --only`` takes: the two caches, each built by its own script.
PARTS = ("controlplane", "node")


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the control-plane executables."""

    directory: Path
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path | None

    @property
    def kube_scheduler(self) -> Path:
        return self.directory / "kube-scheduler"

    @property
    def kubelet(self) -> Path:
        return self.directory / "kubelet"

    @property
    def kube_proxy(self) -> Path:
        return self.directory / "kube-proxy"

    @classmethod
    def from_dir(cls, directory: Path) -> Binaries | None:
        """Return the binaries in ``directory``, or None when a required one is missing."""
        directory = directory.resolve()
        for name in REQUIRED:
            if not os.access(directory / name, os.X_OK):
                return None
        kubectl: Path | None = directory / "kubectl"
        if not os.access(str(kubectl), os.X_OK):
            found = shutil.which("kubectl")
            kubectl = Path(found) if found else None
        return cls(
            directory=directory,
            etcd=directory / "etcd",
            kube_apiserver=directory / "kube-apiserver",
            kube_controller_manager=directory / "kube-controller-manager",
            kubectl=kubectl,
        )


def version_key() -> str:
    """The cache key naming the pinned versions and the graph, e.g.
    ``k8s-v1.35.4-etcd-v3.6.8-graph-0123456789``."""
    return f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}-{graph_key()}"


def cache_dir() -> Path:
    """The cache entry for the pinned versions (its ``bin`` subdirectory holds binaries)."""
    return cache_root() / "controlplane" / version_key()


def candidates() -> list[tuple[str, Path]]:
    """Directories searched, in order, each with a label saying where it came from."""
    found: list[tuple[str, Path]] = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found.append(("KUBEBUILDER_ASSETS", Path(assets)))
    root = repo_root()
    if root is not None:
        found.append(("shared", root.parent / "shared" / "controlplane" / "bin"))
    found.append(("cache", cache_dir() / "bin"))
    return found


def find() -> Binaries | None:
    """Return the first complete set of binaries in the lookup order, or None."""
    for _label, directory in candidates():
        binaries = Binaries.from_dir(directory)
        if binaries is not None:
            return binaries
    return None


def _unavailable(reason: str) -> BinariesUnavailableError:
    searched = "\n".join(f"  - {label}: {path}" for label, path in candidates())
    return BinariesUnavailableError(
        f"Kubernetes control-plane binaries ({', '.join(REQUIRED)}) are not available: "
        f"{reason}.\nSearched:\n{searched}\n"
        "Provide them in one of these ways:\n"
        f"  * install Go (>= 1.25) and network access to the Go module proxy (GOPROXY), then run "
        f"`make binaries` (builds Kubernetes {K8S_VERSION} and etcd {ETCD_VERSION} once, "
        f"into {cache_dir() / 'bin'});\n"
        f"  * or point KUBEBUILDER_ASSETS at a directory holding them, e.g. "
        f"`export KUBEBUILDER_ASSETS=$(setup-envtest use -p path {K8S_VERSION.lstrip('v')})` "
        "(setup-envtest: go install sigs.k8s.io/controller-runtime/tools/setup-envtest@latest);\n"
        f"  * or unpack the official release binaries (dl.k8s.io/release/{K8S_VERSION}/bin/"
        f"linux/amd64/{{kube-apiserver,kube-controller-manager,kubectl}} and etcd "
        f"{ETCD_VERSION} from github.com/etcd-io/etcd/releases) into {cache_dir() / 'bin'}."
    )


def build(*, log: bool = True) -> Binaries:
    """Build the pinned binaries into the cache and return them.

    Concurrent callers serialise on a lock file; the build goes into a temporary
    directory renamed atomically to ``bin`` when complete.

    Raises:
        BinariesUnavailableError: Go or the build script is missing, or the build failed.
    """
    root = repo_root()
    if root is None:
        raise _unavailable("no source checkout with hack/build-controlplane.sh to build them")
    if shutil.which("go") is None:
        raise _unavailable("no `go` on PATH to build them")
    try:
        directory = build_into(
            cache_dir(),
            root / BUILD_SCRIPT,
            graph_env(),
            lambda d: Binaries.from_dir(d) is not None,
            f"Kubernetes {K8S_VERSION} and etcd {ETCD_VERSION}",
            log=log,
        )
    except RuntimeError as exc:
        raise _unavailable(str(exc)) from exc
    built = Binaries.from_dir(directory)
    assert built is not None
    return built


def ensure(*, build_missing: bool = True, log: bool = True) -> Binaries:
    """Find the binaries, building them when absent and ``build_missing`` is true.

    Raises:
        BinariesUnavailableError: they are absent and cannot be built.
    """
    found = find()
    if found is not None:
        return found
    if not build_missing:
        raise _unavailable("none of the searched directories holds them")
    return build(log=log)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``ensure`` (find or build, print the directory) or ``path``;
    ``--ingress``: the ingress controller (Traefik) only."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.building.binaries")
    parser.add_argument("command", choices=["ensure", "path"])
    parser.add_argument(
        "--only",
        choices=PARTS,
        help="ensure only the control plane (Kubernetes, etcd) or only the node's daemons",
    )
    parser.add_argument(
        "--ingress",
        action="store_true",
        help="the optional ingress controller (Traefik) instead of the cluster's binaries",
    )
    args = parser.parse_args(argv)
    build_missing = args.command == "ensure"
    if args.ingress:
        try:
            ingress = ensure_ingress(build_missing=build_missing)
        except BinariesUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.command == "ensure":
            print(f"ingress: Traefik {TRAEFIK_VERSION} in {ingress.directory}")
        else:
            print(ingress.directory)
        return 0
    parts = [args.only] if args.only else list(PARTS)
    try:
        if "controlplane" in parts:
            binaries = ensure(build_missing=build_missing)
            if args.command == "path":
                print(binaries.directory)
                return 0
            print(describe_controlplane(binaries))
        if "node" in parts:
            print(describe_node(ensure_node(build_missing=build_missing)))
    except BinariesUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def describe_controlplane(binaries: Binaries) -> str:
    """One line naming the control-plane versions and where they are."""
    return (
        f"control plane: Kubernetes {K8S_VERSION}, etcd {ETCD_VERSION} in "
        f"{binaries.directory} (kubectl: {binaries.kubectl})"
    )


if __name__ == "__main__":
    sys.exit(main())
