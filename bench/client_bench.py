"""Client section: run_python latency and big-output throughput, beside the floor.

Everything is measured in one run against jupyter-servers this benchmark
starts (and stops by PID):
* latency of ``print(1)`` on a stock server: jupyter_client straight to the
  kernel over ZMQ (the floor), a plain websockets client through the server
  (no TCP_QUICKACK), and our ``run_python``;
* throughput of 1 MB and 100 MB of stdout (server with the IOPub rate limit
  lifted): our ``run_python`` vs jupyter_client direct;
* 50 concurrent sessions from this one process (one kernel each): executions per
  second in total, against one session alone as the baseline, and this process's
  memory (resident set size).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import structlog
from jupyter_client.asynchronous.client import AsyncKernelClient

from kernelsession.client import JupyterLabSession, JupyterLabSessionManager
from kernelsession.client.testing import LocalJupyterServer

MB = 1_000_000
PRINT_BYTES = "import sys\nfor _ in range({n} // 1000):\n    sys.stdout.write('x' * 999 + '\\n')\n"


def _manager(server: LocalJupyterServer, *, quickack: bool = True) -> JupyterLabSessionManager:
    manager = JupyterLabSessionManager(base_url=server.url, token=server.token, username="bench")
    manager._quickack = quickack
    return manager


async def _zmq_client(server: LocalJupyterServer, session: JupyterLabSession) -> AsyncKernelClient:
    client = AsyncKernelClient()
    client.load_connection_file(str(server.runtime_dir / f"kernel-{session.kernel_id}.json"))
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


async def _samples(fn: Callable[[], Awaitable[str]], n: int) -> list[float]:
    for _ in range(min(10, n)):  # warm-up
        await fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[int(0.9 * (len(ordered) - 1))] * 1000


async def _latency(n: int) -> dict[str, tuple[float, float]]:
    with LocalJupyterServer() as server:
        async with (
            _manager(server) as ours,
            _manager(server, quickack=False) as plain,
        ):
            zmq = await _zmq_client(server, ours)
            try:
                results = {
                    "jupyter_client ZMQ (floor)": await _samples(
                        lambda: _zmq_run(zmq, "print(1)"), n
                    ),
                    "plain websockets (no quickack)": await _samples(
                        lambda: plain.run_python("print(1)"), n
                    ),
                    "kernelsession run_python": await _samples(
                        lambda: ours.run_python("print(1)"), n
                    ),
                }
            finally:
                zmq.stop_channels()
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
            zmq = await _zmq_client(server, session)
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
    # The client's per-session log lines would drown the tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = 30 if args.quick else args.iterations
    latency = asyncio.run(_latency(n))
    floor = latency["jupyter_client ZMQ (floor)"][0]
    print(f"print(1) round trip, {n} samples, stock jupyter-server:")
    print(f"  {'client':<34} {'median':>9} {'p90':>9} {'x floor':>8}")
    for name, (median, p90) in latency.items():
        print(f"  {name:<34} {median:7.2f}ms {p90:7.2f}ms {median / floor:7.2f}x")
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
        f"(+{conc['rss_added_mib']:.1f} MiB for the sessions)"
    )
    ratio = latency["kernelsession run_python"][0] / floor
    print(f"run_python median / floor = {ratio:.2f} (target <= 1.25)")
    return 0 if ratio <= 1.25 else 1
