"""The operator's API client consults no environment per request (no netrc, no proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web
from helpers import serving
from kubernetes_asyncio import client

from kernelsession.client.kubeapi import DeadlineApiClient
from kernelsession.operator.kube import no_environment_lookups

VERSION = {
    "major": "1",
    "minor": "35",
    "gitVersion": "v1.35.4",
    "gitCommit": "0",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.26",
    "compiler": "gc",
    "platform": "linux/amd64",
}


async def _authorization_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, off: bool) -> str:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    seen: list[str] = []

    async def version(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response(VERSION)

    app = web.Application()
    app.router.add_get("/version/", version)
    async with serving(app) as url:
        api = DeadlineApiClient(client.Configuration(host=url))
        try:
            if off:
                no_environment_lookups(api)
            await client.VersionApi(api).get_code()
        finally:
            await api.close()
    return seen[0]


async def test_a_netrc_entry_is_not_read_for_api_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kubernetes_asyncio's own session reads it (trust_env), in a thread, every request
    assert (await _authorization_seen(tmp_path, monkeypatch, off=False)).startswith("Basic ")
    assert await _authorization_seen(tmp_path, monkeypatch, off=True) == ""
