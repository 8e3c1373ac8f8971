"""Client section: run_python latency and big-output throughput, beside the floor.

Everything is measured in one run against jupyter-servers this benchmark
starts (and stops by PID):
* latency of ``print(1)`` on a stock server, samples interleaved round-robin so
  every client sees the same machine load: jupyter_client straight to the kernel
  over ZMQ (the ZMQ floor), a minimal raw-websocket client with TCP_QUICKACK (the
  floor for any client through jupyter-server: one v1 frame out, frames parsed
  only as far as needed to find the reply and idle status), a plain websockets
  client through the server (no TCP_QUICKACK), and our ``run_python``;
* throughput of 1 MB and 100 MB of stdout (server with the IOPub rate limit
  lifted): our ``run_python`` vs jupyter_client direct;
* 50 concurrent sessions from this one process (one kernel each): executions per
  second in total, against one session alone as the baseline, and this process's
  memory (resident set size).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psutil
from jupyter_client.asynchronous.client import AsyncKernelClient
from websockets.asyncio.client import ClientConnection, connect

from kernelsession.client import JupyterLabSession, JupyterLabSessionManager
from kernelsession.client.testing import LocalJupyterServer, QuickAckClientConnection

V1 = "v1.kernel.websocket.jupyter.org"

MB = 1_000_000
PRINT_BYTES = "import sys\nfor _ in range({n} // 1000):\n    sys.stdout.write('x' * 999 + '\\n')\n"


def _manager(server: LocalJupyterServer, *, quickack: bool = True) -> JupyterLabSessionManager:
    manager = JupyterLabSessionManager(base_url=server.url, token=server.token, username="bench")
    manager._quickack = quickack
    return manager


async def _kernel(server: LocalJupyterServer, method: str = "POST", kernel_id: str = "") -> str:
    """Start (POST) or delete (DELETE) a bare kernel through the REST API."""
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.request(
            method,
            f"{server.url}api/kernels{'/' + kernel_id if kernel_id else ''}",
            headers={"Authorization": f"token {server.token}"},
            json={"name": "python3"} if method == "POST" else None,
        )
        response.raise_for_status()
        if method != "POST":
            return kernel_id
        kernel_id = str(response.json()["id"])
    # Ready once it ran code (the server's websocket open waits for its first reply).
    ws = await _raw_open(server, kernel_id)
    try:
        assert await _raw_run(ws, "print(1)") == "1\n"
    finally:
        await ws.close()
    return kernel_id


async def _zmq_client(server: LocalJupyterServer, kernel_id: str) -> AsyncKernelClient:
    client = AsyncKernelClient()
    client.load_connection_file(str(server.runtime_dir / f"kernel-{kernel_id}.json"))
    client.start_channels()
    await client.wait_for_ready(timeout=30)
    return client


async def _zmq_run(client: AsyncKernelClient, code: str) -> str:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])

    reply = await client.execute_interactive(code, output_hook=hook, timeout=600)
    assert reply["content"]["status"] == "ok", reply
    return "".join(out)


async def _raw_open(server: LocalJupyterServer, kernel_id: str) -> ClientConnection:
    """A bare websocket to the kernel: token header, v1 subprotocol, TCP_QUICKACK."""
    url = server.url.replace("http://", "ws://") + f"api/kernels/{kernel_id}/channels"
    return await connect(
        f"{url}?session_id={uuid.uuid4().hex}",
        additional_headers={"Authorization": f"token {server.token}"},
        subprotocols=[V1],  # type: ignore[list-item]
        compression=None,
        max_size=None,
        proxy=None,
        create_connection=QuickAckClientConnection,
    )


def _v1_frame(channel: str, parts: list[bytes]) -> bytes:
    count = len(parts) + 2
    offsets = [8 * (1 + count), 8 * (1 + count) + len(channel)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"<{count + 1}Q", count, *offsets) + channel.encode() + b"".join(parts)


async def _raw_run(ws: ClientConnection, code: str) -> str:
    """The least a websocket client can do: send, then read until reply + idle."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "msg_type": "execute_request", "session": "raw", "username": "b",
              "version": "5.3", "date": ""}  # fmt: skip
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
               "allow_stdin": False, "stop_on_error": True}  # fmt: skip
    await ws.send(_v1_frame("shell", [json.dumps(header).encode(), b"{}", b"{}",
                                      json.dumps(content).encode()]))  # fmt: skip
    out: list[str] = []
    replied = idle = False
    needle = msg_id.encode()
    while not (replied and idle):
        frame = await ws.recv()
        assert isinstance(frame, bytes)
        if needle not in frame:
            continue
        (count,) = struct.unpack_from("<Q", frame)
        offsets = struct.unpack_from(f"<{count}Q", frame, 8)
        msg_type = json.loads(frame[offsets[1] : offsets[2]])["msg_type"]
        if msg_type == "execute_reply":
            replied = True
        elif msg_type == "status":
            idle = b'"idle"' in frame[offsets[4] :]
        elif msg_type == "stream":
            part = json.loads(frame[offsets[4] : offsets[5]])
            if part["name"] == "stdout":
                out.append(part["text"])
    return "".join(out)


async def _interleaved(
    clients: dict[str, Callable[[], Awaitable[str]]], n: int
) -> dict[str, list[float]]:
    """``n`` timed calls of each client, round-robin in rotating order, after a warm-up."""
    names = list(clients)
    for _ in range(min(10, n)):  # warm-up
        for name in names:
            assert await clients[name]() == "1\n"
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(n):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = clients[name]
            t0 = time.perf_counter()
            await fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[int(0.9 * (len(ordered) - 1))] * 1000


