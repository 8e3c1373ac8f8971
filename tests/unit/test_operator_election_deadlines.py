"""The leader stops acting at its renew deadline, whatever call hangs.

Against real sockets on loopback: a small Lease API (aiohttp.web, optimistic concurrency
on resourceVersion as the API server does) that can be told to stop answering (requests
hang, connections stay open), and a raw TCP server that never answers. No mocks: the
elector, its Kube client and the fence run as in the operator.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from helpers import serving
from kubernetes_asyncio import client

from kernelsession.client.kubeapi import DeadlineApiClient, KubernetesDeadlineError
from kernelsession.operator.config import Settings
from kernelsession.operator.election import LeaderElector
from kernelsession.operator.errors import NotLeading
from kernelsession.operator.kube import Kube, reset_on_close

LEASES = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"


class LeaseServer:
    """A Lease API on loopback; ``hang = True`` makes every request wait forever."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.hang = False
        self.pending = 0
        """Requests hanging now whose client has not gone away."""
        self.requests: list[tuple[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path))
        if self.hang:
            self.pending += 1
            try:
                await asyncio.Event().wait()  # never answers (cancelled on disconnect)
            finally:
                self.pending -= 1
        if request.path == LEASES and request.method == "POST":
            if self.lease is not None:
                return _status(409)
            return self._store(await request.json())
        if request.path == f"{LEASES}/l" and request.method == "GET":
            return _status(404) if self.lease is None else web.json_response(self.lease)
        if request.path == f"{LEASES}/l" and request.method == "PUT":
            body = await request.json()
            if self.lease is None:
                return _status(404)
            if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
                return _status(409)
            return self._store(body)
        return _status(404)

    def _store(self, body: dict[str, Any]) -> web.Response:
        self.version += 1
        body = {**body, "kind": "Lease", "apiVersion": "coordination.k8s.io/v1"}
        body["metadata"] = {**body["metadata"], "resourceVersion": str(self.version)}
        self.lease = body
        return web.json_response(body)


def _status(code: int) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return web.Response(status=code, text=json.dumps(body), content_type="application/json")


@pytest.fixture
async def lease_server() -> AsyncIterator[tuple[LeaseServer, str]]:
    server = LeaseServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    async with serving(app, handler_cancellation=True) as url:
        yield server, url


def _kube(host: str, timeout: float = 30.0) -> Kube:
    cfg = client.Configuration(host=host)
    api = DeadlineApiClient(cfg, request_timeout=timeout)
    reset_on_close(api)
    return Kube(api, identity="me")


SETTINGS = Settings(
    leader_election=True,
    leader_identity="me",
    lease_name="l",
    lease_namespace="ns",
    lease_duration=1.5,  # renew deadline 1.0 s, retry 0.3 s
)


class Transitions:
    def __init__(self, server: LeaseServer) -> None:
        self.server = server
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.pending_at_stop: int | None = None
        self.stopped_at = 0.0

    def on_started(self) -> None:
        self.started.set()

    def on_stopped(self) -> None:
        self.stopped_at = time.monotonic()
        self.pending_at_stop = self.server.pending
        self.stopped.set()


