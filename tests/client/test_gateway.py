"""The same manager against a real Jupyter Kernel Gateway 3 (no login page, kernels only)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kernelsession.client import (
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterUnsupportedError,
    JupyterWebError,
    OutputChunk,
)
from kernelsession.client._protocol import V1_SUBPROTOCOL
from kernelsession.client.testing import LocalJupyterServer


async def _kernels(server: LocalJupyterServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(
            server.url + "api/kernels", headers={"Authorization": f"token {server.token}"}
        )
        response.raise_for_status()
        kernels: list[dict[str, Any]] = response.json()
        return kernels


async def test_gateway_runs_code_and_deletes_its_kernel(gateway, manager_for):
    before = {k["id"] for k in await _kernels(gateway)}
    manager = manager_for(gateway)
    async with manager as session:
        assert manager._http.has_login_page is False
        assert session.session_id == ""  # a bare kernel: no sessions API used
        assert session.subprotocol == V1_SUBPROTOCOL
        assert {k["id"] for k in await _kernels(gateway)} == before | {session.kernel_id}
        assert await session.run_python("print(6 * 7)") == "42\n"
        result = await session.execute("import sys; print('e', file=sys.stderr); 5")
        assert (result.stderr, result.result) == ("e\n", {"text/plain": "5"})
        chunks = [c async for c in session.stream("print('s1', flush=True); print('s2')")]
        assert "".join(c.text for c in chunks) == "s1\ns2\n"
        assert all(isinstance(c, OutputChunk) and c.name == "stdout" for c in chunks)
        with pytest.raises(JupyterExecutionError) as excinfo:
            await session.run_python("1/0")
        assert excinfo.value.ename == "ZeroDivisionError"
        with pytest.raises(JupyterExecutionTimeoutError) as timeout:
            await session.run_python("import time; time.sleep(30)", timeout=0.5)
        assert timeout.value.interrupted
        assert await session.run_python("print('after')") == "after\n"
    assert {k["id"] for k in await _kernels(gateway)} == before


async def test_gateway_wrong_token_is_redacted_web_error(gateway, manager_for):
    wrong = "not-the-token-" + gateway.token[:6]
    with pytest.raises(JupyterWebError) as excinfo:
        async with manager_for(gateway, token=wrong):
            pass
    assert excinfo.value.status in (401, 403)
    assert wrong not in str(excinfo.value)
    assert wrong not in str(excinfo.value.to_dict())


async def test_gateway_has_no_contents_api(gateway, manager_for):
    async with manager_for(gateway) as session:
        with pytest.raises(JupyterUnsupportedError) as excinfo:
            await session.upload(b"data", "x.bin")
        assert excinfo.value.feature == "contents API"
        assert "Kernel Gateway" in str(excinfo.value)
        with pytest.raises(JupyterUnsupportedError):
            await session.download("x.bin")
