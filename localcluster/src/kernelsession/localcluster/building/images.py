"""The local node's container images, built on this machine (no registry, no Docker engine).

Four images, each written as an OCI archive into the cache
``${XDG_CACHE_HOME:-~/.cache}/kernelsession/images/<name>-<hash>/image.oci.tar`` and named
``localhost/kernelsession/<name>:<hash>``, where ``<hash>`` is a content hash of every input
(recipe, Dockerfile, files copied into the image, pinned versions, and the hash of the
image it is built FROM). An image is rebuilt only when an input changes.

- ``pause``: ``localcluster/images/pause/pause.c`` compiled with ``gcc -static``, alone in
  a single-layer image (the pod sandbox).
- ``base``: Debian bookworm ``minbase`` with the packages listed in
  ``localcluster/images/base/packages`` (python3, python3-venv, ca-certificates, ...),
  made by ``mmdebstrap`` from the mirrors in the host's apt sources, as one layer.
- ``lab``: ``localcluster/images/lab/Dockerfile`` (JupyterLab in ``/opt/lab``, uid 1000).
- ``operator``: ``operator/Dockerfile`` (context: ``client/`` and ``operator/`` only).

One optional image, built only when asked for (:func:`ensure_ingress_image`; the local
cluster's ingress controller, see :mod:`.ingress`):

- ``traefik``: the static ``traefik`` binary (:func:`.ingressbinaries.ensure_ingress`) with a
  minimal ``/etc/passwd`` and ``/etc/group`` for its non-root uid, alone in a single-layer
  image like ``pause``.

``lab`` and ``operator`` are built with ``buildah build --isolation chroot`` and the
``vfs`` storage driver in a private, temporary storage under the cache (so no mount stays
on the host), ``FROM`` the base image loaded from its archive (``--pull=never``: no
registry is contacted; pip inside the build reaches PyPI with the host's pip settings).

API: :func:`ensure_images`, :func:`ensure_ingress_image` and :func:`import_into_containerd`
(:func:`import_archives` for (ref, archive) pairs). The parts: :mod:`.imagecache` (names,
content hashes, the cache), :mod:`.recipes` (pause, base, traefik), :mod:`.buildah` (lab
and operator from their Dockerfiles), :mod:`.steps` (running the build commands).
CLI: ``python -m kernelsession.localcluster.building.images ensure`` (``make images``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kernelsession.localcluster.building.buildah import (
    build_with_buildah,
    pip_settings,
    stage_context,
)
from kernelsession.localcluster.building.imagecache import (
    CONTEXT_DIRS,
    IMAGES_DIR,
    NAMES,
    NODE_IMAGES,
    OPTIONAL_IMAGES,
    Image,
    Images,
    ImagesUnavailableError,
    apt_source_files,
    base_packages,
    cache_dir,
    cache_lock,
    cached,
    content_hash,
    context_files,
    image_ref,
    input_hashes,
    repo_root,
    unmount_below,
)
from kernelsession.localcluster.building.recipes import (
    TRAEFIK_UID,
    build_base,
    build_pause,
    build_traefik,
    traefik_files,
    traefik_hash,
)
from kernelsession.localcluster.building.steps import run_step, say

# The API, with the names of its parts (cache, recipes, buildah driver) it builds on.
__all__ = [
    "CONTEXT_DIRS",
    "NAMES",
    "NODE_IMAGES",
    "OPTIONAL_IMAGES",
    "TRAEFIK_UID",
    "Image",
    "Images",
    "ImagesUnavailableError",
    "apt_source_files",
    "base_packages",
    "build_traefik",
    "cache_dir",
    "cached",
    "content_hash",
    "context_files",
    "ensure_images",
    "ensure_ingress_image",
    "image_ref",
    "import_archives",
    "import_into_containerd",
    "input_hashes",
    "main",
    "pip_settings",
    "prune",
    "traefik_files",
    "traefik_hash",
]


def ensure_images(*, log: bool = True, rebuild: Iterable[str] = ()) -> Images:
    """Return the four images, building those whose inputs changed (or never built).

    Concurrent callers (processes) serialise on a lock file in the cache and build once.
    ``rebuild`` names images to build even when cached.

    Raises:
        ImagesUnavailableError: a tool is missing (buildah, mmdebstrap, gcc) or a build
            failed; the message names it and the fix.
    """
    started = time.monotonic()
    root = repo_root()
    tags = input_hashes(root)
    force = set(rebuild)
    unknown = force - set(NAMES)
    if unknown:
        raise ValueError(f"unknown image names {sorted(unknown)}; known: {', '.join(NAMES)}")
    found = {n: cached(n, tags[n]) for n in NAMES if n not in force}
    if len(found) == len(NAMES) and all(found.values()):
        return _images(found, started)
    if os.geteuid() != 0:
        missing = [n for n in NAMES if n in force or not found.get(n)]
        raise ImagesUnavailableError(
            f"images {', '.join(missing)} must be built, which needs root (mmdebstrap, "
            "buildah --isolation chroot): run `make images` as root (e.g. `sudo make images`)."
        )
    with cache_lock():
        _remove_stale_work()
        done: dict[str, Image | None] = {}

        def one(name: str) -> Image:
            hit = None if name in force else cached(name, tags[name])
            if hit is not None:
                return hit
            say(log, f"building {name} ({image_ref(name, tags[name])}) ...")
            built = _build(name, root, tags[name], done, log=log)
            say(
                log,
                f"built {built.ref} in {built.build_seconds:.1f}s "
                f"({_mib(built.archive_bytes)} archive, {_mib(built.unpacked_bytes)} unpacked)",
            )
            return built

        # pause and base first; lab and operator (both FROM base, each with its own
        # buildah store) side by side: their time is mostly downloads and file copies.
        for stage in (("pause", "base"), ("lab", "operator")):
            with ThreadPoolExecutor(max_workers=len(stage)) as pool:
                futures = {name: pool.submit(one, name) for name in stage}
                for name, future in futures.items():
                    done[name] = future.result()
        prune(keep={n: tags[n] for n in NAMES})
        return _images(done, started)


def ensure_ingress_image(*, build_missing: bool = True, log: bool = True) -> Image:
    """The ingress controller's image (``localhost/kernelsession/traefik:<hash>``), from the
    cache or built from the Traefik binary (which :func:`.ingressbinaries.ensure_ingress` finds or,
    with ``build_missing``, builds from the Go module proxy). Needs no root.

    Raises:
        BinariesUnavailableError: the Traefik binary is missing and cannot be built.
        ImagesUnavailableError: the image build failed.
    """
    from kernelsession.localcluster.building.ingressbinaries import (
        TRAEFIK_VERSION,
        ensure_ingress,
    )

    binary = ensure_ingress(build_missing=build_missing, log=log).traefik
    tag = traefik_hash(binary, TRAEFIK_VERSION)
    hit = cached("traefik", tag)
    if hit is not None:
        return hit
    with cache_lock():
        hit = cached("traefik", tag)
        if hit is not None:
            return hit
        built = build_traefik(binary, TRAEFIK_VERSION, tag, log=log)
        prune(keep={"traefik": tag})
        return built


def _remove_stale_work() -> None:
    """Remove ``.build-*`` directories of builds that were killed (we hold the lock)."""
    for stale in cache_dir().glob(".build-*"):
        unmount_below(stale)
        shutil.rmtree(stale, ignore_errors=True)


def prune(*, keep: dict[str, str], previous: int = 1) -> list[Path]:
    """Delete cache entries other than ``keep`` (name -> tag) and, per image, the
    ``previous`` most recent other builds (switching branches back stays cheap).
    Returns the removed entries."""
    removed: list[Path] = []
    for name, tag in keep.items():
        others = [
            p for p in cache_dir().glob(f"{name}-*") if p.is_dir() and p.name != f"{name}-{tag}"
        ]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[previous:]:
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def _build(name: str, root: Path, tag: str, done: dict[str, Image | None], *, log: bool) -> Image:
    if name == "pause":
        return build_pause(root, tag, log=log)
    if name == "base":
        return build_base(root, tag, log=log)
    base = done["base"]
    assert base is not None
    if name == "lab":
        lab_dir = str(IMAGES_DIR / "lab")
        return build_with_buildah(
            "lab",
            tag,
            base=base,
            dockerfile=Path("Dockerfile"),
            context=stage_context(root, [lab_dir], Path(lab_dir)),
            log=log,
        )
    ctx_make = stage_context(root, CONTEXT_DIRS["operator"])
    return build_with_buildah(
        "operator",
        tag,
        base=base,
        dockerfile=Path("operator") / "Dockerfile",
        context=ctx_make,
        log=log,
    )


def _images(found: dict[str, Image | None], started: float) -> Images:
    def get(name: str) -> Image:
        img = found.get(name)
        if img is None:
            raise ImagesUnavailableError(f"image {name} was not built")
        return img

    return Images(
        pause=get("pause"),
        base=get("base"),
        lab=get("lab"),
        operator=get("operator"),
        seconds=time.monotonic() - started,
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def import_into_containerd(
    images: Images | Iterable[Image],
    ctr: Path,
    address: Path,
    namespace: str = "k8s.io",
    *,
    snapshotter: str | None = None,
    log: bool = False,
) -> list[str]:
    """Import the node images (pause, lab, operator) into a running containerd and unpack them.

    See :func:`import_archives`. Returns the refs, all of which ``ctr images ls`` then shows.

    Raises:
        ImagesUnavailableError: an import failed or a ref is missing afterwards.
    """
    todo = list(images.node_images() if isinstance(images, Images) else images)
    return import_archives(
        [(i.ref, i.archive) for i in todo],
        ctr,
        address,
        namespace,
        snapshotter=snapshotter,
        log=log,
    )


def import_archives(
    archives: Iterable[tuple[str, Path]],
    ctr: Path,
    address: Path,
    namespace: str = "k8s.io",
    *,
    snapshotter: str | None = None,
    local: bool = False,
    present: set[str] | None = None,
    log: bool = False,
) -> list[str]:
    """Import (ref, OCI archive) pairs into a running containerd: the one importer.

    Runs ``ctr --address ADDRESS --namespace NAMESPACE images import ARCHIVE`` per ref
    not yet present (``present``, else ``ctr images ls``; the ref names the content, so a
    present ref is up to date); the archives' index carries ``io.containerd.image.name``
    so the image gets its full ref. ``local``: import in the client (``--local``) rather
    than through containerd's transfer service. Returns the refs.

    Raises:
        ImagesUnavailableError: an import failed or a ref is missing afterwards.
    """
    todo = list(archives)
    base = [str(ctr), "--address", str(address), "--namespace", namespace]

    def listed() -> set[str]:
        out = run_step([*base, "images", "ls", "--quiet"], what="ctr images ls", log=False)
        return set(out.split())

    have = listed() if present is None else present
    for ref, archive in todo:
        if ref in have:
            continue
        argv = [*base, "images", "import"]
        if local:
            argv.append("--local")
        if snapshotter:
            argv += ["--snapshotter", snapshotter]
        run_step([*argv, str(archive)], what=f"ctr images import {ref}", log=log)
    if any(ref not in have for ref, _ in todo):
        have = listed()
    missing = [ref for ref, _ in todo if ref not in have]
    if missing:
        raise ImagesUnavailableError(f"after `ctr images import`, containerd lacks {missing}")
    return [ref for ref, _ in todo]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``ensure`` (build what changed; print refs, archives, sizes and times),
    ``refs`` (print ``name=ref`` lines, building nothing), ``rebuild NAME...`` or
    ``ingress`` (the optional traefik image)."""
    parser = argparse.ArgumentParser(prog="python -m kernelsession.localcluster.building.images")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure", help="build the images whose inputs changed")
    sub.add_parser("refs", help="print name=ref of each image (no build)")
    rb = sub.add_parser("rebuild", help="build the named images even when cached")
    rb.add_argument("names", nargs="+", choices=NAMES)
    sub.add_parser(
        "ingress", help="build the optional ingress controller's image (Traefik; no root)"
    )
    args = parser.parse_args(argv)
    if args.command == "ingress":
        from kernelsession.localcluster.building.gobuild import BinariesUnavailableError

        try:
            img = ensure_ingress_image()
        except (BinariesUnavailableError, ImagesUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"{img.name:9} {img.ref}  {img.archive}  "
            f"({_mib(img.archive_bytes)} archive, {_mib(img.unpacked_bytes)} unpacked)"
        )
        return 0
    if args.command == "refs":
        for name, tag in input_hashes().items():
            print(f"{name}={image_ref(name, tag)}")
        return 0
    try:
        images = ensure_images(rebuild=args.names if args.command == "rebuild" else ())
    except ImagesUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for img in images.all():
        state = f"built in {img.build_seconds:.1f}s" if img.built_now else "cached"
        print(
            f"{img.name:9} {img.ref}  {img.archive}  "
            f"({_mib(img.archive_bytes)} archive, {_mib(img.unpacked_bytes)} unpacked; {state})"
        )
    print(f"images ready in {images.seconds:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
