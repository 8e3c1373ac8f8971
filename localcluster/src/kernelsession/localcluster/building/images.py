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

- ``traefik``: the static ``traefik`` binary (:func:`.binaries.ensure_ingress`) with a
  minimal ``/etc/passwd`` and ``/etc/group`` for its non-root uid, alone in a single-layer
  image like ``pause``.

``lab`` and ``operator`` are built with ``buildah build --isolation chroot`` and the
``vfs`` storage driver in a private, temporary storage under the cache (so no mount stays
on the host), ``FROM`` the base image loaded from its archive (``--pull=never``: no
registry is contacted; pip inside the build reaches PyPI with the host's pip settings).

API: :func:`ensure_images`, :func:`ensure_ingress_image` and :func:`import_into_containerd`.
CLI: ``python -m kernelsession.localcluster.building.images ensure`` (``make images``).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
#: The ingress controller's user (non-root; the image's ``/etc/passwd`` names it).
TRAEFIK_UID = 65532
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


# --------------------------------------------------------------------------- locations


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


# --------------------------------------------------------------------------- content hashes


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


def _file_parts(root: Path, files: Iterable[Path]) -> list[tuple[str, bytes]]:
    parts = []
    for rel in files:
        mode = "x" if os.access(root / rel, os.X_OK) else "-"
        parts.append((f"file:{rel}:{mode}", (root / rel).read_bytes()))
    return parts


def base_packages(root: Path) -> list[str]:
    """The Debian packages of the base image (``localcluster/images/base/packages``)."""
    text = (root / IMAGES_DIR / "base" / "packages").read_text()
    return [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]


def apt_source_files() -> list[Path]:
    """The host's apt source files (deb822 ``*.sources`` and one-line ``*.list``), read at run
    time: the base image uses the same mirrors as the host."""
    files: list[Path] = []
    main = Path("/etc/apt/sources.list")
    if main.is_file() and _has_entries(main):
        files.append(main)
    d = Path("/etc/apt/sources.list.d")
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
        [*recipe, ("kind", b"pause"), *_file_parts(root, [IMAGES_DIR / "pause" / "pause.c"])]
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
            *_file_parts(root, lab_files),
        ]
    )
    op_files = context_files(root, CONTEXT_DIRS["operator"])
    hashes["operator"] = content_hash(
        [
            *recipe,
            ("kind", b"operator"),
            ("from", hashes["base"].encode()),
            *_file_parts(root, op_files),
        ]
    )
    return hashes


def image_ref(name: str, tag: str) -> str:
    """``localhost/kernelsession/<name>:<tag>``."""
    return f"{PREFIX}/{name}:{tag}"


# --------------------------------------------------------------------------- the cache


def _entry(name: str, tag: str) -> Path:
    return cache_dir() / f"{name}-{tag}"


def cached(name: str, tag: str) -> Image | None:
    """The cached image ``name`` with content hash ``tag``, or None when not built yet."""
    entry = _entry(name, tag)
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
def _locked() -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _workdir(name: str) -> Iterator[Path]:
    """A temporary directory inside the cache (same file system: atomic rename)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir()))
    try:
        yield work
    finally:
        _unmount_below(work)
        shutil.rmtree(work, ignore_errors=True)


def _commit(name: str, tag: str, work: Path, archive: Path, seconds: float) -> Image:
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
    final = _entry(name, tag)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(entry_tmp, final)
    done = cached(name, tag)
    assert done is not None
    return dataclasses.replace(done, built_now=True)


def _mounts() -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1].replace("\\040", " ") for line in lines if len(line.split()) > 1]


def _unmount_below(path: Path) -> None:
    """Unmount whatever a failed build left mounted under our own work directory."""
    prefix = str(path.resolve()) + "/"
    for mountpoint in sorted((m for m in _mounts() if m.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)


# --------------------------------------------------------------------------- tools


def _require(tool: str, package: str, why: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ImagesUnavailableError(
            f"`{tool}` is not installed; it is needed to {why}.\n"
            f"Fix: run `make os-packages` (as root, on Debian) or "
            f"`apt-get install -y --no-install-recommends {package}`."
        )
    return found


def _run(
    argv: list[str],
    *,
    what: str,
    log: bool,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a build step and return its output (stdout and stderr merged). When logging, the
    output is also streamed to stderr as it comes; a failure quotes its last lines."""
    lines: list[str] = []
    with subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if log:
                sys.stderr.write(line)
        returncode = proc.wait()
    if returncode != 0:
        tail = "".join(lines[-40:])
        raise ImagesUnavailableError(
            f"{what} failed (exit {returncode}): {' '.join(argv[:6])} ...\n{tail}"
        )
    return "".join(lines)


