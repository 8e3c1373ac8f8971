"""A dropped socket mid-cell, and keepalive, through a real loopback TCP proxy.

The proxy (``kernelsession.client.testing.TcpProxy``) forwards real TCP between the
client and a real jupyter-server; ``cut()`` aborts both sides at once, as a broken
network path does, while the server and kernel keep running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kernelsession.client import JupyterWebSocketError
from kernelsession.client.testing import TcpProxy

LINES = 40


def _cell(progress: Path, go: Path | None = None, lines: int = LINES) -> str:
    """Prints numbered lines, appending each number to ``progress`` once printed.

    With ``go``, the kernel stops (silent) before line ``CUT_AT`` until that file
    exists: the test cuts the socket then, so no byte is in flight at the cut (bytes
    the server already wrote into a dying TCP connection are lost to any client).
    """
    wait = (
        f"    if i == {CUT_AT}:\n"
        f"        while not os.path.exists({str(go)!r}):\n"
        "            time.sleep(0.01)\n"
        if go is not None
        else ""
    )
    return (
        "import os, time\n"
        f"for i in range({lines}):\n" + wait + "    print(f'line {i}', flush=True)\n"
        f"    with open({str(progress)!r}, 'a') as f:\n"
        "        f.write(f'{i}\\n')\n"
        "    time.sleep(0.05)\n"
    )


async def _wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)  # polling the condition, bounded by the deadline


def _connections(server: Any) -> int:
    """Websocket connections to the server's kernels, as the server itself counts them
    (asked directly, not through the proxy)."""
    answer = httpx.get(
        f"{server.url}api/kernels",
        headers={"Authorization": f"token {server.token}"},
        timeout=5,
        trust_env=False,
    )
    answer.raise_for_status()
    return sum(int(k.get("connections") or 0) for k in answer.json())


def _printed(progress: Path) -> int:
    return len(progress.read_text().splitlines()) if progress.exists() else 0


async def _wait_lines(progress: Path, count: int, timeout: float = 30) -> None:
    """Wait (bounded) until the kernel has printed ``count`` lines."""
    await _wait_for(lambda: _printed(progress) >= count, f"{count} lines printed", timeout)


CUT_AT = 5
EXPECTED = "".join(f"line {i}\n" for i in range(LINES))


async def test_dropped_socket_reconnects_and_loses_nothing(lab, manager_for, tmp_path):
    progress, go = tmp_path / "progress", tmp_path / "go"
    proxy = TcpProxy(lab.port)
    async with proxy, manager_for(lab, base_url=proxy.url_for(lab)) as session:
        task = asyncio.create_task(session.run_python(_cell(progress, go), timeout=60))
        await _wait_lines(progress, CUT_AT)
        # The kernel now waits for `go`: once nothing moved for 0.3 s, all it printed arrived.
        await _wait_for(lambda: proxy.quiet_for() > 0.3, "the proxy quiet")
        proxy.hold()  # reconnect attempts wait while the kernel keeps printing
        assert proxy.cut() >= 1
        # Only once the server has seen the socket close does it keep the kernel's output
        # for the reconnect; a line it wrote into the dying connection before that is
        # lost to any client (CI once lost "line 5" so, on a loaded machine).
        await _wait_for(lambda: _connections(lab) == 0, "the server saw the cut")
        go.touch()
        await _wait_lines(progress, CUT_AT + 10)
        assert not task.done()
        proxy.release()
        out = await asyncio.wait_for(task, 60)
        assert out == EXPECTED  # every line exactly once, in order
        assert session.reconnects == 1
        assert await session.run_python("print('after')") == "after\n"
    assert proxy.cuts == 1


async def test_stream_survives_a_dropped_socket(lab, manager_for, tmp_path):
    progress, go = tmp_path / "progress", tmp_path / "go"
    texts: list[str] = []
    proxy = TcpProxy(lab.port)
    async with proxy, manager_for(lab, base_url=proxy.url_for(lab)) as session:
        async for chunk in session.stream(_cell(progress, go), timeout=60):
            texts.append(chunk.text)
            if chunk.text == f"line {CUT_AT - 1}\n":  # the kernel now waits for `go`
                proxy.hold()
                proxy.cut()
                go.touch()
                await _wait_lines(progress, CUT_AT + 8)
                proxy.release()
        assert session.reconnects == 1
    assert "".join(texts) == EXPECTED


async def test_reconnect_gives_up_after_its_deadline(lab, manager_for, tmp_path, report_figure):
    progress = tmp_path / "progress"
    async with TcpProxy(lab.port) as proxy:
        manager = manager_for(lab, base_url=proxy.url_for(lab), reconnect_timeout=1.0)
        async with manager as session:
            task = asyncio.create_task(session.run_python(_cell(progress, lines=400), timeout=60))
            await _wait_lines(progress, 2)
            proxy.hold()
            proxy.cut()
            t0 = time.perf_counter()
            with pytest.raises(JupyterWebSocketError) as excinfo:
                await asyncio.wait_for(task, 30)
            took = time.perf_counter() - t0
            report_figure("gave up reconnecting (1 s deadline) after", took, "s")
            assert "could not be reopened within 1 s" in str(excinfo.value)
            assert excinfo.value.to_dict()["close_code"] in (None, 1006)
            proxy.release()


async def test_reconnect_disabled_fails_at_once(lab, manager_for, tmp_path):
    progress = tmp_path / "progress"
    async with TcpProxy(lab.port) as proxy:
        manager = manager_for(lab, base_url=proxy.url_for(lab), reconnect_timeout=None)
        async with manager as session:
            task = asyncio.create_task(session.run_python(_cell(progress, lines=400), timeout=60))
            await _wait_lines(progress, 2)
            proxy.cut()
            with pytest.raises(JupyterWebSocketError):
                await asyncio.wait_for(task, 5)
            assert session.reconnects == 0


async def test_keepalive_pings_keep_a_silent_cell_alive(lab, manager_for):
    code = "import time\ntime.sleep(3)\nprint('woke')"
    # The proxy cuts connections that carry no bytes for 1 s, as load balancers do.
    async with TcpProxy(lab.port, idle_timeout=1.0) as proxy:
        url = proxy.url_for(lab)
        async with manager_for(
            lab, base_url=url, ping_interval=0.25, reconnect_timeout=None
        ) as session:
            assert await session.run_python(code, timeout=30) == "woke\n"
        assert proxy.websocket_idle_cuts == 0
        # The control: without pings the same silent cell loses its socket.
        async with manager_for(lab, base_url=url, ping_interval=None, reconnect_timeout=None) as s:
            with pytest.raises(JupyterWebSocketError):
                await s.run_python(code, timeout=30)
        assert proxy.websocket_idle_cuts == 1
