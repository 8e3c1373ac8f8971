"""The local cluster's optional ingress controller, Traefik v3: a static ``traefik`` built
once from the Go module proxy with ``hack/build-ingress.sh`` into
``$XDG_CACHE_HOME/kernelsession/ingress/traefik-<v>/bin``
(``$KERNELSESSION_INGRESS_ASSETS`` may name a directory holding it instead). Only when asked
for (``make ingress-binaries``, ``make test``); ``make setup`` never builds it. This module
decides its version.
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

#: The newest v3 whose every dependency the Go module proxy serves: v3.7.x pins lego v5
#: (ACME), and the proxy refuses lego v5.4.1, the DNS-provider SDK versions lego v5.3.1
#: needs and the go-http-auth fork v3.7 builds with (403 "not available").
TRAEFIK_VERSION = "v3.6.12"
INGRESS_BUILD_SCRIPT = Path("hack") / "build-ingress.sh"
INGRESS_REQUIRED = ("traefik",)
INGRESS_ASSETS_ENV = "KERNELSESSION_INGRESS_ASSETS"


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
    return cache_root() / "ingress" / f"traefik-{TRAEFIK_VERSION}"


def find_ingress() -> IngressBinaries | None:
    """The ingress binaries in ``$KERNELSESSION_INGRESS_ASSETS`` or the cache, or None
    (builds nothing)."""
    found = first_complete(INGRESS_ASSETS_ENV, ingress_cache_dir(), IngressBinaries.complete)
    return None if found is None else IngressBinaries(found)


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
        directory = build_into(
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
