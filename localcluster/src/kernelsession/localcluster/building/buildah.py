"""The buildah driver: ``lab`` and ``operator`` from their Dockerfiles (``buildah build
--isolation chroot``, ``vfs`` storage in a private temporary directory, FROM the base
image's archive, no registry)."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kernelsession.localcluster.building import oci
from kernelsession.localcluster.building.imagecache import (
    Image,
    ImagesUnavailableError,
    commit,
    context_files,
    image_ref,
    mounts,
    work_dir,
)
from kernelsession.localcluster.building.steps import require_tool, run_step, say


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
        return run_step(argv, what=what, log=self.log, env=self.env)

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
    exe = require_tool("buildah", "buildah", f"build the {name} image from {dockerfile.name}")
    started = time.monotonic()
    ref = image_ref(name, tag)
    mounts_before = set(mounts())
    with work_dir(name) as work:
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
        left = sorted(set(mounts()) - mounts_before)
        if left:
            say(log, f"warning: mounts left after the {name} build: {left}")
        return commit(name, tag, work, archive, time.monotonic() - started)


def stage_context(root: Path, dirs: Iterable[str], under: Path = Path()) -> Callable[[Path], Path]:
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
