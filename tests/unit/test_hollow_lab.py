"""The hollow lab's token check and activity setting (a real aiohttp server on loopback:
127.0.0.1 and 127.0.0.2 stand for two pods' IPs)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web

from kernelsession.localcluster.hollow import HollowLab, LabEntry, entry_from_pod
from kernelsession.localcluster.hollow.kwokconfig import node_cidrs

A, B = "127.0.0.1", "127.0.0.2"


@pytest.fixture
async def lab() -> AsyncIterator[tuple[HollowLab, dict[str, str]]]:
    hollow = HollowLab()
    hollow.add(A, LabEntry(pod="a", token="token-a", base="/labs/a/"))
    hollow.add(B, LabEntry(pod="b", token="token-b"))
    runner = web.AppRunner(hollow.app())
    await runner.setup()
    urls = {}
    for ip in (A, B):
        site = web.TCPSite(runner, ip, 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        urls[ip] = f"http://{ip}:{port}"
    yield hollow, urls
    await runner.cleanup()


async def _get(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    async with httpx.AsyncClient() as http:
        return await http.get(url, headers=headers)


async def test_own_token_answers(lab: tuple[HollowLab, dict[str, str]]) -> None:
    _, urls = lab
    r = await _get(urls[A] + "/labs/a/api/status", "token-a")
    assert r.status_code == 200
    assert r.json()["kernels"] == 1
    r = await _get(urls[B] + "/api/kernels?no_track_activity=1", "token-b")
    assert r.status_code == 200
    assert r.json()[0]["execution_state"] == "idle"


async def test_other_pods_token_or_none_refused(lab: tuple[HollowLab, dict[str, str]]) -> None:
    hollow, urls = lab
    assert (await _get(urls[A] + "/labs/a/api/status", "token-b")).status_code == 403
    assert (await _get(urls[A] + "/labs/a/api/status", None)).status_code == 403
    assert (await _get(urls[B] + "/api/sessions", "token-a")).status_code == 403
    assert (await _get(urls[B] + "/api/sessions", "")).status_code == 403
    assert hollow.refused == 4
    # outside the lab's base path: not found, as jupyter-server with base_url
    assert (await _get(urls[A] + "/api/status", "token-a")).status_code == 404


async def test_activity_set_by_bench(lab: tuple[HollowLab, dict[str, str]]) -> None:
    hollow, urls = lab
    past = datetime(2026, 1, 1, tzinfo=UTC)
    assert hollow.set_activity(ip=B, execution_state="busy", last_activity=past) == 1
    kernels = (await _get(urls[B] + "/api/kernels?no_track_activity=1", "token-b")).json()
    assert kernels[0]["execution_state"] == "busy"
    assert kernels[0]["last_activity"] == "2026-01-01T00:00:00Z"
    # A untouched; then all at once
    status = (await _get(urls[A] + "/labs/a/api/status", "token-a")).json()
    assert status["last_activity"] != "2026-01-01T00:00:00Z"
    assert hollow.set_activity(last_activity=past, execution_state="idle") == 2
    status = (await _get(urls[A] + "/labs/a/api/status", "token-a")).json()
    assert status["last_activity"] == "2026-01-01T00:00:00Z"
    # no_track_activity reads do not count as activity; plain reads do
    await _get(urls[B] + "/api/kernels", "token-b")
    assert hollow.labs[B].last_activity > past


async def test_control_site_sets_activity() -> None:
    hollow = HollowLab()
    hollow.add(A, LabEntry(pod="a", token="t"))
    runner = web.AppRunner(hollow.control_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"http://127.0.0.1:{port}/hollow/activity", json={"execution_state": "busy"}
            )
            assert r.json() == {"updated": 1}
            stats = (await http.get(f"http://127.0.0.1:{port}/hollow/stats")).json()
    finally:
        await runner.cleanup()
    assert hollow.labs[A].execution_state == "busy"
    assert stats["labs"] == 1


def test_entry_from_pod_reads_token_ref_and_base() -> None:
    pod = {
        "metadata": {"name": "s1-lab"},
        "spec": {
            "containers": [
                {
                    "args": ["server", "--ServerApp.base_url=/labs/s1"],
                    "env": [
                        {
                            "name": "JUPYTER_TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "s1-token", "key": "token"}},
                        }
                    ],
                }
            ]
        },
    }
    entry = entry_from_pod(pod, {"token": "sekret"})
    assert entry is not None
    assert entry.token == "sekret"
    assert entry.base == "/labs/s1/"
    assert entry_from_pod({"spec": {"containers": [{"name": "plain"}]}}, {}) is None


def test_node_cidrs() -> None:
    assert node_cidrs("10.250.0.0/16", 2) == ["10.250.0.0/22", "10.250.4.0/22"]
    with pytest.raises(ValueError, match="fewer than"):
        node_cidrs("10.250.0.0/21", 3)


def test_kwok_configuration_sets_what_a_file_gets_no_default_for() -> None:
    from kernelsession.localcluster.hollow import kwokconfig

    options = kwokconfig.configuration("10.250.0.0/16")["options"]
    for key in ("podPlayStageParallelism", "nodePlayStageParallelism", "nodeLeaseParallelism"):
        assert options[key] > 0  # KWOK v0.8.0 exits: "playStageParallelism must be > 0"
    assert options["cidr"] == "10.250.0.0/16"


async def test_labs_started_busy_report_a_busy_kernel_until_told_otherwise() -> None:
    hollow = HollowLab(start_busy=True)
    hollow.add(A, LabEntry(pod="a", token="token-a"))
    assert hollow.labs[A].kernels()[0]["execution_state"] == "busy"
    assert hollow.set_activity(execution_state="idle") == 1
    assert hollow.labs[A].kernels()[0]["execution_state"] == "idle"
    plain = HollowLab()
    plain.add(B, LabEntry(pod="b", token="token-b"))
    assert plain.labs[B].kernels()[0]["execution_state"] == "idle"