ZMQ = "jupyter_client ZMQ (ZMQ floor)"
RAW = "raw websocket + quickack (ws floor)"
PLAIN = "plain websockets (no quickack)"
OURS = "kernelsession run_python"


async def _latency(n: int) -> dict[str, tuple[float, float]]:
    """Each client drives a kernel of its own (no kernel has two listeners)."""
    with LocalJupyterServer() as server:
        async with (
            _manager(server) as ours,
            _manager(server, quickack=False) as plain,
        ):
            zmq_kernel, raw_kernel = await _kernel(server), await _kernel(server)
            zmq = await _zmq_client(server, zmq_kernel)
            raw = await _raw_open(server, raw_kernel)
            try:
                results = await _interleaved(
                    {
                        ZMQ: lambda: _zmq_run(zmq, "print(1)"),
                        RAW: lambda: _raw_run(raw, "print(1)"),
                        PLAIN: lambda: plain.run_python("print(1)"),
                        OURS: lambda: ours.run_python("print(1)"),
                    },
                    n,
                )
            finally:
                zmq.stop_channels()
                await raw.close()
                for kernel_id in (zmq_kernel, raw_kernel):
                    await _kernel(server, "DELETE", kernel_id)
    return {name: _stats(times) for name, times in results.items()}


async def _throughput(sizes: list[int]) -> list[tuple[int, float, float]]:
    rows = []
    with LocalJupyterServer(
        extra_args=[
            "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
            "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
        ]
    ) as server:
        async with _manager(server) as session:
            zmq = await _zmq_client(server, session.kernel_id)
            try:
                for size in sizes:
                    code = PRINT_BYTES.format(n=size)
                    t0 = time.perf_counter()
                    out = await session.run_python(code, timeout=600)
                    ours = time.perf_counter() - t0
                    assert len(out) == size, len(out)
                    t0 = time.perf_counter()
                    out = await _zmq_run(zmq, code)
                    direct = time.perf_counter() - t0
                    assert len(out) == size, len(out)
                    rows.append((size, size / MB / ours, size / MB / direct))
            finally:
                zmq.stop_channels()
    return rows


async def _concurrency(sessions: int, rounds: int) -> dict[str, float]:
    """Executions/s for one session alone, then for ``sessions`` at once; client RSS."""
    me = psutil.Process()
    rss_before = me.memory_info().rss
    with LocalJupyterServer() as server:

        async def run_rounds(session: JupyterLabSession, tag: int) -> None:
            for i in range(rounds):
                out = await session.run_python(f"print({tag} * 1000 + {i})")
                assert out == f"{tag * 1000 + i}\n", out

        async with _manager(server) as one:
            t0 = time.perf_counter()
            await run_rounds(one, 0)
            single = rounds / (time.perf_counter() - t0)
        managers = [_manager(server) for _ in range(sessions)]
        opened = await asyncio.gather(*(m.__aenter__() for m in managers))
        peak = me.memory_info().rss
        try:
            t0 = time.perf_counter()
            await asyncio.gather(*(run_rounds(s, i + 1) for i, s in enumerate(opened)))
            many = sessions * rounds / (time.perf_counter() - t0)
            peak = max(peak, me.memory_info().rss)
        finally:
            await asyncio.gather(*(m.__aexit__(None, None, None) for m in managers))
    return {
        "single": single,
        "many": many,
        "rss_mib": peak / 2**20,
        "rss_added_mib": (peak - rss_before) / 2**20,
    }


def main(args: argparse.Namespace) -> int:
    n = 30 if args.quick else args.iterations
    latency = asyncio.run(_latency(n))
    floor = latency[ZMQ][0]
    ws_floor = latency[RAW][0]
    print(f"print(1) round trip, {n} samples each, interleaved, stock jupyter-server:")
    print(f"  {'client':<38} {'median':>9} {'p90':>9} {'x ZMQ':>7} {'x ws':>6}")
    for name, (median, p90) in latency.items():
        print(
            f"  {name:<38} {median:7.2f}ms {p90:7.2f}ms "
            f"{median / floor:6.2f}x {median / ws_floor:5.2f}x"
        )
    sizes = [MB] if args.quick else [MB, 100 * MB]
    rows = asyncio.run(_throughput(sizes))
    print("stdout throughput (IOPub rate limit lifted):")
    print(f"  {'size':>7} {'run_python':>12} {'jupyter_client':>15} {'ratio':>6}")
    for size, ours, direct in rows:
        print(f"  {size // MB:>5}MB {ours:8.1f}MB/s {direct:11.1f}MB/s {ours / direct:6.2f}")
    sessions = 10 if args.quick else 50
    conc = asyncio.run(_concurrency(sessions, rounds=20))
    print(f"{sessions} concurrent sessions from one process, 20 print() each (one kernel each):")
    print(f"  one session alone          {conc['single']:8.1f} executions/s")
    print(
        f"  {sessions} sessions at once       {conc['many']:8.1f} executions/s "
        f"({conc['many'] / conc['single']:.2f}x one session)"
    )
    print(
        f"  client process peak RSS    {conc['rss_mib']:8.1f} MiB "
        f"({conc['rss_added_mib']:+.1f} MiB for the sessions)"
    )
    ratio = latency[OURS][0] / floor
    ws_ratio = latency[OURS][0] / ws_floor
    print(f"run_python median / raw-websocket floor = {ws_ratio:.2f} (target <= 1.10)")
    print(f"run_python median / ZMQ floor = {ratio:.2f} (target <= 1.25)")
    return 0 if ratio <= 1.25 else 1
