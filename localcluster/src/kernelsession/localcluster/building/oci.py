"""OCI image archives (``oci-layout`` + ``index.json`` + ``blobs/sha256/...`` in one tar).

A small writer for single-layer images built from a root file system tarball (the pause and
base images), a converter from an OCI directory layout (what ``buildah push oci:DIR`` writes)
to an archive whose index carries the ``io.containerd.image.name`` annotation (so
``ctr images import`` names the image by its full reference), and a reader for tests.

Everything written here is deterministic: tar members have mtime 0 and owner root, gzip
streams have no name and mtime 0, JSON is compact with sorted keys.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"
_CHUNK = 1 << 20


class OciError(ValueError):
    """An OCI layout or archive is malformed."""


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _tarinfo(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclass(frozen=True)
class Layer:
    """A compressed layer blob on disk, with its digests and sizes."""

    path: Path
    digest: str  # sha256 of the compressed blob
    size: int  # compressed size
    diff_id: str  # sha256 of the uncompressed tar
    unpacked_size: int


def compress_layer(tar_path: Path, out: Path, *, level: int = 6) -> Layer:
    """Gzip ``tar_path`` into ``out`` deterministically; return its digests and sizes."""
    diff = hashlib.sha256()
    unpacked = 0
    with (
        open(tar_path, "rb") as src,
        open(out, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as gz,
    ):
        while chunk := src.read(_CHUNK):
            diff.update(chunk)
            unpacked += len(chunk)
            gz.write(chunk)
    digest = _file_digest(out)
    return Layer(out, digest, out.stat().st_size, f"sha256:{diff.hexdigest()}", unpacked)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def image_config(
    diff_ids: list[str],
    *,
    env: list[str],
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    user: str = "",
    workdir: str = "/",
    labels: dict[str, str] | None = None,
    created_by: str = "kernelsession",
) -> dict[str, Any]:
    """An OCI image configuration for linux/amd64 with the given layers (bottom first)."""
    config: dict[str, Any] = {"Env": env, "WorkingDir": workdir}
    if entrypoint is not None:
        config["Entrypoint"] = entrypoint
    if cmd is not None:
        config["Cmd"] = cmd
    if user:
        config["User"] = user
    if labels:
        config["Labels"] = labels
    return {
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": EPOCH, "created_by": created_by} for _ in diff_ids],
    }


def index_for(ref: str, manifest_digest: str, manifest_size: int) -> dict[str, Any]:
    """The ``index.json`` of a one-image archive named ``ref`` (``registry/repo:tag``)."""
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {ANNOTATION_CONTAINERD_NAME: ref, ANNOTATION_REF_NAME: ref},
            }
        ],
    }


def _write_archive(out: Path, index: dict[str, Any], blobs: dict[str, Path | bytes]) -> None:
    """Write ``oci-layout``, ``index.json`` and the blobs (digest -> file or bytes) to ``out``."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        layout = _json_bytes({"imageLayoutVersion": "1.0.0"})
        tf.addfile(_tarinfo("oci-layout", len(layout)), io.BytesIO(layout))
        index_bytes = _json_bytes(index)
        tf.addfile(_tarinfo("index.json", len(index_bytes)), io.BytesIO(index_bytes))
        tf.addfile(_dir_info("blobs"))
        tf.addfile(_dir_info("blobs/sha256"))
        for digest in sorted(blobs):
            name = "blobs/sha256/" + digest.removeprefix("sha256:")
            blob = blobs[digest]
            if isinstance(blob, bytes):
                tf.addfile(_tarinfo(name, len(blob)), io.BytesIO(blob))
            else:
                with open(blob, "rb") as f:
                    tf.addfile(_tarinfo(name, blob.stat().st_size), f)


def _dir_info(name: str) -> tarfile.TarInfo:
    info = _tarinfo(name, 0, 0o755)
    info.type = tarfile.DIRTYPE
    return info


