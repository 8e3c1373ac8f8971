"""`make images` for real: builds (or finds) the four images and checks what is inside.

Slow the first time (mmdebstrap + two buildah builds, a few minutes); a cache hit later.
When containerd (``containerd`` and ``ctr``) is on PATH, or in the directories named by
``KERNELSESSION_TEST_CONTAINERD`` (``:``-separated, e.g. a containerd 2.x build), the node
images are also imported into a private containerd started here per binary (own root, state
and socket in a temp directory, CRI plugin off), which is stopped by PID and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kernelsession.client.testing import free_port
from kernelsession.localcluster.building import gobuild, images, nodebinaries, oci

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _mounts(*under: Path | str) -> set[str]:
    """Mount table lines naming any of ``under`` (default: what an image build could leave:
    the images cache, buildah's default stores, temp dirs). Other processes (a running local
    cluster) mount and unmount elsewhere concurrently; those are not ours to check."""
    roots = [str(u) for u in under] or [
        str(images.cache_dir()),
        "/var/lib/containers",
        "/run/containers",
        "buildah",
    ]
    lines = Path("/proc/self/mounts").read_text().splitlines()
    return {line for line in lines if any(root in line for root in roots)}


def _skip_unless_buildable() -> None:
    if os.geteuid() != 0:
        pytest.skip("building images needs root (mmdebstrap, buildah chroot isolation)")
    missing = [t for t in ("buildah", "mmdebstrap", "gcc") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {missing} (make os-packages)")


@pytest.fixture(scope="module")
def built() -> images.Images:
    _skip_unless_buildable()
    before = _mounts()
    result = images.ensure_images(log=True)
    assert _mounts() - before == set(), "an image build left mounts on the host"
    return result


def test_archives_are_valid_oci_images(built: images.Images) -> None:
    for img in built.all():
        assert img.archive.is_file()
        assert img.archive.is_relative_to(images.cache_dir())
        assert img.ref == f"localhost/kernelsession/{img.name}:{img.content_hash}"
        parsed = oci.read_archive(img.archive)
        assert parsed.ref == img.ref
        assert parsed.manifest_digest == img.manifest_digest
        assert parsed.config["os"] == "linux"
        assert parsed.config["architecture"] == "amd64"
        print(
            f"{img.name}: {img.archive_bytes / 2**20:.1f} MiB archive, "
            f"{img.unpacked_bytes / 2**20:.1f} MiB unpacked, built in {img.build_seconds:.1f}s"
        )


def test_refs_are_the_input_hashes(built: images.Images) -> None:
    tags = images.input_hashes()
    assert {i.name: i.content_hash for i in built.all()} == tags


def test_pause_image(built: images.Images) -> None:
    parsed = oci.read_archive(built.pause.archive)
    assert parsed.config["config"]["Entrypoint"] == ["/pause"]
    assert oci.list_files(built.pause.archive) == {"pause"}


def test_lab_image(built: images.Images) -> None:
    parsed = oci.read_archive(built.lab.archive)
    cfg = parsed.config["config"]
    assert cfg["User"] == "1000:100"
    assert cfg["WorkingDir"] == "/home/jovyan"
    assert any(e.startswith("PATH=/opt/lab/bin:") for e in cfg["Env"])
    files = oci.list_files(built.lab.archive)
    assert "opt/lab/bin/jupyter" in files
    assert "opt/lab/bin/jupyter-lab" in files
    assert "opt/lab/share/jupyter/lab/settings/overrides.json" in files  # no news fetching
    assert "opt/lab/etc/jupyter/jupyter_server_config.py" in files  # websockets: TCP_NODELAY
    assert any(f.startswith("opt/lab/lib/python3.11/site-packages/jupyterlab/") for f in files)
    assert any(f.startswith("opt/lab/lib/python3.11/site-packages/ipykernel/") for f in files)
    assert "home/jovyan" in files
    assert "usr/bin/python3.11" in files
    assert not any(f.startswith("usr/bin/gcc") for f in files), "no build tools in the lab"


def test_lab_home_belongs_to_jovyan(built: images.Images) -> None:
    import tarfile

    parsed = oci.read_archive(built.lab.archive)
    owner = None
    passwd = b""
    for _digest, stream in oci.iter_layer_streams(built.lab.archive, parsed.manifest):
        with tarfile.open(fileobj=stream, mode="r|") as layer:
            for m in layer:
                name = m.name.removeprefix("./").strip("/")
                if name == "home/jovyan":
                    owner = (m.uid, m.gid, m.mode & 0o777)
                elif name == "etc/passwd" and m.isfile():
                    f = layer.extractfile(m)
                    assert f is not None
                    passwd = f.read()
    assert owner is not None
    assert owner[:2] == (1000, 100)
    assert owner[2] & 0o700 == 0o700
    assert b"jovyan:x:1000:100:" in passwd


def test_operator_image(built: images.Images) -> None:
    parsed = oci.read_archive(built.operator.archive)
    cfg = parsed.config["config"]
    uid = cfg["User"].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert cfg["Entrypoint"] == ["kernelsession-operator"]
    files = oci.list_files(built.operator.archive)
    assert "opt/kernelsession/bin/kernelsession-operator" in files
    site = "opt/kernelsession/lib/python3.11/site-packages/"
    assert f"{site}kernelsession/operator/__main__.py" in files
    assert f"{site}kernelsession/client/__init__.py" in files
    assert not any("kernelsession/localcluster" in f for f in files)
    assert not any(f.startswith("src/") or f.startswith("wheels/") for f in files)


def test_second_call_is_a_cache_hit(
    built: images.Images, report_figure: Callable[[str, float, str], None]
) -> None:
    before = _mounts()
    started = time.monotonic()
    again = images.ensure_images(log=False)
    elapsed = time.monotonic() - started
    assert [i.ref for i in again.all()] == [i.ref for i in built.all()]
    assert not any(i.built_now for i in again.all())
    assert _mounts() == before
    report_figure("images: a cache hit took", elapsed, "s")


def test_no_buildah_leftovers(built: images.Images) -> None:
    leftovers = [p.name for p in images.cache_dir().iterdir() if p.name.startswith(".build-")]
    assert leftovers == []


async def test_lab_serves_jupyterlab_as_uid_1000_on_a_read_only_root(
    built: images.Images, tmp_path: Path
) -> None:
    """Run the lab like the operator does (``jupyter server ...``, token from the env, uid
    1000:100, read-only root with a writable HOME and /tmp), in a private mount and PID
    namespace over the unpacked image, and run code in it with the project's client."""
    import httpx
    import psutil

    from kernelsession.client import JupyterLabSessionManager

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    root = tmp_path / "rootfs"
    oci.unpack(built.lab.archive, root)
    port = free_port()
    token = "test-token-" + os.urandom(8).hex()
    cfg = oci.read_archive(built.lab.archive).config["config"]
    env = ["env", "-i", *cfg["Env"], f"JUPYTER_TOKEN={token}"]
    args = [
        "jupyter",
        "server",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.open_browser=False",
    ]
    script = (
        f"set -e; R={root}; mount --bind $R $R; mount -o remount,bind,ro $R; "
        "mount -t proc proc $R/proc; mount -t tmpfs -o mode=1777 tmpfs $R/tmp; "
        "mount -t tmpfs -o uid=1000,gid=100,mode=0755 tmpfs $R/home/jovyan; "
        f'exec chroot --userspec={cfg["User"]} $R /bin/sh -c \'cd "$0" && exec "$@"\' '
        f'{cfg["WorkingDir"]} "$@"'
    )
    before = _mounts(tmp_path)
    proc = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            script,
            "sh",
            *env,
            *args,
        ],
        stdout=open(tmp_path / "lab.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()
                try:
                    r = await http.get(
                        f"{base_url}/api/status", headers={"Authorization": f"token {token}"}
                    )
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
                await asyncio.sleep(0.2)  # polling for readiness, not a fixed wait
            lab = await http.get(f"{base_url}/lab", headers={"Authorization": f"token {token}"})
            assert lab.status_code == 200
            assert "JupyterLab" in lab.text
        manager = JupyterLabSessionManager(base_url=base_url, token=token, username="test")
        async with manager as session:
            out = await session.run_python(
                "import os, sys, tempfile\n"
                "print(os.getuid(), os.getgid(), sys.executable, os.getcwd())\n"
                "open(os.path.expanduser('~/ok'), 'w').write('x')\n"
                "try:\n    open('/opt/x', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
            )
        assert out.split("\n")[0] == "1000 100 /opt/lab/bin/python3 /home/jovyan"
        assert out.split("\n")[1] == "30"  # EROFS: the root file system is read-only
    finally:
        for child in psutil.Process(proc.pid).children():
            child.terminate()  # the lab (PID 1 of its namespace); unshare ignores SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert _mounts(tmp_path) == before
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------- private containerd (optional)


def _containerd_dirs() -> list[str]:
    """Directories holding ``containerd`` and ``ctr`` to test against: the one on PATH
    (Debian's 1.6), the node's (``make binaries``) and those in
    ``KERNELSESSION_TEST_CONTAINERD`` (``:``-separated)."""
    found = shutil.which("containerd")
    dirs = [str(Path(found).parent)] if found else []
    with contextlib.suppress(gobuild.BinariesUnavailableError):  # the node's containerd 2.x
        dirs.append(str(nodebinaries.ensure_node(build_missing=False, log=False).directory))
    extra = os.environ.get("KERNELSESSION_TEST_CONTAINERD", "")
    dirs += [d for d in extra.split(":") if d and d not in dirs]
    return dirs or ["(none)"]


@pytest.fixture(params=_containerd_dirs())
def private_containerd(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path]]:
    bindir = Path(request.param)
    containerd, ctr = bindir / "containerd", bindir / "ctr"
    if not (os.access(containerd, os.X_OK) and os.access(ctr, os.X_OK)):
        pytest.skip("containerd/ctr not installed (apt-get install containerd)")
    tmp = Path(tempfile.mkdtemp(prefix="ks-containerd-"))
    sock = tmp / "containerd.sock"
    config = tmp / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp}/root"\n'
        f'state = "{tmp}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        '[ttrpc]\n  address = ""\n'
        '[debug]\n  address = ""\n'
        '[metrics]\n  address = ""\n'
    )
    before = _mounts(tmp)
    log = open(tmp / "containerd.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [containerd, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            ready = subprocess.run(
                [ctr, "--address", str(sock), "version"], capture_output=True, check=False
            )
            if ready.returncode == 0:
                break
            assert proc.poll() is None, (tmp / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.1)  # polling the socket for a condition, not a fixed wait
        yield Path(ctr), sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for mount in sorted(_mounts(tmp) - before, reverse=True):
            subprocess.run(["umount", "-l", mount.split()[1]], check=False)
        left = _mounts(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    assert left == before


def test_import_into_containerd(
    built: images.Images, private_containerd: tuple[Path, Path]
) -> None:
    ctr, sock = private_containerd
    refs = images.import_into_containerd(built, ctr, sock, namespace="k8s.io")
    assert refs == [built.pause.ref, built.lab.ref, built.operator.ref]
    listed = subprocess.run(
        [str(ctr), "--address", str(sock), "-n", "k8s.io", "images", "ls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for img in built.node_images():
        line = next(li for li in listed.splitlines() if li.startswith(img.ref + " "))
        assert img.manifest_digest in line
    # unpacked for the CRI: a snapshot exists for each image's top layer
    snaps = subprocess.run(
        [str(ctr), "--address", str(sock), "-n", "k8s.io", "snapshots", "ls"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(snaps.splitlines()) > 1
    # importing again is a no-op
    assert images.import_into_containerd(built, ctr, sock) == refs
