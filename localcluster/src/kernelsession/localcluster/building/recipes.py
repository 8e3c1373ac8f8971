"""The images built without buildah: ``pause`` (gcc -static), ``base`` (mmdebstrap) and
``traefik`` (a static binary), each a single layer."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kernelsession.localcluster.building import oci
from kernelsession.localcluster.building.imagecache import (
    IMAGES_DIR,
    MMDEBSTRAP_OPTIONS,
    RECIPE_VERSION,
    SUITE,
    Image,
    ImagesUnavailableError,
    apt_source_files,
    base_packages,
    commit,
    content_hash,
    image_ref,
    work_dir,
)
from kernelsession.localcluster.building.steps import require_tool, run_step, say, userns_works

#: The ingress controller's user (non-root; the image's ``/etc/passwd`` names it).
TRAEFIK_UID = 65532


def build_pause(root: Path, tag: str, *, log: bool) -> Image:
    """Compile the static pause binary and write its single-layer image."""
    gcc = require_tool("gcc", "gcc libc6-dev", "compile the static pause binary")
    started = time.monotonic()
    with work_dir("pause") as work:
        binary = work / "pause"
        run_step(
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
        return commit("pause", tag, work, archive, time.monotonic() - started)


def build_base(root: Path, tag: str, *, log: bool) -> Image:
    """mmdebstrap a Debian minbase with the listed packages and write it as one layer."""
    mmdebstrap = require_tool("mmdebstrap", "mmdebstrap", "build the Debian base image")
    sources = apt_source_files()
    if not sources:
        raise ImagesUnavailableError(
            "no apt sources found in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources:"
            " the base image is bootstrapped from the host's Debian mirror; configure apt first."
        )
    started = time.monotonic()
    with work_dir("base") as work:
        rootfs_tar = work / "rootfs.tar"
        mode = "unshare" if userns_works() else "root"
        env = dict(os.environ, SOURCE_DATE_EPOCH="0", TMPDIR=str(work))
        run_step(
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
        return commit("base", tag, work, archive, time.monotonic() - started)


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
    with work_dir("traefik") as work:
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
        say(log, f"built the traefik image in {time.monotonic() - started:.1f}s")
        return commit("traefik", tag, work, archive, time.monotonic() - started)
