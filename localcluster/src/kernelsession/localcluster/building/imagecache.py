"""The images' names, content hashes and cache.

An image is named ``localhost/kernelsession/<name>:<hash>`` where ``<hash>`` is a content
hash of every input; it is written once into
``${XDG_CACHE_HOME:-~/.cache}/kernelsession/images/<name>-<hash>/image.oci.tar`` (under a
lock, from a work directory) and found there afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kernelsession.localcluster.building import oci

PREFIX = "localhost/kernelsession"
#: Bump to rebuild every image when the build procedure itself changes.
RECIPE_VERSION = "1"
SUITE = "bookworm"
NAMES = ("pause", "base", "lab", "operator")
#: The images a node needs (the base image is only a build input).
NODE_IMAGES = ("pause", "lab", "operator")
#: Images built only when asked for (not by ``make images``): the ingress controller's.
OPTIONAL_IMAGES = ("traefik",)
#: Files and directories never part of a build context.
EXCLUDED_PARTS = frozenset(
    {
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "build",
        "dist",
        ".venv",
        ".git",
    }
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".so")
CONTEXT_DIRS = {"operator": ("client", "operator")}
IMAGES_DIR = Path("localcluster") / "images"
#: mmdebstrap options of the base image (part of its content hash).
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--format=tar",
    "--aptopt=Acquire::Check-Valid-Until false",
    "--aptopt=Acquire::Languages none",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)


class ImagesUnavailableError(RuntimeError):
    """An image cannot be built on this machine; the message says what is missing and the fix."""


@dataclass(frozen=True)
class Image:
    """One built image: its reference, OCI archive and facts about the build."""

    name: str
    ref: str
    archive: Path
    manifest_digest: str
    archive_bytes: int
    unpacked_bytes: int
    build_seconds: float
    built_now: bool = False

    @property
    def content_hash(self) -> str:
        """The tag: the content hash of the image's inputs."""
        return self.ref.rsplit(":", 1)[1]


@dataclass(frozen=True)
class Images:
    """The four images (refs ``localhost/kernelsession/<name>:<hash>``)."""

    pause: Image
    base: Image
    lab: Image
    operator: Image
    seconds: float = 0.0

    def all(self) -> tuple[Image, ...]:
        """All four, in build order."""
        return (self.pause, self.base, self.lab, self.operator)

    def node_images(self) -> tuple[Image, ...]:
        """pause, lab and operator (the node also imports base, for helper pods)."""
        return (self.pause, self.lab, self.operator)


