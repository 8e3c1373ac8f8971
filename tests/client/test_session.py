"""JupyterLabSessionManager / JupyterLabSession against real jupyter-server processes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from kernelsession.client import (
    CodeContext,
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterKernelDiedError,
    JupyterLabSession,
    JupyterOutputLostError,
    JupyterTimeoutError,
    JupyterWebError,
    JupyterWebSocketError,
)
from kernelsession.client._protocol import V1_SUBPROTOCOL

MB = 1_000_000
# Prints exactly n bytes of stdout in 1000-byte lines (999 x's and a newline).
PRINT_BYTES = "import sys\nfor _ in range({n} // 1000):\n    sys.stdout.write('x' * 999 + '\\n')\n"


async def test_login_uses_cookies_and_xsrf(lab, manager_for):
    manager = manager_for(lab)
    async with manager as session:
        assert manager._http.xsrf, "login page set no _xsrf cookie"
        names = {c.name for c in manager._http.client.cookies.jar}
        assert "_xsrf" in names
        assert len(names) >= 2, f"no login cookie among {names}"
        # No token header anywhere: authenticated by cookie only.
        assert "authorization" not in {k.lower() for k in manager._http.client.headers}
        assert await session.run_python("print('hi')") == "hi\n"
    for phase, value in manager.timings.as_dict().items():
        assert value is not None, phase
        assert value >= 0, phase


async def test_non_root_base_url(lab_subpath, manager_for, lab_sessions):
    assert lab_subpath.url.endswith("/user/alice/")
    async with manager_for(lab_subpath) as session:
        assert await session.run_python("print(6 * 7)") == "42\n"
        assert len(await lab_sessions(lab_subpath)) == 1
    assert await lab_sessions(lab_subpath) == []


async def test_binary_subprotocol_negotiated(session: JupyterLabSession):
    assert session.subprotocol == V1_SUBPROTOCOL


async def test_json_fallback(lab_legacy, manager_for):
    async with manager_for(lab_legacy) as session:
        assert session.subprotocol is None
        assert await session.run_python("print('legacy')") == "legacy\n"
        result = await session.execute("import sys; print('o'); print('e', file=sys.stderr); 7")
        assert (result.stdout, result.stderr) == ("o\n", "e\n")
        assert result.result == {"text/plain": "7"}
        with pytest.raises(JupyterExecutionError) as excinfo:
            await session.run_python("raise KeyError('k')")
        assert excinfo.value.ename == "KeyError"


async def test_stdout_only(session: JupyterLabSession):
    code = (
        "import sys\n"
        "from IPython.display import display\n"
        "print('one')\n"
        "print('err', file=sys.stderr)\n"
        "display({'a': 1}, raw=True)\n"
        "print('two')\n"
        "'expression value'\n"
    )
    assert await session.run_python(code) == "one\ntwo\n"
    result = await session.execute(code)
    assert result.stdout == "one\ntwo\n"
    assert result.stderr == "err\n"
    assert result.result == {"text/plain": "'expression value'"}
    assert len(result.outputs) == 2  # display_data + execute_result
    assert result.status == "ok"
    assert result.execution_count is not None


async def test_stdout_order_preserved(session: JupyterLabSession):
    code = (
        "import sys, time\n"
        "for i in range(300):\n"
        "    print(i)\n"
        "    if i % 50 == 0:\n"
        "        sys.stdout.flush(); print('noise', file=sys.stderr); time.sleep(0.01)\n"
    )
    out = await session.run_python(code)
    assert out == "".join(f"{i}\n" for i in range(300))


async def test_empty_output(session: JupyterLabSession):
    assert await session.run_python("x = 1") == ""


async def test_one_megabyte_on_stock_server(session: JupyterLabSession):
    out = await session.run_python(PRINT_BYTES.format(n=MB), timeout=60)
    assert len(out) == MB
    assert out == ("x" * 999 + "\n") * 1000


@pytest.mark.slow
async def test_hundred_megabytes(lab_unlimited, manager_for, report_figure):
    async with manager_for(lab_unlimited) as session:
        t0 = time.perf_counter()
        out = await session.run_python(PRINT_BYTES.format(n=100 * MB), timeout=300)
        elapsed = time.perf_counter() - t0
        assert len(out) == 100 * MB
        assert out.count("\n") == 100_000
        assert set(out) == {"x", "\n"}
        t1 = time.perf_counter()
        small = await session.run_python(PRINT_BYTES.format(n=10 * MB), timeout=300)
        small_elapsed = time.perf_counter() - t1
        assert len(small) == 10 * MB
        # reported, not asserted (linear, not quadratic: about 10x the time of 10 MB)
        report_figure("run_python of 100 MB of stdout", elapsed, "s")
        report_figure("run_python of 10 MB of stdout", small_elapsed, "s")


async def test_rate_limited_output_raises_not_truncates(session: JupyterLabSession):
    with pytest.raises(JupyterOutputLostError) as excinfo:
        await session.run_python(PRINT_BYTES.format(n=20 * MB), timeout=120)
    error = excinfo.value
    assert "IOPub data rate exceeded" in error.notice
    assert len(error.partial_stdout) < 20 * MB
    assert "dropped" in str(error)
    # The session still works afterwards.
    assert await session.run_python("print('still here')") == "still here\n"


async def test_execution_error(session: JupyterLabSession):
    context = CodeContext(notebook="nb.ipynb", cell="c1", cell_number="3")
    with pytest.raises(JupyterExecutionError) as excinfo:
        await session.run_python("def f():\n    return 1 / 0\nf()", context)
    error = excinfo.value
    assert error.ename == "ZeroDivisionError"
    assert error.evalue == "division by zero"
    assert error.status == "error"
    assert error.code is not None
    assert "1 / 0" in error.code
    assert error.context == context
    assert error.user == "alice"
    assert error.error is not None
    assert "\x1b[" in error.error
    text = str(error)
    assert "\x1b" not in text
    assert "ZeroDivisionError" in text
    assert "notebook=nb.ipynb" in text
    assert "1 / 0" in text
    assert error.failed_at >= error.started_at


async def test_timeout_interrupts_and_session_is_reused(session: JupyterLabSession, report_figure):
    await session.run_python("counter = 0")
    t0 = time.perf_counter()
    with pytest.raises(JupyterExecutionTimeoutError) as excinfo:
        await session.run_python(
            "import time\nprint('started', flush=True)\ntime.sleep(60)\ncounter = 99",
            timeout=timedelta(seconds=1),
        )
    report_figure("a 1 s execution timeout raised after", time.perf_counter() - t0, "s")
    assert excinfo.value.interrupted
    assert excinfo.value.timeout == 1
    # The next code runs at once, in the same kernel, and gets only its own output.
    assert await session.run_python("counter += 1\nprint(counter)", timeout=10) == "1\n"


async def test_concurrent_requests_on_one_session(session: JupyterLabSession):
    outs = await asyncio.gather(
        *(session.run_python(f"print('req-{i}' * 3)", timeout=30) for i in range(10))
    )
    assert outs == [f"req-{i}" * 3 + "\n" for i in range(10)]


async def test_kernel_death_detected_fast(lab, manager_for, report_figure):
    async with manager_for(lab) as session:
        t0 = time.perf_counter()
        # Detected, not timed out: the execution's own timeout would raise another error.
        with pytest.raises(JupyterKernelDiedError) as excinfo:
            await session.run_python(
                "import os, time\nprint('bye', flush=True)\ntime.sleep(0.2)\nos._exit(1)",
                timeout=120,
            )
        report_figure("kernel death detected after", time.perf_counter() - t0, "s")
        assert excinfo.value.execution_state in {"restarting", "dead"}
        # The restarted kernel is reachable again through a fresh websocket.
        assert await session.run_python("print('reborn')", timeout=60) == "reborn\n"


async def test_server_killed_mid_execution(doomed_lab, manager_for, report_figure):
    # A reconnect deadline far past the wait below: the error must come from seeing the
    # server gone, not from giving up on reconnecting.
    async with manager_for(doomed_lab, reconnect_timeout=600) as session:
        chunks = session.stream("import time\nprint('go', flush=True)\ntime.sleep(120)")
        # the execution has started: its first output arrived
        first = await asyncio.wait_for(anext(chunks), 60)
        assert (first.name, first.text) == ("stdout", "go\n")
        t0 = time.perf_counter()
        await asyncio.to_thread(doomed_lab.kill)
        with pytest.raises(JupyterWebSocketError) as excinfo:
            await asyncio.wait_for(anext(chunks), 30)
        took = time.perf_counter() - t0
        report_figure("server killed: the error raised after (kill included)", took, "s")
        assert excinfo.value.code in (None, 1006, 1011)
        assert "the server or the kernel is gone" in str(excinfo.value)
        with pytest.raises(JupyterWebSocketError):
            await session.run_python("print(1)")


async def test_wrong_token_is_web_error_and_redacted(lab, manager_for):
    wrong = "wrong-token-" + lab.token[:8] + "deadbeef"
    with pytest.raises(JupyterWebError) as excinfo:
        async with manager_for(lab, token=wrong):
            pass
    error = excinfo.value
    assert error.status in (401, 403)
    assert error.method == "POST"
    assert error.url.endswith("/login")
    assert wrong not in str(error)
    assert wrong not in repr(error.args)
    assert lab.token not in str(error)


async def test_open_timeout_deletes_session(lab, manager_for, lab_sessions):
    before = {s["id"] for s in await lab_sessions(lab)}
    with pytest.raises(JupyterTimeoutError):
        async with manager_for(lab, websocket_open_timeout=timedelta(microseconds=1)):
            pass
    after = {s["id"] for s in await lab_sessions(lab)}
    assert after == before


async def test_message_too_big(lab, manager_for, lab_sessions):
    before = {s["id"] for s in await lab_sessions(lab)}
    # Too small even for the kernel's first reply: opening fails, session deleted.
    with pytest.raises(JupyterWebSocketError) as excinfo:
        async with manager_for(lab, max_websocket_size=256):
            pass
    assert excinfo.value.code == 1009
    assert "max_websocket_size" in str(excinfo.value)
    assert {s["id"] for s in await lab_sessions(lab)} == before
    # Big enough to open, too small for one large output message.
    async with manager_for(lab, max_websocket_size=64_000) as session:
        assert await session.run_python("print('small')") == "small\n"
        with pytest.raises(JupyterWebSocketError) as excinfo:
            await session.run_python("print('y' * 500_000)")
        assert excinfo.value.code == 1009
        assert "larger than max_websocket_size (64000 bytes)" in str(excinfo.value)


async def test_twenty_concurrent_sessions(lab, manager_for, lab_sessions):
    async def one(i: int) -> str:
        async with manager_for(lab, username=f"user{i}") as session:
            outs = [await session.run_python(f"print({i} * {j})") for j in range(5)]
            return "".join(outs)

    before = len(await lab_sessions(lab))
    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 180)
    assert results == ["".join(f"{i * j}\n" for j in range(5)) for i in range(20)]
    assert len(await lab_sessions(lab)) == before


# The long silent cell kept alive by websocket pings: test_reconnect.py (keepalive test).
