"""Idle culling from the lab's own activity: idle labs go, busy ones stay, resume works.

"Busy" and "connected" are told apart: a kernel busy with no client connected, and an
idle kernel with a client connected, each keep the lab on its own (the lab's
``/api/kernels`` is read to show which state the test is in).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import pytest
import websockets
from helpers import (
    LABS,
    apply_session,
    async_wait_for,
    children,
    events_for,
    get_ks,
    wait_for,
    wait_phase,
)

from kernelsession.client import KernelSessionClient
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


async def test_idle_lab_is_culled_then_resumed(
    installed: LocalCluster, operator: InClusterOperator, session_name: str
) -> None:
    apply_session(installed, session_name, {"user": "hal", "culling": {"idleTimeoutSeconds": 4}})
    ready = wait_phase(installed, session_name, "Ready", timeout=90)
    (culled_pod,) = children(installed, session_name)["Pod"]
    culled_pod_uid = culled_pod["metadata"]["uid"]
    status = wait_phase(installed, session_name, "Culled", timeout=30, reason="IdleTimeout")
    assert "idleTimeoutSeconds" in status["message"]
    assert "kernelsession.dev/resume" in status["message"]
    assert status["culledTime"]
    reasons = [e["reason"] for e in events_for(installed, session_name)]
    assert "CullingSoon" in reasons
    assert "Culled" in reasons
    wait_for(
        lambda: "Pod" not in children(installed, session_name),
        timeout=30,
        what="culled pod removed",
    )
    assert 'kernelsession_culls_total{reason="IdleTimeout"}' in operator.metrics()

    installed.kubectl(
        "-n", LABS, "annotate", "ks", session_name, "kernelsession.dev/resume=1", "--overwrite"
    )
    again = wait_phase(installed, session_name, "Ready", timeout=90)
    assert again["resumeRequest"] == "1"
    # ready again after the cull, in a pod that is not the culled one
    assert again["readyTime"] >= status["culledTime"] >= ready["readyTime"]
    (pod,) = children(installed, session_name)["Pod"]
    assert pod["metadata"]["uid"] != culled_pod_uid


async def _kernels(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await http.get("api/kernels")
    response.raise_for_status()
    return list(response.json())


async def _stays_ready(installed: LocalCluster, name: str, seconds: float) -> None:
    """The session is Ready at every look for ``seconds`` (several idle timeouts)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = (await asyncio.to_thread(get_ks, installed, name))["status"]
        assert status["phase"] == "Ready", status
        await asyncio.sleep(0.5)


async def test_busy_kernel_without_a_connection_is_not_culled(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    ks: KernelSessionClient,
) -> None:
    apply_session(installed, session_name, {"user": "ivy", "culling": {"idleTimeoutSeconds": 3}})
    wait_phase(installed, session_name, "Ready", timeout=90)
    url, token, _ = await ks.credentials(session_name)
    auth = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, trust_env=False) as http:
        created = await http.post("api/kernels", json={"name": "python3"})
        created.raise_for_status()
        kernel_id = created.json()["id"]
        # start a long execution over a bare websocket (legacy JSON frames), see it
        # start, then disconnect: the kernel stays busy with nobody connected
        ws_url = url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
        msg_id = uuid.uuid4().hex
        request = {
            "channel": "shell",
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "ivy",
                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "buffers": [],
            "content": {"code": "import time; time.sleep(25)", "silent": False,
                        "store_history": False, "user_expressions": {}, "allow_stdin": False},
        }  # fmt: skip
        async with websockets.connect(ws_url, additional_headers=auth, proxy=None) as ws:
            await ws.send(json.dumps(request))

            async def started() -> bool:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                return bool(
                    msg["parent_header"].get("msg_id") == msg_id
                    and msg["header"]["msg_type"] == "execute_input"
                )

            await async_wait_for(started, timeout=30, what="the execution started", interval=0)

        async def busy_alone() -> bool:
            (kernel,) = await _kernels(http)
            return bool(kernel["execution_state"] == "busy" and kernel["connections"] == 0)

        await async_wait_for(busy_alone, timeout=15, what="kernel busy with no connection")
        # three idle timeouts busy and alone: the operator must leave it alone
        await _stays_ready(installed, session_name, 10)
        assert await busy_alone(), await _kernels(http)
        # once the execution ends, nothing keeps the lab: it goes
        await asyncio.to_thread(wait_phase, installed, session_name, "Culled", 60, "IdleTimeout")


async def test_connected_idle_kernel_is_not_culled(
    installed: LocalCluster,
    operator: InClusterOperator,
    session_name: str,
    ks: KernelSessionClient,
) -> None:
    apply_session(installed, session_name, {"user": "joe", "culling": {"idleTimeoutSeconds": 3}})
    wait_phase(installed, session_name, "Ready", timeout=90)
    url, token, _ = await ks.credentials(session_name)
    auth = {"Authorization": f"token {token}"}
    async with (
        httpx.AsyncClient(base_url=url, headers=auth, trust_env=False) as http,
        await ks.lab_session(session_name) as lab,
    ):
        assert await lab.run_python("print('hi')") == "hi\n"

        async def idle_connected() -> bool:
            (kernel,) = await _kernels(http)
            return bool(kernel["execution_state"] == "idle" and kernel["connections"] >= 1)

        await async_wait_for(idle_connected, timeout=15, what="kernel idle with a connection")
        # three idle timeouts connected and idle: the connection keeps the lab
        await _stays_ready(installed, session_name, 10)
        assert await idle_connected(), await _kernels(http)
    # disconnected (the kernel deleted with the session's lab session): it goes
    await asyncio.to_thread(wait_phase, installed, session_name, "Culled", 30, "IdleTimeout")
