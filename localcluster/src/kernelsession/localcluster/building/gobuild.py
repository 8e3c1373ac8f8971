"""Building pinned Go programs from the Go module proxy into the cache, once: the shared
part of :mod:`.binaries` (Kubernetes, etcd), :mod:`.nodebinaries` (containerd, CoreDNS,
local-path-provisioner), :mod:`.ingressbinaries` (Traefik) and :mod:`.kwok`.

Each has a cache entry ``$XDG_CACHE_HOME/kernelsession/<what>/<versions>`` (``~/.cache``
when ``XDG_CACHE_HOME`` is unset) whose ``bin`` directory a ``hack/build-*.sh`` script
fills (:func:`build_into`: under a lock, into a temporary directory renamed when
complete); an environment variable may name a directory holding them instead
(:func:`first_complete`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

#: A file only a source checkout has (:func:`repo_root`).
CHECKOUT_MARKER = Path("hack") / "build-controlplane.sh"


class BinariesUnavailableError(RuntimeError):
    """Binaries the local cluster needs are neither present nor buildable on this machine."""


def repo_root() -> Path | None:
    """Return the source checkout holding ``hack/build-controlplane.sh``, if there is one."""
    for parent in Path(__file__).resolve().parents:
        if (parent / CHECKOUT_MARKER).is_file():
            return parent
    return None


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/kernelsession`` (``~/.cache/kernelsession`` when it is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession"


def first_complete(assets_env: str, entry: Path, complete: Callable[[Path], bool]) -> Path | None:
    """The directory named by ``$assets_env`` (when set), else ``entry/bin``: the first
    that ``complete`` accepts, resolved; None when neither does."""
    dirs = [Path(d) for d in [os.environ.get(assets_env)] if d]
    dirs.append(entry / "bin")
    for directory in dirs:
        if complete(directory):
            return directory.resolve()
    return None


def build_into(
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
