"""The hollow network on this host (root): a pod-range address answers through the
namespace with the right pod's token only, and teardown leaves links, routes and
namespaces as they were. No cluster needed; slow because it changes host networking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web

from kernelsession.localcluster.hollow import HollowLab, HollowNetwork, LabEntry
from kernelsession.localcluster.host import state

pytestmark = [pytest.mark.slow]

NET = HollowNetwork(pod_range="10.251.0.0/16", name="ks-hollow-test", host_link="ks-hollowt")


@pytest.fixture
async def served() -> AsyncIterator[HollowLab]:
    before = state.snapshot()
    NET.setup()
    lab = HollowLab()
    lab.add("10.251.0.5", LabEntry(pod="a", token="token-a"))
    lab.add("10.251.3.9", LabEntry(pod="b", token="token-b"))
    runner = web.AppRunner(lab.app())
    await runner.setup()
    try:
        await web.SockSite(runner, NET.listening_socket(8888)).start()
        yield lab
    finally:
        await runner.cleanup()
        NET.teardown()
    after = state.snapshot()
    # only what this network names: a cluster running meanwhile changes the host too
    mine = (NET.host_link, NET.name, "10.251.", "KS-HOLLOW")
    changes = [c for c in state.diff(before, after) if any(m in c for m in mine)]
    assert changes == []


async def test_pod_addresses_answer_with_their_own_token(served: HollowLab) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        ok = await http.get(
            "http://10.251.0.5:8888/api/status", headers={"Authorization": "token token-a"}
        )
        wrong = await http.get(
            "http://10.251.0.5:8888/api/status", headers={"Authorization": "token token-b"}
        )
        other = await http.get(
            "http://10.251.3.9:8888/api/kernels", headers={"Authorization": "token token-b"}
        )
        nobody = await http.get(
            "http://10.251.7.7:8888/api/status", headers={"Authorization": "token token-a"}
        )
    assert ok.status_code == 200
    assert wrong.status_code == 403
    assert other.status_code == 200
    assert nobody.status_code == 404
