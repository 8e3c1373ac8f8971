"""Upload and download through the contents API of a real jupyter-server."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import pytest

from kernelsession.client import JupyterLabSession, JupyterNotFoundError
from kernelsession.client.testing import LocalJupyterServer

MB = 1024 * 1024


async def test_binary_round_trip(session: JupyterLabSession, lab: LocalJupyterServer):
    data = bytes(range(256)) * 4 + b"\r\n\x00\xff"
    await session.upload(data, "every-byte.bin")
    assert (lab.root_dir / "every-byte.bin").read_bytes() == data
    assert await session.download("every-byte.bin") == data
    await session.upload(b"", "empty.bin")
    assert await session.download("empty.bin") == b""
    # The kernel sees the same file (its working directory is the server root here).
    out = await session.run_python("print(len(open('every-byte.bin', 'rb').read()))")
    assert out == f"{len(data)}\n"


async def test_upload_from_path_and_subdirectory(session, lab, tmp_path):
    (lab.root_dir / "sub").mkdir(exist_ok=True)
    local = tmp_path / "notes.txt"
    local.write_text("héllo\n")
    await session.upload(local, "sub/notes.txt")
    await session.upload(str(local), "/sub/notes2.txt")
    assert await session.download("sub/notes.txt") == "héllo\n".encode()
    assert (lab.root_dir / "sub" / "notes2.txt").read_text() == "héllo\n"


async def test_missing_paths_are_typed_errors(session: JupyterLabSession, lab):
    with pytest.raises(JupyterNotFoundError) as excinfo:
        await session.download("no/such/file.bin")
    assert excinfo.value.path == "no/such/file.bin"
    assert excinfo.value.status == 404
    assert lab.token not in str(excinfo.value.to_dict())
    with pytest.raises(JupyterNotFoundError):
        await session.upload(b"x", "missing-dir/file.bin")


async def test_fifty_megabytes_chunked_without_holding_it_twice(session, lab, tmp_path):
    size = 50 * MB + 12345
    local = tmp_path / "big.bin"
    with local.open("wb") as f:
        for _ in range(size // MB):
            f.write(os.urandom(MB))
        f.write(os.urandom(size % MB))
    digest = hashlib.sha256(local.read_bytes()).hexdigest()
    tracemalloc.start()
    try:
        await session.upload(local, "big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Chunked from disk: the peak is a few chunks' worth, not the file (let alone twice).
    assert peak < size / 2, f"upload peak {peak / MB:.1f} MiB for a {size / MB:.1f} MiB file"
    remote = lab.root_dir / "big.bin"
    assert remote.stat().st_size == size
    assert hashlib.sha256(remote.read_bytes()).hexdigest() == digest
    data = await session.download("big.bin")
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == digest
