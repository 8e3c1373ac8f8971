"""Control-plane binaries: the pinned versions and where to find (or build) them.

This module is the one place that decides the Kubernetes and etcd versions.

Lookup order for a directory holding ``etcd``, ``kube-apiserver`` and
``kube-controller-manager`` (and, optionally, ``kubectl``):

1. ``$KUBEBUILDER_ASSETS`` (the controller-runtime envtest convention; ``setup-envtest use``
   prints such a directory),
2. ``<repo>/../shared/controlplane/bin`` (a directory shared between checkouts),
3. the cache ``$XDG_CACHE_HOME/kernelsession/controlplane/k8s-<v>-etcd-<v>/bin``
   (``~/.cache`` when ``XDG_CACHE_HOME`` is unset),
4. otherwise they are built from the Go module proxy with ``hack/build-controlplane.sh``
   into a temporary directory next to the cache entry, which is then renamed atomically.

The node's daemons (:func:`ensure_node`) and the optional ingress controller
(:func:`ensure_ingress`: Traefik, only when asked for) have their own cache entries.

CLI: ``python -m kernelsession.localcluster.building.binaries ensure`` (used by ``make binaries``),
``python -m kernelsession.localcluster.building.binaries ensure --ingress`` (only the ingress
controller; ``make ingress-binaries``) and ``python -m kernelsession.localcluster.building.binaries
path``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.8"
CONTAINERD_VERSION = "v2.2.9"
COREDNS_VERSION = "v1.13.1"
LOCAL_PATH_VERSION = "v0.0.30"
#: The local cluster's optional ingress controller (``ensure_ingress``; not in ``make setup``).
#: The newest v3 whose every dependency the Go module proxy serves: v3.7.x pins lego v5
#: (ACME), and the proxy refuses lego v5.4.1, the DNS-provider SDK versions lego v5.3.1
#: needs and the go-http-auth fork v3.7 builds with (403 "not available").
TRAEFIK_VERSION = "v3.6.12"

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
BUILD_SCRIPT = Path("hack") / "build-controlplane.sh"
NODE_BUILD_SCRIPT = Path("hack") / "build-node.sh"
NODE_REQUIRED = (
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "coredns",
    "local-path-provisioner",
)
#: What ``ensure --only`` takes: the two caches, each built by its own script.
PARTS = ("controlplane", "node")
INGRESS_BUILD_SCRIPT = Path("hack") / "build-ingress.sh"
INGRESS_REQUIRED = ("traefik",)
INGRESS_ASSETS_ENV = "KERNELSESSION_INGRESS_ASSETS"
# From Debian packages (installed by `make setup`): runc and the CNI plugins.
RUNC = Path("/usr/sbin/runc")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap", "tuning")


class BinariesUnavailableError(RuntimeError):
    """The control-plane binaries are neither present nor buildable on this machine."""


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


def repo_root() -> Path | None:
    """Return the source checkout holding ``hack/build-controlplane.sh``, if there is one."""
    for parent in Path(__file__).resolve().parents:
        if (parent / BUILD_SCRIPT).is_file():
            return parent
    return None


def version_key() -> str:
    """The cache key naming the pinned versions, e.g. ``k8s-v1.35.4-etcd-v3.6.8``."""
    return f"k8s-{K8S_VERSION}-etcd-{ETCD_VERSION}"


def cache_dir() -> Path:
    """The cache entry for the pinned versions (its ``bin`` subdirectory holds binaries)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession" / "controlplane" / version_key()


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