def write_image_archive(
    out: Path, ref: str, layers: list[Layer], config: dict[str, Any]
) -> tuple[str, int]:
    """Write an OCI archive holding one image; return the manifest digest and size."""
    config_bytes = _json_bytes(config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    blobs: dict[str, Path | bytes] = {layer.digest: layer.path for layer in layers}
    blobs[config_digest] = config_bytes
    blobs[manifest_digest] = manifest_bytes
    _write_archive(out, index_for(ref, manifest_digest, len(manifest_bytes)), blobs)
    return manifest_digest, len(manifest_bytes)


def rootfs_layer_tar(files: dict[str, tuple[bytes, int]], out: Path) -> None:
    """Write a layer tar from ``{path: (content, mode)}`` (parent directories added, root owned)."""
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in sorted(dirs):
            tf.addfile(_dir_info(d))
        for path in sorted(files):
            data, mode = files[path]
            tf.addfile(_tarinfo(path.strip("/"), len(data), mode), io.BytesIO(data))


def layout_to_archive(layout: Path, out: Path, ref: str) -> tuple[str, int]:
    """Turn an OCI directory layout with one image into an archive named ``ref``.

    The index is rewritten to carry ``io.containerd.image.name`` (``ctr images import``
    drops images it cannot name) and the platform. Returns the manifest digest and size.
    """
    index = json.loads((layout / "index.json").read_text())
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise OciError(f"{layout}: expected one manifest in index.json, found {len(manifests)}")
    desc = manifests[0]
    blobdir = layout / "blobs" / "sha256"
    blobs: dict[str, Path | bytes] = {
        f"sha256:{p.name}": p for p in sorted(blobdir.iterdir()) if p.is_file()
    }
    if desc["digest"] not in blobs:
        raise OciError(f"{layout}: manifest blob {desc['digest']} missing")
    _write_archive(out, index_for(ref, desc["digest"], int(desc["size"])), blobs)
    return str(desc["digest"]), int(desc["size"])


@dataclass(frozen=True)
class ArchiveImage:
    """What an OCI archive holds: its index, the (one) manifest and the image config."""

    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    ref: str
    manifest_digest: str

    @property
    def user(self) -> str:
        """The configured user (``""`` means root)."""
        return str(self.config.get("config", {}).get("User", ""))

    def unpacked_size(self, archive: Path) -> int:
        """Sum of the uncompressed layer sizes."""
        return sum(size for _name, size in _iter_layer_sizes(archive, self.manifest))


def read_archive(archive: Path) -> ArchiveImage:
    """Parse an OCI archive holding exactly one image and check the blobs it names exist."""
    with tarfile.open(archive, "r") as tf:
        names = set(tf.getnames())
        for required in ("oci-layout", "index.json"):
            if required not in names:
                raise OciError(f"{archive}: no {required}")
        index = json.loads(_read_member(tf, "index.json"))
        manifests = index.get("manifests") or []
        if len(manifests) != 1:
            raise OciError(f"{archive}: expected one manifest, found {len(manifests)}")
        desc = manifests[0]
        manifest_bytes = _read_member(tf, _blob_name(desc["digest"]))
        _check_digest(manifest_bytes, desc["digest"], archive)
        manifest = json.loads(manifest_bytes)
        config_bytes = _read_member(tf, _blob_name(manifest["config"]["digest"]))
        _check_digest(config_bytes, manifest["config"]["digest"], archive)
        for layer in manifest["layers"]:
            if _blob_name(layer["digest"]) not in names:
                raise OciError(f"{archive}: layer {layer['digest']} missing")
        annotations = desc.get("annotations") or {}
        ref = annotations.get(ANNOTATION_CONTAINERD_NAME) or annotations.get(
            ANNOTATION_REF_NAME, ""
        )
        return ArchiveImage(index, manifest, json.loads(config_bytes), ref, desc["digest"])


def _blob_name(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return f"blobs/{algo}/{hexdigest}"


def _read_member(tf: tarfile.TarFile, name: str) -> bytes:
    member = tf.extractfile(name)
    if member is None:
        raise OciError(f"{name} is not a regular file")
    with member:
        return member.read()


def _check_digest(data: bytes, digest: str, archive: Path) -> None:
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise OciError(f"{archive}: blob {digest} does not match its digest")


def _iter_layer_sizes(archive: Path, manifest: dict[str, Any]) -> Iterator[tuple[str, int]]:
    for name, stream in iter_layer_streams(archive, manifest):
        total = 0
        while chunk := stream.read(_CHUNK):
            total += len(chunk)
        yield name, total


def iter_layer_streams(archive: Path, manifest: dict[str, Any]) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield each layer (bottom first) as a readable uncompressed tar stream."""
    with tarfile.open(archive, "r") as tf:
        for layer in manifest["layers"]:
            member = tf.extractfile(_blob_name(layer["digest"]))
            if member is None:
                raise OciError(f"{archive}: layer {layer['digest']} is not a file")
            with member:
                if str(layer.get("mediaType", "")).endswith("gzip"):
                    with gzip.GzipFile(fileobj=member, mode="rb") as gz:
                        yield layer["digest"], cast("IO[bytes]", gz)
                else:
                    yield layer["digest"], member


def list_files(archive: Path) -> set[str]:
    """The paths (without leading ``./`` or ``/``) present in the image's merged file system.

    Whiteouts (``.wh.`` entries) of upper layers remove paths of lower ones.
    """
    image = read_archive(archive)
    present: set[str] = set()
    for _digest, stream in iter_layer_streams(archive, image.manifest):
        with tarfile.open(fileobj=stream, mode="r|") as layer:
            for member in layer:
                name = member.name.removeprefix("./").strip("/")
                base = os.path.basename(name)
                parent = os.path.dirname(name)
                if base == ".wh..wh..opq":
                    present = {p for p in present if not p.startswith(parent + "/")}
                elif base.startswith(".wh."):
                    gone = os.path.join(parent, base.removeprefix(".wh."))
                    present = {p for p in present if p != gone and not p.startswith(gone + "/")}
                elif name:
                    present.add(name)
    return present


def unpack(archive: Path, dest: Path) -> None:
    """Unpack the image's merged file system into ``dest`` (layers in order, whiteouts
    applied; ownership kept when running as root). For tests and inspection."""
    image = read_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    for _digest, stream in iter_layer_streams(archive, image.manifest):
        with tarfile.open(fileobj=stream, mode="r|") as layer:
            for member in layer:
                name = member.name.removeprefix("./").strip("/")
                base = os.path.basename(name)
                parent = dest / os.path.dirname(name)
                if base == ".wh..wh..opq":
                    for child in parent.iterdir() if parent.is_dir() else []:
                        _remove(child)
                elif base.startswith(".wh."):
                    _remove(parent / base.removeprefix(".wh."))
                elif name:
                    target = dest / name
                    if target.is_symlink() or (target.exists() and not target.is_dir()):
                        target.unlink()
                    layer.extract(member, dest, filter=_keep_modes)


def _keep_modes(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """The ``tar`` filter (no absolute paths or escapes), but keeping sticky and setuid bits
    and group/other write permission: /tmp must stay 1777."""
    return tarfile.tar_filter(member, dest).replace(mode=member.mode, deep=False)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
