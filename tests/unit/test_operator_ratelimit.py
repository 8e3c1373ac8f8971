"""The operator's API rate limit (KERNELSESSION_API_QPS): the token bucket on a given
clock, and the limit in front of a real API client talking to a loopback server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from helpers import serving
from kubernetes_asyncio import client

from kernelsession.operator.config import from_env
from kernelsession.operator.errors import NotLeading
from kernelsession.operator.ratelimit import TokenBucket, limit


class Clock:
    """Time that moves only when the bucket sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_burst_at_once_then_qps() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 3, clock=clock)
    waits = [bucket.reserve() for _ in range(6)]
    assert waits == pytest.approx([0, 0, 0, 0.1, 0.2, 0.3])


def test_an_idle_bucket_fills_up_to_its_burst_only() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0, 0, 0]
    clock.now += 60  # a minute of nothing: three at once again, not 600
    assert [bucket.reserve() for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])


async def test_acquire_sleeps_its_reservation() -> None:
    clock = Clock()
    bucket = TokenBucket(50, 1, clock=clock, sleep=clock.sleep)
    for _ in range(51):
        await bucket.acquire()
    assert clock.now - 1000.0 == pytest.approx(1.0)  # 51 requests: one second at 50/s
    assert len(clock.slept) == 50


def test_no_limit() -> None:
    bucket = TokenBucket(0, 1)
    assert all(bucket.reserve() == 0 for _ in range(1000))


def test_settings() -> None:
    assert from_env({}).api_qps == 50
    assert from_env({}).api_burst == 100
    assert from_env({"KERNELSESSION_API_QPS": "0"}).api_qps == 0
    assert from_env({"KERNELSESSION_API_QPS": "20", "KERNELSESSION_API_BURST": "5"}).api_burst == 5


@pytest.fixture
async def api_server() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    async with serving(app) as url:
        yield url, seen


async def test_requests_wait_their_turn_the_lease_does_not(
    api_server: tuple[str, list[str]],
) -> None:
    url, seen = api_server
    api = client.ApiClient(client.Configuration(host=url))
    clock = Clock()
    limit(api, TokenBucket(10, 1, clock=clock, sleep=clock.sleep))
    core = client.CoreV1Api(api)
    leases = client.CoordinationV1Api(api)
    try:
        await core.delete_namespaced_pod("a", "labs")
        await core.delete_namespaced_pod("b", "labs")
        await leases.read_namespaced_lease("op", "kernelsession-system")
        await core.delete_namespaced_pod("c", "labs")
    finally:
        await api.close()
    assert clock.slept == pytest.approx([0.1, 0.1])  # b and c waited, the Lease did not
    assert seen[2] == "GET /apis/coordination.k8s.io/v1/namespaces/kernelsession-system/leases/op"
    assert len(seen) == 4


async def test_a_write_that_waited_asks_the_fence_again(
    api_server: tuple[str, list[str]],
) -> None:
    url, seen = api_server
    api = client.ApiClient(client.Configuration(host=url))
    clock = Clock()
    leading = [True]

    def fence() -> None:
        if not leading[0]:
            raise NotLeading("stepped down")

    limit(api, TokenBucket(10, 1, clock=clock, sleep=clock.sleep), fence)
    core = client.CoreV1Api(api)
    try:
        await core.delete_namespaced_pod("a", "labs")
        leading[0] = False  # stepped down while the next write waits for its slot
        with pytest.raises(NotLeading):
            await core.delete_namespaced_pod("b", "labs")
        await core.read_namespaced_pod("a", "labs")  # a read is no write: it goes
    finally:
        await api.close()
    assert seen == ["DELETE /api/v1/namespaces/labs/pods/a", "GET /api/v1/namespaces/labs/pods/a"]