def _build_into(
    entry: Path,
    script: Path,
    env: dict[str, str],
    complete: Callable[[Path], bool],
    what: str,
    *,
    log: bool,
) -> Path:
    """Run ``script TMPDIR`` under a lock in ``entry`` and rename TMPDIR to ``entry/bin``.

    Returns ``entry/bin``. Raises RuntimeError (with the log tail) when the build fails.
    """
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(entry / "bin"):  # another process built them while we waited
            return entry / "bin"
        tmp = entry / f"bin.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if log:
            print(
                f"kernelsession: building {what} from the Go module proxy into "
                f"{entry / 'bin'} (first time only; this takes several minutes)...",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(script), str(tmp)],
            env=dict(os.environ, **env),
            stdout=sys.stderr if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        if result.returncode != 0 or not complete(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "" if log else "\n" + "\n".join((result.stdout or "").splitlines()[-30:])
            raise RuntimeError(
                f"the build failed after {elapsed:.0f}s (exit {result.returncode}){tail}"
            )
        shutil.rmtree(entry / "bin", ignore_errors=True)
        os.replace(tmp, entry / "bin")
        if log:
            print(f"kernelsession: built {what} in {elapsed:.0f}s", file=sys.stderr)
        return entry / "bin"


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
    env = {"KS_K8S_VERSION": K8S_VERSION, "KS_ETCD_VERSION": ETCD_VERSION}
    try:
        directory = _build_into(
            cache_dir(),
            root / BUILD_SCRIPT,
            env,
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
    """Cache entry of the node daemons for the pinned versions."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    key = (
        f"containerd-{CONTAINERD_VERSION}-coredns-{COREDNS_VERSION}-localpath-{LOCAL_PATH_VERSION}"
    )
    return Path(base) / "kernelsession" / "node" / key


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
    dirs = [Path(d) for d in [os.environ.get("KERNELSESSION_NODE_ASSETS")] if d]
    dirs.append(node_cache_dir() / "bin")
    for directory in dirs:
        if NodeBinaries.complete(directory):
            return NodeBinaries(directory.resolve(), RUNC, CNI_BIN_DIR)
    root = repo_root()
    searched = ", ".join(str(d) for d in dirs)
    if not build_missing or root is None or shutil.which("go") is None:
        raise BinariesUnavailableError(
            f"containerd {CONTAINERD_VERSION} and CoreDNS {COREDNS_VERSION} "
            f"({', '.join(NODE_REQUIRED)}) are not in {searched}; run `make binaries` "
            "(needs Go and the Go module proxy) or set KERNELSESSION_NODE_ASSETS to a "
            "directory holding them"
        )
    env = {
        "KS_CONTAINERD_VERSION": CONTAINERD_VERSION,
        "KS_COREDNS_VERSION": COREDNS_VERSION,
        "KS_LOCAL_PATH_VERSION": LOCAL_PATH_VERSION,
    }
    try:
        directory = _build_into(
            node_cache_dir(),
            root / NODE_BUILD_SCRIPT,
            env,
            NodeBinaries.complete,
            f"containerd {CONTAINERD_VERSION} and CoreDNS {COREDNS_VERSION}",
            log=log,
        )
    except RuntimeError as exc:
        raise BinariesUnavailableError(f"node components: {exc}") from exc
    return NodeBinaries(directory.resolve(), RUNC, CNI_BIN_DIR)


@dataclass(frozen=True)
class IngressBinaries:
    """The local cluster's ingress controller: a static ``traefik`` executable."""

    directory: Path

    @property
    def traefik(self) -> Path:
        return self.directory / "traefik"

    @staticmethod
    def complete(directory: Path) -> bool:
        return all(os.access(directory / name, os.X_OK) for name in INGRESS_REQUIRED)


def ingress_cache_dir() -> Path:
    """Cache entry of the ingress controller for the pinned version
    (``$XDG_CACHE_HOME/kernelsession/ingress/traefik-<v>``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession" / "ingress" / f"traefik-{TRAEFIK_VERSION}"


def find_ingress() -> IngressBinaries | None:
    """The ingress binaries in ``$KERNELSESSION_INGRESS_ASSETS`` or the cache, or None
    (builds nothing)."""
    dirs = [Path(d) for d in [os.environ.get(INGRESS_ASSETS_ENV)] if d]
    dirs.append(ingress_cache_dir() / "bin")
    for directory in dirs:
        if IngressBinaries.complete(directory):
            return IngressBinaries(directory.resolve())
    return None


def ensure_ingress(*, build_missing: bool = True, log: bool = True) -> IngressBinaries:
    """Find (``$KERNELSESSION_INGRESS_ASSETS``, then the cache) or build Traefik
    (:data:`TRAEFIK_VERSION`, from the Go module proxy with ``hack/build-ingress.sh``).

    Raises:
        BinariesUnavailableError: it is missing and cannot be built; the message names what
            is missing, where it was looked for and how to provide it.
    """
    found = find_ingress()
    if found is not None:
        return found
    root = repo_root()
    assets = os.environ.get(INGRESS_ASSETS_ENV)
    searched = f"${INGRESS_ASSETS_ENV}={assets}, " if assets else ""
    searched += str(ingress_cache_dir() / "bin")
    why = ""
    if not build_missing:
        why = "building it was not asked for"
    elif root is None:
        why = "there is no source checkout with hack/build-ingress.sh to build it"
    elif shutil.which("go") is None:
        why = "there is no `go` on PATH to build it"
    if why:
        raise BinariesUnavailableError(
            f"the ingress controller, Traefik {TRAEFIK_VERSION} (executable `traefik`), is "
            f"not in {searched} and {why}; run `make ingress-binaries` (needs Go >= 1.26 and "
            f"the Go module proxy; builds it once into {ingress_cache_dir() / 'bin'}) or set "
            f"{INGRESS_ASSETS_ENV} to a directory holding a static `traefik` {TRAEFIK_VERSION}"
        )
    assert root is not None
    try:
        directory = _build_into(
            ingress_cache_dir(),
            root / INGRESS_BUILD_SCRIPT,
            {"KS_TRAEFIK_VERSION": TRAEFIK_VERSION},
            IngressBinaries.complete,
            f"Traefik {TRAEFIK_VERSION}",
            log=log,
        )
    except RuntimeError as exc:
        raise BinariesUnavailableError(f"the ingress controller (Traefik): {exc}") from exc
    return IngressBinaries(directory.resolve())


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


def describe_node(node: NodeBinaries) -> str:
    """One line naming the node daemons' versions and where they are."""
    return (
        f"node: containerd {CONTAINERD_VERSION}, CoreDNS {COREDNS_VERSION} in "
        f"{node.directory}; runc {node.runc}; CNI plugins in {node.cni_bin_dir}"
    )


if __name__ == "__main__":
    sys.exit(main())
