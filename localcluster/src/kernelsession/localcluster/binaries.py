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

CLI: ``python -m kernelsession.localcluster.binaries ensure`` (used by ``make binaries``)
and ``python -m kernelsession.localcluster.binaries path``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.8"

REQUIRED = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
BUILD_SCRIPT = Path("hack") / "build-controlplane.sh"


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
    entry = cache_dir()
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = Binaries.from_dir(entry / "bin")
        if done is not None:  # another process built them while we waited
            return done
        tmp = entry / f"bin.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        env = dict(os.environ, KS_K8S_VERSION=K8S_VERSION, KS_ETCD_VERSION=ETCD_VERSION)
        if log:
            print(
                f"kernelsession: building Kubernetes {K8S_VERSION} and etcd {ETCD_VERSION} "
                f"from the Go module proxy into {entry / 'bin'} (first time only; "
                "this takes several minutes)...",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        result = subprocess.run(
            ["bash", str(root / BUILD_SCRIPT), str(tmp)],
            env=env,
            stdout=sys.stderr if log else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
        if result.returncode != 0 or Binaries.from_dir(tmp) is None:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "" if log else "\n" + "\n".join((result.stdout or "").splitlines()[-30:])
            raise _unavailable(
                f"the build failed after {elapsed:.0f}s (exit {result.returncode}){tail}"
            )
        os.replace(tmp, entry / "bin")
        if log:
            print(f"kernelsession: built control plane in {elapsed:.0f}s", file=sys.stderr)
        built = Binaries.from_dir(entry / "bin")
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
    """CLI entry point: ``ensure`` (find or build, print the directory) or ``path``."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.binaries")
    parser.add_argument("command", choices=["ensure", "path"])
    args = parser.parse_args(argv)
    try:
        binaries = ensure(build_missing=args.command == "ensure")
    except BinariesUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command == "ensure":
        print(
            f"control plane: Kubernetes {K8S_VERSION}, etcd {ETCD_VERSION} in "
            f"{binaries.directory} (kubectl: {binaries.kubectl})"
        )
    else:
        print(binaries.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
