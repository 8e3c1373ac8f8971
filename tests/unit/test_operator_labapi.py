"""The operator's lab probe is bounded, against real HTTP servers on loopback.

A lab that trickles its answer one byte at a time, and one that sends an endless body,
are real TCP servers here (asyncio streams on 127.0.0.1): the probe gives up after its
total deadline, reads at most its cap, and a healthy lab probed at the same time on the
same client still answers. The same bounds on a real lab pod: tests/operator/test_operations.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from kernelsession.operator import labapi

STATUS = json.dumps({"started": "2026-12-04T10:00:00Z", "last_activity": None}).encode()
KERNELS = json.dumps([{"execution_state": "idle", "connections": 0}]).encode()


@dataclass
class Server:
    port: int
    sent: int = 0
    """Body bytes written before the client went away."""
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


Handler = Callable[[Server, asyncio.StreamWriter, str], Awaitable[None]]


@contextlib.asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[Server]:
    server_state = Server(0)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                await handler(server_state, writer, path)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            server_state.closed.set()
            writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


async def healthy(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
    body = STATUS if path.startswith("/api/status") else KERNELS
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()


async def trickle(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
    """A valid answer, one byte every 50 ms (each read well within any read timeout)."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(STATUS))
    for byte in STATUS:
        writer.write(bytes([byte]))
        await writer.drain()
        state.sent += 1
        await asyncio.sleep(0.05)


async def endless(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
    """A 200 with no length that never ends (up to 1 GiB), as fast as the client reads."""
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[")
    chunk = b"0," * 32768
    while state.sent < 1 << 30:
        writer.write(chunk)
        await writer.drain()
        state.sent += len(chunk)


async def declared_huge(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n[")
    await writer.drain()
    await asyncio.sleep(30)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        yield client


async def test_a_healthy_lab_answers(http: httpx.AsyncClient) -> None:
    async with _serve(healthy) as lab:
        found = await labapi.activity(http, lab.url(), "t")
        assert found.kernels[0].execution_state == "idle"


async def test_a_trickling_lab_is_given_up_at_the_deadline_while_others_answer(
    http: httpx.AsyncClient,
) -> None:
    async with _serve(trickle) as slow, _serve(healthy) as good:
        started = time.monotonic()
        probe = asyncio.create_task(labapi.activity(http, slow.url(), "t", deadline=1.0))
        # another session's lab, probed meanwhile on the same client, answers
        answered = await labapi.activity(http, good.url(), "t")
        assert answered.kernels
        with pytest.raises(labapi.LabUnreachable, match="no complete answer"):
            await probe
        print(f"trickling lab given up after {time.monotonic() - started:.2f}s (deadline 1s)")
        # it had not sent its whole answer: the deadline, not the lab, ended the probe
        assert slow.sent < len(STATUS)


async def test_an_endless_body_is_cut_at_the_cap_and_memory_stays_flat(
    http: httpx.AsyncClient,
) -> None:
    async with _serve(endless) as huge:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(5):
            with pytest.raises(labapi.LabUnreachable, match="larger than"):
                await labapi.activity(http, huge.url(), "t", max_bytes=1 << 20)
        await asyncio.wait_for(huge.closed.wait(), timeout=10)
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(f"server sent {huge.sent} bytes over 5 probes; peak RSS grew {grown_kib} KiB")
        assert huge.sent < 64 << 20  # far from the 1 GiB it would send
        assert grown_kib < 64 << 10


async def test_a_declared_huge_body_is_not_read(http: httpx.AsyncClient) -> None:
    async with _serve(declared_huge) as huge:
        with pytest.raises(labapi.LabUnreachable, match="limit"):
            await labapi.activity(http, huge.url(), "t", deadline=5.0)


async def test_a_path_that_hangs_at_first_is_reached_by_a_new_attempt(
    http: httpx.AsyncClient,
) -> None:
    """Like a Service before kube-proxy's rules: the first connection hangs; the check
    gives that attempt up and a new connection gets the answer."""
    connections: list[int] = []

    async def hangs_first(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
        connections.append(id(writer))
        if len(set(connections)) == 1:
            await asyncio.sleep(30)  # never answers this connection
        await healthy(state, writer, path)

    async with _serve(hangs_first) as lab:
        await labapi.reaches(http, lab.url(), "t", attempt=0.2, within=5.0)
        assert len(set(connections)) == 2


async def silent(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
    state.sent += 1  # attempts seen
    await asyncio.sleep(30)


async def test_a_path_never_reached_fails_after_its_attempts(http: httpx.AsyncClient) -> None:
    async with _serve(silent) as lab, _serve(healthy) as good:
        with pytest.raises(labapi.LabUnreachable, match=r"within 0\.1s"):
            await labapi.reaches(http, lab.url(), "t", attempt=0.1, within=0.5)
        assert lab.sent > 1  # each attempt a new connection
        await labapi.reaches(http, good.url(), "t", attempt=0.1, within=0.5)


async def test_a_refused_token_fails_at_once(http: httpx.AsyncClient) -> None:
    async def refuses(state: Server, writer: asyncio.StreamWriter, path: str) -> None:
        state.sent += 1
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with _serve(refuses) as lab:
        with pytest.raises(labapi.LabUnreachable) as refused:
            await labapi.reaches(http, lab.url(), "t", attempt=0.1, within=5.0)
        assert refused.value.token_refused
        assert lab.sent == 1
