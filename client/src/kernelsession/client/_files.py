"""Files in and out of a lab through its contents API (binary-safe, chunked for large files).

Uploads are ``PUT api/contents/PATH`` with base64 content; anything larger than
one chunk goes as the contents API's chunked upload (``chunk`` 1, 2, ... and -1
for the last), reading a local file one chunk at a time, so a large file is never
held in memory whole (nor a bytes object copied whole). Downloads stream the raw
bytes of ``files/PATH`` (the contents manager's raw file view) into one buffer.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from ._errors import JupyterNotFoundError, JupyterUnsupportedError, JupyterWebError
from ._login import LabHttp

__all__ = ["CHUNK_BYTES", "Contents", "iter_chunks"]

#: Raw bytes per upload request (base64 makes the request about 4/3 of this).
CHUNK_BYTES = 4 * 1024 * 1024

Data = bytes | bytearray | memoryview
Source = Data | str | os.PathLike[str]


def iter_chunks(source: Source, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of ``source`` (data, or a local file path) in pieces of ``chunk_bytes``.

    Always yields at least one piece (empty for empty data).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        if len(view) == 0:
            yield b""
            return
        for start in range(0, len(view), chunk_bytes):
            yield bytes(view[start : start + chunk_bytes])
        return
    with Path(source).open("rb") as f:
        piece = f.read(chunk_bytes)
        yield piece
        while piece:
            piece = f.read(chunk_bytes)
            if piece:
                yield piece


def _api_path(remote_path: str) -> str:
    return quote(remote_path.strip("/"))


class Contents:
    """Upload and download through one server's contents API (raises typed errors)."""

    def __init__(self, http: LabHttp, *, user: str, secrets: tuple[str, ...]) -> None:
        self._http = http
        self._user = user
        self._secrets = secrets
        self._supported: bool | None = None

    def _kwargs(self, started_at: datetime) -> dict[str, Any]:
        return {"user": self._user, "started_at": started_at, "secrets": self._secrets}

    async def _require(self, started_at: datetime) -> None:
        if self._supported is None:
            response = await self._http.request(
                "GET",
                "api/contents",
                params={"content": "0"},
                expect=(200, 403, 404, 405),
                what="checking for the contents API",
            )
            self._supported = response.status_code == 200
        if not self._supported:
            raise JupyterUnsupportedError(
                "this server has no contents API (e.g. Jupyter Kernel Gateway serves kernels "
                "only): files cannot be uploaded or downloaded",
                feature="contents API",
                **self._kwargs(started_at),
            )

    def _not_found(self, e: JupyterWebError, remote_path: str, what: str) -> JupyterNotFoundError:
        return JupyterNotFoundError(
            f"{what}: {remote_path!r} does not exist on the server",
            path=remote_path,
            method=e.method,
            url=e.url,
            status=e.status,
            body=e.body,
            user=self._user,
            started_at=e.started_at,
            secrets=self._secrets,
        )

    async def _parent_missing(self, remote_path: str) -> bool:
        """Whether ``remote_path``'s directory does not exist (the server says 500 then)."""
        parent = remote_path.strip("/").rpartition("/")[0]
        if not parent:
            return False
        try:
            response = await self._http.request(
                "GET",
                f"api/contents/{_api_path(parent)}",
                params={"content": "0"},
                expect=(200, 404),
                what="checking the remote directory",
            )
        except JupyterWebError:
            return False
        return response.status_code == 404

    async def upload(self, source: Source, remote_path: str) -> None:
        """Write ``source`` (bytes, or a local file path) to ``remote_path`` on the server.

        Raises:
            JupyterUnsupportedError: The server has no contents API.
            JupyterNotFoundError: The remote directory does not exist.
            JupyterWebError: Another HTTP failure.
            OSError: The local file cannot be read.
        """
        started_at = datetime.now(tz=UTC)
        if isinstance(source, bytes | bytearray | memoryview):
            size = memoryview(source).nbytes
        else:
            size = os.stat(source).st_size
        await self._require(started_at)
        path = _api_path(remote_path)
        chunked = size > CHUNK_BYTES
        sent = 0
        for number, piece in enumerate(iter_chunks(source), start=1):
            sent += len(piece)
            model: dict[str, Any] = {
                "type": "file",
                "format": "base64",
                "name": remote_path.rstrip("/").rsplit("/", 1)[-1],
                "path": remote_path.strip("/"),
            }
            if chunked:  # the contents API's chunked upload: 1, 2, ..., -1 for the last
                model["chunk"] = -1 if sent >= size else number
            # The JSON body is sent in three parts so the base64 text is never copied.
            head = json.dumps(model)[:-1].encode() + b', "content": "'
            encoded = base64.b64encode(piece)
            del piece
            length = len(head) + len(encoded) + 2

            async def body(head: bytes = head, encoded: bytes = encoded) -> AsyncIterator[bytes]:
                yield head
                yield encoded
                yield b'"}'

            try:
                await self._http.request(
                    "PUT",
                    f"api/contents/{path}",
                    content=body(),
                    headers={"Content-Type": "application/json", "Content-Length": str(length)},
                    expect=(200, 201),
                    what=f"uploading {remote_path!r}",
                )
            except JupyterWebError as e:
                if e.status == 404 or await self._parent_missing(remote_path):
                    raise self._not_found(e, remote_path, "uploading") from None
                raise
            del encoded

    async def download(self, remote_path: str) -> bytes:
        """The bytes of ``remote_path`` on the server.

        Raises:
            JupyterUnsupportedError: The server has no contents API.
            JupyterNotFoundError: No such file.
            JupyterWebError: Another HTTP failure.
        """
        started_at = datetime.now(tz=UTC)
        await self._require(started_at)
        api_path = f"files/{_api_path(remote_path)}"
        buffer = io.BytesIO()
        try:
            # The raw-file view refuses cookie-authenticated requests without a same-origin
            # Referer ("Blocking request from unknown origin"); a browser sends the lab's.
            headers = {"Referer": self._http.base_url}
            async with self._http.client.stream("GET", api_path, headers=headers) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    error = self._http.error(
                        f"downloading {remote_path!r} failed with HTTP {response.status_code}",
                        method="GET",
                        path=api_path,
                        started_at=started_at,
                        status=response.status_code,
                        body=body,
                    )
                    if response.status_code == 404:
                        raise self._not_found(error, remote_path, "downloading")
                    raise error
                async for piece in response.aiter_bytes():
                    buffer.write(piece)
        except httpx.HTTPError as e:
            raise self._http.error(
                f"downloading {remote_path!r} failed: {type(e).__name__}: {e}",
                method="GET",
                path=api_path,
                started_at=started_at,
            ) from None
        return buffer.getvalue()
