"""KWOK (``sigs.k8s.io/kwok``): the controller that runs the scale bench's fake nodes.

Built once from the Go module proxy with ``hack/build-kwok.sh`` into
``$XDG_CACHE_HOME/kernelsession/kwok/kwok-<v>/bin`` (``$KERNELSESSION_KWOK_ASSETS`` may name a
directory holding a ``kwok`` executable instead). Only ``make bench`` builds it, when the
``scale`` section is asked for; ``make setup`` and ``make test`` never do.

CLI: ``python -m kernelsession.localcluster.building.kwok ensure`` (find or build, print
where) or ``path``.
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
    first_complete,
    repo_root,
)

#: KWOK's release; it builds against Kubernetes 1.36 libraries in its own module graph and
#: talks to the local cluster's API server as any client does.
KWOK_VERSION = "v0.8.0"
KWOK_BUILD_SCRIPT = Path("hack") / "build-kwok.sh"
KWOK_ASSETS_ENV = "KERNELSESSION_KWOK_ASSETS"


@dataclass(frozen=True)
class KwokBinaries:
    """The directory holding the ``kwok`` executable."""

    directory: Path

    @property
    def kwok(self) -> Path:
        return self.directory / "kwok"

    @staticmethod
    def complete(directory: Path) -> bool:
        return os.access(directory / "kwok", os.X_OK)


def kwok_cache_dir() -> Path:
    """Cache entry of KWOK for the pinned version."""
    return cache_root() / "kwok" / f"kwok-{KWOK_VERSION}"


def find_kwok() -> KwokBinaries | None:
    """KWOK in ``$KERNELSESSION_KWOK_ASSETS`` or the cache, or None (builds nothing)."""
    found = first_complete(KWOK_ASSETS_ENV, kwok_cache_dir(), KwokBinaries.complete)
    return None if found is None else KwokBinaries(found)


def describe_kwok(found: KwokBinaries) -> str:
    """One line naming KWOK's version and where it is."""
    return f"kwok: KWOK {KWOK_VERSION} in {found.directory}"


def ensure_kwok(*, build_missing: bool = True, log: bool = True) -> KwokBinaries:
    """Find or build KWOK.

    Raises:
        BinariesUnavailableError: it is missing and cannot be built; the message says why
            and how to provide it.
    """
    found = find_kwok()
    if found is not None:
        return found
    root = repo_root()
    why = ""
    if not build_missing:
        why = "building it was not asked for"
    elif root is None:
        why = "there is no source checkout with hack/build-kwok.sh to build it"
    elif shutil.which("go") is None:
        why = "there is no `go` on PATH to build it"
    if why:
        raise BinariesUnavailableError(
            f"KWOK {KWOK_VERSION} (executable `kwok`) is not in {kwok_cache_dir() / 'bin'} and "
            f"{why}; run `make bench BENCH_ARGS=scale` (needs Go and the Go module proxy) or "
            f"set {KWOK_ASSETS_ENV} to a directory holding `kwok` {KWOK_VERSION}"
        )
    assert root is not None
    try:
        directory = build_into(
            kwok_cache_dir(),
            root / KWOK_BUILD_SCRIPT,
            {"KS_KWOK_VERSION": KWOK_VERSION},
            KwokBinaries.complete,
            f"KWOK {KWOK_VERSION}",
            log=log,
        )
    except RuntimeError as exc:
        raise BinariesUnavailableError(f"KWOK: {exc}") from exc
    return KwokBinaries(directory.resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.building.kwok")
    parser.add_argument("command", choices=["ensure", "path"])
    args = parser.parse_args(argv)
    try:
        found = ensure_kwok(build_missing=args.command == "ensure")
    except BinariesUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(describe_kwok(found) if args.command == "ensure" else found.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