def repo_root() -> Path:
    """The source checkout holding ``localcluster/images`` (the images' inputs)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / IMAGES_DIR / "lab" / "Dockerfile").is_file():
            return parent
    raise ImagesUnavailableError(
        "the image inputs (localcluster/images/, operator/Dockerfile) are not found above "
        f"{Path(__file__).resolve()}: build the images from a source checkout of kernelsession "
        "with the localcluster distribution installed editable (`make setup`)."
    )


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/kernelsession/images``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernelsession" / "images"


def content_hash(parts: Iterable[tuple[str, bytes]]) -> str:
    """A short, stable hash of named inputs (order-independent; names and bytes both count)."""
    h = hashlib.sha256()
    for name, data in sorted(parts):
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()[:16]


def context_files(root: Path, dirs: Iterable[str]) -> list[Path]:
    """Files under ``root/<dir>`` that form a build context (caches and builds left out)."""
    found: list[Path] = []
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(root / d):
            dirnames[:] = sorted(
                n for n in dirnames if n not in EXCLUDED_PARTS and not n.endswith(".egg-info")
            )
            for name in sorted(filenames):
                if name.endswith(EXCLUDED_SUFFIXES):
                    continue
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    found.append(path.relative_to(root))
    return found


def file_parts(root: Path, files: Iterable[Path]) -> list[tuple[str, bytes]]:
    parts = []
    for rel in files:
        mode = "x" if os.access(root / rel, os.X_OK) else "-"
        parts.append((f"file:{rel}:{mode}", (root / rel).read_bytes()))
    return parts


def base_packages(root: Path) -> list[str]:
    """The Debian packages of the base image (``localcluster/images/base/packages``)."""
    text = (root / IMAGES_DIR / "base" / "packages").read_text()
    return [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]


def apt_source_files(apt_dir: Path = Path("/etc/apt")) -> list[Path]:
    """The host's apt source files (deb822 ``*.sources`` and one-line ``*.list``), read at run
    time: the base image uses the same mirrors as the host. Files without an entry (all
    comments, say) are left out."""
    files: list[Path] = []
    main = apt_dir / "sources.list"
    if main.is_file() and _has_entries(main):
        files.append(main)
    d = apt_dir / "sources.list.d"
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if p.suffix in (".sources", ".list") and p.is_file() and _has_entries(p):
                files.append(p)
    return files


def _has_entries(path: Path) -> bool:
    for line in path.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith(("deb ", "URIs:", "Types:")):
            return True
    return False


def input_hashes(root: Path | None = None) -> dict[str, str]:
    """The content hash (tag) of each image, from its inputs; the base's hash is an input
    of lab and operator."""
    root = root or repo_root()
    hashes: dict[str, str] = {}
    recipe = [("recipe", RECIPE_VERSION.encode())]
    hashes["pause"] = content_hash(
        [*recipe, ("kind", b"pause"), *file_parts(root, [IMAGES_DIR / "pause" / "pause.c"])]
    )
    hashes["base"] = content_hash(
        [
            *recipe,
            ("kind", b"base"),
            ("suite", SUITE.encode()),
            ("options", "\n".join(MMDEBSTRAP_OPTIONS).encode()),
            ("packages", "\n".join(base_packages(root)).encode()),
        ]
    )
    lab_files = context_files(root, [str(IMAGES_DIR / "lab")])
    hashes["lab"] = content_hash(
        [
            *recipe,
            ("kind", b"lab"),
            ("from", hashes["base"].encode()),
            *file_parts(root, lab_files),
        ]
    )
    op_files = context_files(root, CONTEXT_DIRS["operator"])
    hashes["operator"] = content_hash(
        [
            *recipe,
            ("kind", b"operator"),
            ("from", hashes["base"].encode()),
            *file_parts(root, op_files),
        ]
    )
    return hashes


def image_ref(name: str, tag: str) -> str:
    """``localhost/kernelsession/<name>:<tag>``."""
    return f"{PREFIX}/{name}:{tag}"


def entry_dir(name: str, tag: str) -> Path:
    return cache_dir() / f"{name}-{tag}"


def cached(name: str, tag: str) -> Image | None:
    """The cached image ``name`` with content hash ``tag``, or None when not built yet."""
    entry = entry_dir(name, tag)
    try:
        info = json.loads((entry / "info.json").read_text())
    except (OSError, ValueError):
        return None
    archive = entry / "image.oci.tar"
    if not archive.is_file():
        return None
    return Image(
        name=name,
        ref=image_ref(name, tag),
        archive=archive,
        manifest_digest=str(info["manifest_digest"]),
        archive_bytes=archive.stat().st_size,
        unpacked_bytes=int(info["unpacked_bytes"]),
        build_seconds=float(info["build_seconds"]),
    )


@contextlib.contextmanager
def cache_lock() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def work_dir(name: str) -> Iterator[Path]:
    """A temporary directory inside the cache (same file system: atomic rename)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir()))
    try:
        yield work
    finally:
        unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def commit(name: str, tag: str, work: Path, archive: Path, seconds: float) -> Image:
    image = oci.read_archive(archive)
    unpacked = image.unpacked_size(archive)
    entry_tmp = work / "entry"
    entry_tmp.mkdir()
    os.replace(archive, entry_tmp / "image.oci.tar")
    info = {
        "name": name,
        "ref": image_ref(name, tag),
        "manifest_digest": image.manifest_digest,
        "unpacked_bytes": unpacked,
        "build_seconds": round(seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (entry_tmp / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    final = entry_dir(name, tag)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(entry_tmp, final)
    done = cached(name, tag)
    assert done is not None
    return dataclasses.replace(done, built_now=True)


def mounts() -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]


def unmount_below(path: Path) -> None:
    """Unmount whatever a failed build left mounted under our own work directory."""
    prefix = str(path.resolve()) + "/"
    for mountpoint in sorted((m for m in mounts() if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)