def _say(log: bool, message: str) -> None:
    if log:
        print(f"kernelsession images: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- builders


def build_pause(root: Path, tag: str, *, log: bool) -> Image:
    """Compile the static pause binary and write its single-layer image."""
    gcc = _require("gcc", "gcc libc6-dev", "compile the static pause binary")
    started = time.monotonic()
    with _workdir("pause") as work:
        binary = work / "pause"
        _run(
            [
                gcc,
                "-Os",
                "-static",
                "-s",
                "-o",
                str(binary),
                str(root / IMAGES_DIR / "pause" / "pause.c"),
            ],
            what="compiling pause.c (gcc -static; needs libc6-dev)",
            log=log,
        )
        layer_tar = work / "layer.tar"
        oci.rootfs_layer_tar({"pause": (binary.read_bytes(), 0o755)}, layer_tar)
        layer = oci.compress_layer(layer_tar, work / "layer.tar.gz")
        config = oci.image_config(
            [layer.diff_id],
            env=["PATH=/"],
            entrypoint=["/pause"],
            user="65535:65535",
            created_by="gcc -static localcluster/images/pause/pause.c",
        )
        archive = work / "image.oci.tar"
        oci.write_image_archive(archive, image_ref("pause", tag), [layer], config)
        return _commit("pause", tag, work, archive, time.monotonic() - started)


def build_base(root: Path, tag: str, *, log: bool) -> Image:
    """mmdebstrap a Debian minbase with the listed packages and write it as one layer."""
    mmdebstrap = _require("mmdebstrap", "mmdebstrap", "build the Debian base image")
    sources = apt_source_files()
    if not sources:
        raise ImagesUnavailableError(
            "no apt sources found in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources:"
            " the base image is bootstrapped from the host's Debian mirror; configure apt first."
        )
    started = time.monotonic()
    with _workdir("base") as work:
        rootfs_tar = work / "rootfs.tar"
        mode = "unshare" if _userns_works() else "root"
        env = dict(os.environ, SOURCE_DATE_EPOCH="0", TMPDIR=str(work))
        _run(
            [
                mmdebstrap,
                f"--mode={mode}",
                *MMDEBSTRAP_OPTIONS,
                f"--include={','.join(base_packages(root))}",
                "--quiet",
                SUITE,
                str(rootfs_tar),
                *(str(s) for s in sources),
            ],
            what="mmdebstrap (Debian base image)",
            log=log,
            env=env,
        )
        layer = oci.compress_layer(rootfs_tar, work / "layer.tar.gz")
        rootfs_tar.unlink()
        config = oci.image_config(
            [layer.diff_id],
            env=[
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8",
            ],
            cmd=["/bin/bash"],
            created_by=f"mmdebstrap {SUITE} minbase + {' '.join(base_packages(root))}",
        )
        archive = work / "image.oci.tar"
        oci.write_image_archive(archive, image_ref("base", tag), [layer], config)
        return _commit("base", tag, work, archive, time.monotonic() - started)


def traefik_files(binary: bytes) -> dict[str, tuple[bytes, int]]:
    """The traefik image's files: the binary and a passwd/group naming its user. Pure."""
    uid = TRAEFIK_UID
    return {
        "traefik": (binary, 0o755),
        "etc/passwd": (
            f"root:x:0:0:root:/:/sbin/nologin\ntraefik:x:{uid}:{uid}:traefik:/:/sbin/nologin\n".encode(),
            0o644,
        ),
        "etc/group": (f"root:x:0:\ntraefik:x:{uid}:\n".encode(), 0o644),
    }


def traefik_hash(binary: Path, version: str) -> str:
    """The traefik image's tag: a content hash of the binary, its version and the recipe."""
    return content_hash(
        [
            ("recipe", RECIPE_VERSION.encode()),
            ("kind", b"traefik"),
            ("version", version.encode()),
            ("uid", str(TRAEFIK_UID).encode()),
            ("file:traefik", binary.read_bytes()),
        ]
    )


def build_traefik(binary: Path, version: str, tag: str, *, log: bool) -> Image:
    """Write the single-layer traefik image: ``/traefik`` run as uid :data:`TRAEFIK_UID`."""
    started = time.monotonic()
    with _workdir("traefik") as work:
        layer_tar = work / "layer.tar"
        oci.rootfs_layer_tar(traefik_files(binary.read_bytes()), layer_tar)
        layer = oci.compress_layer(layer_tar, work / "layer.tar.gz")
        layer_tar.unlink()
        config = oci.image_config(
            [layer.diff_id],
            env=["PATH=/"],
            entrypoint=["/traefik"],
            user=f"{TRAEFIK_UID}:{TRAEFIK_UID}",
            labels={
                "org.opencontainers.image.title": "traefik",
                "org.opencontainers.image.version": version,
            },
            created_by=f"traefik {version} (hack/build-ingress.sh, Go module proxy)",
        )
        archive = work / "image.oci.tar"
        oci.write_image_archive(archive, image_ref("traefik", tag), [layer], config)
        _say(log, f"built the traefik image in {time.monotonic() - started:.1f}s")
        return _commit("traefik", tag, work, archive, time.monotonic() - started)


def _userns_works() -> bool:
    try:
        return (
            subprocess.run(["unshare", "--user", "--map-root-user", "true"], check=False).returncode
            == 0
        )
    except OSError:
        return False


@dataclass
class _Buildah:
    """buildah with a private store (vfs) and config under a work directory."""

    work: Path
    log: bool
    exe: str = field(default="buildah")

    def __post_init__(self) -> None:
        (self.work / "storage").mkdir()
        (self.work / "run").mkdir()
        (self.work / "policy.json").write_text(
            json.dumps({"default": [{"type": "insecureAcceptAnything"}]})
        )
        # No registry is searched or contacted: short names do not resolve anywhere.
        (self.work / "registries.conf").write_text("unqualified-search-registries = []\n")
        (self.work / "containers.conf").write_text("")

    @property
    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            CONTAINERS_REGISTRIES_CONF=str(self.work / "registries.conf"),
            CONTAINERS_CONF=str(self.work / "containers.conf"),
            BUILDAH_ISOLATION="chroot",
            TMPDIR=str(self.work),
        )

    def __call__(self, *args: str, what: str) -> str:
        argv = [
            self.exe,
            "--root",
            str(self.work / "storage"),
            "--runroot",
            str(self.work / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]
        return _run(argv, what=what, log=self.log, env=self.env)

    def cleanup(self) -> None:
        """Remove working containers and images from the private store."""
        for args in (("rm", "--all"), ("rmi", "--all", "--force")):
            with contextlib.suppress(ImagesUnavailableError):
                self(*args, what="buildah " + args[0])


def pip_settings(work: Path) -> Path | None:
    """A pip.conf for builds, from the host's pip configuration and ``PIP_*`` environment.

    Files it names (``cert``, ``client-cert``) are copied next to it; local ``find-links``
    directories and the host's ``cache-dir`` are dropped (they do not exist inside the
    build). Returns the directory to mount at ``/run/kernelsession-pip`` (``pip.conf``
    inside), or None when the host has no pip settings.
    """
    settings: dict[str, str] = {}
    for conf in (Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")):
        parser = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(conf)
            if parser.has_section("global"):
                settings.update(dict(parser.items("global")))
    for key, value in os.environ.items():
        if key.startswith("PIP_") and key not in ("PIP_CONFIG_FILE",):
            settings[key[4:].lower().replace("_", "-")] = value
    if not settings:
        return None
    out = work / "pip"
    out.mkdir()
    kept: dict[str, str] = {}
    for key, value in settings.items():
        if key in ("cert", "client-cert"):
            src = Path(value)
            if src.is_file():
                shutil.copyfile(src, out / key)
                kept[key] = f"/run/kernelsession-pip/{key}"
        elif key == "cache-dir":
            continue  # a host directory (builds use --no-cache-dir)
        elif key == "find-links":
            urls = [v for v in value.split() if "://" in v]
            if urls:
                kept[key] = " ".join(urls)
        else:
            kept[key] = value
    parser = configparser.ConfigParser()
    parser["global"] = kept
    with open(out / "pip.conf", "w") as f:
        parser.write(f)
    return out


def build_with_buildah(
    name: str,
    tag: str,
    *,
    base: Image,
    dockerfile: Path,
    context: Callable[[Path], Path],
    log: bool,
) -> Image:
    """Build ``dockerfile`` FROM the base image with buildah and write its OCI archive."""
    exe = _require("buildah", "buildah", f"build the {name} image from {dockerfile.name}")
    started = time.monotonic()
    ref = image_ref(name, tag)
    mounts_before = set(_mounts())
    with _workdir(name) as work:
        buildah = _Buildah(work, log, exe)
        try:
            pulled = buildah(
                "pull",
                "--quiet",
                "--signature-policy",
                str(work / "policy.json"),
                f"oci-archive:{base.archive}",
                what="loading the base image into buildah",
            )
            ids = [w for w in pulled.split() if re.fullmatch(r"[0-9a-f]{64}", w)]
            if not ids:
                raise ImagesUnavailableError(f"buildah pull printed no image id: {pulled!r}")
            image_id = ids[-1]
            buildah("tag", image_id, base.ref, what="naming the base image")
            ctx = context(work)
            build_args = ["--build-arg", f"BASE={base.ref}"]
            volumes: list[str] = []
            pip_dir = pip_settings(work)
            if pip_dir is not None:
                build_args += ["--build-arg", "PIP_CONFIG_FILE=/run/kernelsession-pip/pip.conf"]
                volumes = ["--volume", f"{pip_dir}:/run/kernelsession-pip:ro"]
            buildah(
                "build",
                "--isolation",
                "chroot",
                "--pull=never",
                "--signature-policy",
                str(work / "policy.json"),
                "--network",
                "host",
                "--layers=false",
                "--format",
                "oci",
                "--timestamp",
                "0",
                *build_args,
                *volumes,
                "--file",
                str(dockerfile if dockerfile.is_absolute() else ctx / dockerfile),
                "--tag",
                ref,
                str(ctx),
                what=f"buildah build ({name} image)",
            )
            layout = work / "layout"
            buildah(
                "push",
                "--quiet",
                "--signature-policy",
                str(work / "policy.json"),
                ref,
                f"oci:{layout}",
                what=f"buildah push ({name} image)",
            )
            archive = work / "image.oci.tar"
            oci.layout_to_archive(layout, archive, ref)
            shutil.rmtree(layout)
        finally:
            buildah.cleanup()
        left = sorted(set(_mounts()) - mounts_before)
        if left:
            _say(log, f"warning: mounts left after the {name} build: {left}")
        return _commit(name, tag, work, archive, time.monotonic() - started)


def _stage_context(root: Path, dirs: Iterable[str], under: Path = Path()) -> Callable[[Path], Path]:
    """A build context holding exactly the hashed files of ``dirs`` (nothing else leaks in),
    with paths relative to ``under``."""

    def make(work: Path) -> Path:
        ctx = work / "context"
        ctx.mkdir()
        for rel in context_files(root, dirs):
            dest = ctx / rel.relative_to(under)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dest)
        return ctx

    return make


# --------------------------------------------------------------------------- API


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
    with _locked():
        _remove_stale_work()
        done: dict[str, Image | None] = {}

        def one(name: str) -> Image:
            hit = None if name in force else cached(name, tags[name])
            if hit is not None:
                return hit
            _say(log, f"building {name} ({image_ref(name, tags[name])}) ...")
            built = _build(name, root, tags[name], done, log=log)
            _say(
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
    cache or built from the Traefik binary (which :func:`.binaries.ensure_ingress` finds or,
    with ``build_missing``, builds from the Go module proxy). Needs no root.

    Raises:
        BinariesUnavailableError: the Traefik binary is missing and cannot be built.
        ImagesUnavailableError: the image build failed.
    """
    from kernelsession.localcluster.building.binaries import TRAEFIK_VERSION, ensure_ingress

    binary = ensure_ingress(build_missing=build_missing, log=log).traefik
    tag = traefik_hash(binary, TRAEFIK_VERSION)
    hit = cached("traefik", tag)
    if hit is not None:
        return hit
    with _locked():
        hit = cached("traefik", tag)
        if hit is not None:
            return hit
        built = build_traefik(binary, TRAEFIK_VERSION, tag, log=log)
        prune(keep={"traefik": tag})
        return built


def _remove_stale_work() -> None:
    """Remove ``.build-*`` directories of builds that were killed (we hold the lock)."""
    for stale in cache_dir().glob(".build-*"):
        _unmount_below(stale)
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
            context=_stage_context(root, [lab_dir], Path(lab_dir)),
            log=log,
        )
    ctx_make = _stage_context(root, CONTEXT_DIRS["operator"])
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

    Runs ``ctr --address ADDRESS --namespace NAMESPACE images import ARCHIVE`` per image
    not yet present (the ref names the content, so a present ref is up to date); the
    archives' index carries ``io.containerd.image.name`` so the image gets its full ref.
    Returns the refs, all of which ``ctr images ls`` then shows.

    Raises:
        ImagesUnavailableError: an import failed or a ref is missing afterwards.
    """
    todo = list(images.node_images() if isinstance(images, Images) else images)
    base = [str(ctr), "--address", str(address), "--namespace", namespace]

    def present() -> set[str]:
        out = _run([*base, "images", "ls", "--quiet"], what="ctr images ls", log=False)
        return set(out.split())

    have = present()
    for image in todo:
        if image.ref in have:
            continue
        argv = [*base, "images", "import"]
        if snapshotter:
            argv += ["--snapshotter", snapshotter]
        _run([*argv, str(image.archive)], what=f"ctr images import {image.ref}", log=log)
    missing = [i.ref for i in todo if i.ref not in present()]
    if missing:
        raise ImagesUnavailableError(f"after `ctr images import`, containerd lacks {missing}")
    return [i.ref for i in todo]


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
        from kernelsession.localcluster.building.binaries import BinariesUnavailableError

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
