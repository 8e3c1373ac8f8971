"""Pure parts of the image build: content hashes, build contexts and the OCI archive writer."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

import pytest

from kernelsession.localcluster.building import imagecache, images, oci, steps
from kernelsession.localcluster.host import ospackages

REPO = Path(__file__).resolve().parents[2]


def _copy_inputs(dst: Path) -> Path:
    """A minimal copy of the repository's image inputs to mutate."""
    for rel in ("localcluster/images", "client", "operator"):
        shutil.copytree(
            REPO / rel, dst / rel, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    return dst


def test_content_hash_is_stable_and_order_independent() -> None:
    a = images.content_hash([("x", b"1"), ("y", b"2")])
    assert a == images.content_hash([("y", b"2"), ("x", b"1")])
    assert len(a) == 16
    assert a != images.content_hash([("x", b"1"), ("y", b"3")])
    # names count, and the boundary between name and data cannot be shifted
    assert images.content_hash([("x", b"12")]) != images.content_hash([("x1", b"2")])


def test_input_hashes_of_the_repo() -> None:
    tags = images.input_hashes(REPO)
    assert set(tags) == set(images.NAMES)
    assert len(set(tags.values())) == 4
    assert images.input_hashes(REPO) == tags


@pytest.mark.parametrize(
    ("path", "changed"),
    [
        ("localcluster/images/pause/pause.c", {"pause"}),
        ("localcluster/images/base/packages", {"base", "lab", "operator"}),
        ("localcluster/images/lab/Dockerfile", {"lab"}),
        ("localcluster/images/lab/requirements.txt", {"lab"}),
        ("operator/Dockerfile", {"operator"}),
        ("operator/image-constraints.txt", {"operator"}),
        ("operator/src/kernelsession/operator/builders.py", {"operator"}),
        ("client/src/kernelsession/client/__init__.py", {"operator"}),
    ],
)
def test_hash_changes_exactly_with_its_inputs(tmp_path: Path, path: str, changed: set[str]) -> None:
    root = _copy_inputs(tmp_path)
    before = images.input_hashes(root)
    target = root / path
    if path.endswith("packages"):
        target.write_text(target.read_text() + "less\n")
    else:
        target.write_text(target.read_text() + "\n# changed\n")
    after = images.input_hashes(root)
    assert {n for n in images.NAMES if before[n] != after[n]} == changed


def test_caches_and_build_output_are_not_inputs(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    before = images.input_hashes(root)
    pkg = root / "operator/src/kernelsession/operator"
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    (root / "operator/dist").mkdir()
    (root / "operator/dist/x.whl").write_bytes(b"junk")
    (root / "client/src/kernelsession_client.egg-info").mkdir()
    assert images.input_hashes(root) == before
    (pkg / "new_module.py").write_text("X = 1\n")
    assert images.input_hashes(root)["operator"] != before["operator"]


def test_operator_context_excludes_the_local_cluster() -> None:
    files = images.context_files(REPO, images.CONTEXT_DIRS["operator"])
    assert any(str(f).startswith("operator/src/kernelsession/operator/") for f in files)
    assert Path("operator/Dockerfile") in files
    assert not any("localcluster" in str(f) for f in files)


def test_operator_image_pins_every_dependency_it_installs() -> None:
    lines = [
        line
        for line in (REPO / "operator/image-constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+]*", line) for line in lines)
    assert len(pins) == len(lines)  # one pin per package
    for project in ("operator", "client"):
        meta = tomllib.loads((REPO / project / "pyproject.toml").read_text())["project"]
        wanted = [*meta["dependencies"], *meta.get("optional-dependencies", {}).get("cli", [])]
        for requirement in wanted:
            name = re.split(r"[<>=!\[ ]", requirement, maxsplit=1)[0]
            if name.startswith("kernelsession"):
                continue
            assert _canonical(name) in {_canonical(p) for p in pins}, name
    assert "-c /tmp/constraints.txt" in (REPO / "operator/Dockerfile").read_text()


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_base_packages_and_refs() -> None:
    pkgs = images.base_packages(REPO)
    assert {"python3", "python3-venv", "ca-certificates"} <= set(pkgs)
    assert images.image_ref("lab", "abc") == "localhost/kernelsession/lab:abc"


def test_apt_sources_are_the_files_with_entries(tmp_path: Path) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text("# no entries, only comments\n\n")
    (d / "debian.sources").write_text("Types: deb\nURIs: http://deb.example/debian\n")
    (d / "extra.list").write_text("deb http://deb.example/extra stable main\n")
    (d / "commented.list").write_text("# deb http://deb.example/old stable main\n")
    (d / "notes.txt").write_text("deb http://deb.example/not-a-source stable main\n")
    (d / "dir.list").mkdir()
    assert imagecache.apt_source_files(tmp_path) == [d / "debian.sources", d / "extra.list"]
    (tmp_path / "sources.list").write_text("deb http://deb.example/debian stable main\n")
    assert imagecache.apt_source_files(tmp_path)[0] == tmp_path / "sources.list"
    assert imagecache.apt_source_files(tmp_path / "missing") == []


def _layer(tmp_path: Path) -> oci.Layer:
    tar_path = tmp_path / "layer.tar"
    oci.rootfs_layer_tar({"bin/hello": (b"#!/bin/sh\necho hi\n", 0o755)}, tar_path)
    return oci.compress_layer(tar_path, tmp_path / "layer.tar.gz")


def test_archive_writer_layout_and_digests(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    raw = (tmp_path / "layer.tar").read_bytes()
    assert layer.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert layer.unpacked_size == len(raw)
    assert gzip.decompress((tmp_path / "layer.tar.gz").read_bytes()) == raw
    config = oci.image_config(
        [layer.diff_id], env=["PATH=/bin"], entrypoint=["/bin/hello"], user="1000:100"
    )
    out = tmp_path / "image.oci.tar"
    ref = "localhost/kernelsession/test:1"
    digest, size = oci.write_image_archive(out, ref, [layer], config)

    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        member = tf.extractfile("oci-layout")
        assert member is not None
        assert json.load(member) == {"imageLayoutVersion": "1.0.0"}
        for m in tf.getmembers():
            assert m.mtime == 0
            assert m.uid == 0
            if m.name.startswith("blobs/sha256/") and m.isfile():
                blob = tf.extractfile(m)
                assert blob is not None
                assert hashlib.sha256(blob.read()).hexdigest() == m.name.rsplit("/", 1)[1]

    image = oci.read_archive(out)
    assert image.ref == ref
    assert image.manifest_digest == digest
    desc = image.index["manifests"][0]
    assert desc["size"] == size
    assert desc["annotations"][oci.ANNOTATION_CONTAINERD_NAME] == ref
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert image.manifest["mediaType"] == oci.MEDIA_MANIFEST
    assert image.manifest["layers"] == [
        {"mediaType": oci.MEDIA_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
    ]
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert image.user == "1000:100"
    assert image.unpacked_size(out) == len(raw)
    assert oci.list_files(out) == {"bin", "bin/hello"}


def test_archive_writer_is_deterministic(tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        layer = _layer(d)
        config = oci.image_config([layer.diff_id], env=[])
        out = d / "image.oci.tar"
        oci.write_image_archive(out, "localhost/x:1", [layer], config)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_layout_to_archive_names_the_image(tmp_path: Path) -> None:
    # an OCI directory layout as `buildah push IMG oci:DIR` writes it (no containerd name)
    layer = _layer(tmp_path)
    src = tmp_path / "src.oci.tar"
    oci.write_image_archive(src, "x", [layer], oci.image_config([layer.diff_id], env=[]))
    layout = tmp_path / "layout"
    with tarfile.open(src) as tf:
        tf.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    del index["manifests"][0]["annotations"]
    del index["manifests"][0]["platform"]
    (layout / "index.json").write_text(json.dumps(index))
    out = tmp_path / "named.oci.tar"
    ref = "localhost/kernelsession/lab:abc"
    oci.layout_to_archive(layout, out, ref)
    image = oci.read_archive(out)
    assert image.ref == ref
    assert image.index["manifests"][0]["annotations"][oci.ANNOTATION_CONTAINERD_NAME] == ref


def test_read_archive_rejects_a_corrupt_blob(tmp_path: Path) -> None:
    layer = _layer(tmp_path)
    src = tmp_path / "src.oci.tar"
    oci.write_image_archive(src, "x", [layer], oci.image_config([layer.diff_id], env=[]))
    bad = tmp_path / "bad.oci.tar"
    with tarfile.open(src) as tin, tarfile.open(bad, "w") as tout:
        manifest_digest = json.load(tin.extractfile("index.json"))["manifests"][0]["digest"]  # type: ignore[arg-type]
        for m in tin.getmembers():
            f = tin.extractfile(m) if m.isfile() else None
            data = f.read() if f else b""
            if m.name.endswith(manifest_digest.split(":")[1]):
                data = data.replace(b"schemaVersion", b"schemaversion")
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if f else None)
    with pytest.raises(oci.OciError, match="does not match"):
        oci.read_archive(bad)


def test_whiteouts_hide_lower_files(tmp_path: Path) -> None:
    lower = tmp_path / "lower.tar"
    oci.rootfs_layer_tar({"a/keep": (b"1", 0o644), "a/gone": (b"2", 0o644)}, lower)
    upper = tmp_path / "upper.tar"
    oci.rootfs_layer_tar({"a/.wh.gone": (b"", 0o644), "b/new": (b"3", 0o644)}, upper)
    layers = [
        oci.compress_layer(lower, tmp_path / "l.gz"),
        oci.compress_layer(upper, tmp_path / "u.gz"),
    ]
    out = tmp_path / "img.tar"
    config = oci.image_config([la.diff_id for la in layers], env=[])
    oci.write_image_archive(out, "x", layers, config)
    assert oci.list_files(out) == {"a", "a/keep", "b", "b/new"}


def test_missing_tool_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(images.ImagesUnavailableError, match=r"apt-get install .*buildah"):
        steps.require_tool("buildah", "buildah", "build images")


def test_pip_settings_copy_the_cert_and_drop_local_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = tmp_path / "ca.crt"
    cert.write_text("CERT")
    for key in [k for k in list(os.environ) if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CERT", str(cert))
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "180")
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    work = tmp_path / "work"
    work.mkdir()
    out = images.pip_settings(work)
    assert out is not None
    text = (out / "pip.conf").read_text()
    assert "cert = /run/kernelsession-pip/cert" in text
    assert "default-timeout = 180" in text
    assert "find-links" not in text
    assert "cache-dir" not in text
    assert (out / "cert").read_text() == "CERT"


def test_os_package_groups() -> None:
    pkgs = ospackages.packages_of(["images"])
    assert {"buildah", "mmdebstrap", "gcc", "libc6-dev"} <= set(pkgs)
    with pytest.raises(ValueError, match="unknown package group"):
        ospackages.packages_of(["nope"])


def test_prune_keeps_current_and_one_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = images.cache_dir()
    for i, tag in enumerate(["old1", "old2", "old3", "cur"]):
        entry = cache / f"lab-{tag}"
        entry.mkdir(parents=True)
        os.utime(entry, (1000 + i, 1000 + i))
    (cache / "operator-cur").mkdir()
    removed = images.prune(keep={"lab": "cur", "operator": "cur"})
    assert sorted(p.name for p in removed) == ["lab-old1", "lab-old2"]
    assert sorted(p.name for p in cache.iterdir()) == ["lab-cur", "lab-old3", "operator-cur"]


def test_cached_needs_archive_and_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    entry = images.cache_dir() / "pause-abc"
    entry.mkdir(parents=True)
    assert images.cached("pause", "abc") is None
    (entry / "image.oci.tar").write_bytes(b"x")
    info = {"manifest_digest": "sha256:00", "unpacked_bytes": 5, "build_seconds": 1.5}
    (entry / "info.json").write_text(json.dumps(info))
    hit = images.cached("pause", "abc")
    assert hit is not None
    assert hit.ref == "localhost/kernelsession/pause:abc"
    assert hit.content_hash == "abc"
    assert not hit.built_now


def test_concurrent_callers_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[str] = []
    started = threading.Barrier(2)

    def fake_build(
        name: str, root: Path, tag: str, done: dict[str, images.Image | None], *, log: bool
    ) -> images.Image:
        calls.append(name)
        entry = images.cache_dir() / f"{name}-{tag}"
        entry.mkdir(parents=True)
        (entry / "image.oci.tar").write_bytes(b"x")
        info = {"manifest_digest": "sha256:00", "unpacked_bytes": 1, "build_seconds": 0.1}
        (entry / "info.json").write_text(json.dumps(info))
        hit = images.cached(name, tag)
        assert hit is not None
        return hit

    monkeypatch.setattr(images, "_build", fake_build)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # building needs root; nothing real runs
    results: list[images.Images] = []

    def call() -> None:
        started.wait()
        results.append(images.ensure_images(log=False))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == sorted(images.NAMES)
    assert len(results) == 2
    assert [i.ref for i in results[0].all()] == [i.ref for i in results[1].all()]


def test_building_as_non_root_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(images.ImagesUnavailableError, match="needs root"):
        images.ensure_images(log=False)