async def test_a_renewal_that_hangs_without_any_deadline_still_stops_the_leader_in_time(
    lease_server: tuple[LeaseServer, str],
) -> None:
    """The worst case: the Lease request itself has no deadline (call_timeout made huge);
    the leader steps down at its renew deadline while that request still hangs."""
    server, host = lease_server
    kube = _kube(host)
    seen = Transitions(server)
    elector = LeaderElector(kube, SETTINGS, seen.on_started, seen.on_stopped)
    elector.call_timeout = 3600.0
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(seen.started.wait(), 10)
        assert elector.may_act()
        server.hang = True
        hung_from = time.monotonic()
        await asyncio.wait_for(seen.stopped.wait(), 10)
        assert not elector.may_act()
        assert not elector.leading
        assert seen.pending_at_stop == 1  # the renewal was still hanging when it stopped
        print(f"stepped down {seen.stopped_at - hung_from:.2f}s after the API hung")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_after_the_renew_deadline_no_write_leaves_the_replica(
    lease_server: tuple[LeaseServer, str],
) -> None:
    server, host = lease_server
    kube = _kube(host)
    seen = Transitions(server)
    elector = LeaderElector(kube, SETTINGS, seen.on_started, seen.on_stopped)
    kube.fence = elector.may_act
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(seen.started.wait(), 10)
        server.hang = True
        await asyncio.wait_for(seen.stopped.wait(), 10)
        sent = len(server.requests)
        secret = {"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}}
        with pytest.raises(NotLeading):
            await kube.create(secret)
        with pytest.raises(NotLeading):
            await kube.post_event({"metadata": {"name": "x", "namespace": "ns"}}, "Normal", "R", "")
        assert [r for r in server.requests[sent:] if "/leases" not in r[1]] == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_a_frozen_leader_refuses_to_write_the_moment_it_runs_again(
    lease_server: tuple[LeaseServer, str],
) -> None:
    """A process stopped past its renew deadline (SIGSTOP, a long GC pause) must not write
    before any of its timers had a chance to run: the fence reads the clock."""
    server, host = lease_server
    kube = _kube(host)
    seen = Transitions(server)
    elector = LeaderElector(kube, SETTINGS, seen.on_started, seen.on_stopped)
    kube.fence = elector.may_act
    task = asyncio.create_task(elector.run())
    try:
        await asyncio.wait_for(seen.started.wait(), 10)
        assert elector.may_act()
        sent = len(server.requests)
        # The fault itself: the whole event loop frozen past the renew deadline.
        time.sleep(elector.renew_deadline + 0.2)
        assert elector.leading  # no timer has run yet...
        with pytest.raises(NotLeading):  # ...and still nothing is written
            await kube.create({"kind": "Secret", "metadata": {"name": "s", "namespace": "ns"}})
        assert [r for r in server.requests[sent:] if "/leases" not in r[1]] == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()


async def test_a_standby_takes_over_only_after_the_lease_went_unrenewed(
    lease_server: tuple[LeaseServer, str],
) -> None:
    """Two electors on one Lease: one leads; when it stops renewing (its task cancelled,
    nothing released: a crash), the other leads, after the old one's deadline passed."""
    server, host = lease_server
    kube_a, kube_b = _kube(host), _kube(host)
    a, b = Transitions(server), Transitions(server)
    ea = LeaderElector(kube_a, SETTINGS, a.on_started, a.on_stopped)
    eb = LeaderElector(
        kube_b,
        Settings(**{**SETTINGS.__dict__, "leader_identity": "other"}),
        b.on_started,
        b.on_stopped,
    )
    ta = asyncio.create_task(ea.run())
    try:
        await asyncio.wait_for(a.started.wait(), 10)
        tb = asyncio.create_task(eb.run())
        try:
            await asyncio.sleep(1.0)  # the fault window: both run, only one may lead
            assert ea.leading
            assert not eb.leading
            ta.cancel()
            await asyncio.gather(ta, return_exceptions=True)
            last_valid = ea._valid_until
            await asyncio.wait_for(b.started.wait(), 10)
            assert time.monotonic() >= last_valid  # never two leaders at once
            assert server.lease is not None
            assert server.lease["spec"]["holderIdentity"] == "other"
        finally:
            tb.cancel()
            await asyncio.gather(tb, return_exceptions=True)
    finally:
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        await kube_a.close()
        await kube_b.close()


async def test_every_request_has_a_deadline_and_a_cancelled_one_is_reset() -> None:
    """A server that accepts and never answers: the request ends at its deadline with a
    typed error naming the request, and the socket is reset (nothing left to deliver)."""
    outcomes: list[str] = []
    closed = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass
            outcomes.append("eof")
        except ConnectionResetError:
            outcomes.append("reset")
        finally:
            writer.close()
            closed.set()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    kube = _kube(f"http://127.0.0.1:{port}", timeout=0.5)
    try:
        with pytest.raises(KubernetesDeadlineError) as info:
            await kube.core.read_namespaced_secret("s", "ns")
        assert "GET /api/v1/namespaces/ns/secrets/s within 0.5 s" in str(info.value)
        await asyncio.wait_for(closed.wait(), 10)
        assert outcomes == ["reset"]
    finally:
        await kube.close()
        server.close()
        await server.wait_closed()
