"""Faults of the lab and of the HTTP server in front of a client: the lab process
SIGKILLed under a client mid-execution, and a server answering 5xx to the login.

Every wait is bounded (``asyncio.timeout``), so a hang fails the test instead of
stalling the run.
"""

from __future__ import annotations

import asyncio
import http.server
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from helpers import LABS, apply_session, children, events_for, get_ks, wait_for, wait_phase

from kernelsession.client import (
    JupyterKernelDiedError,
    JupyterLabSessionManager,
    JupyterWebError,
    JupyterWebSocketError,
    KernelSessionClient,
)
from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.deploy import InClusterOperator


def lab_pid(cluster: LocalCluster, pod: dict[str, Any]) -> int:
    """The host PID of the lab container's main process (``jupyter server``), from
    containerd."""
    (cs,) = pod["status"]["containerStatuses"]
    scheme, _, container_id = cs["containerID"].partition("://")
    assert scheme == "containerd", cs["containerID"]
    assert cluster.node is not None
    return cluster.node.task_pids()[container_id]


async def kernels_busy(url: str, token: str) -> bool:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        response = await http.get(f"{url}api/kernels", headers={"Authorization": f"token {token}"})
    return any(k.get("execution_state") == "busy" for k in response.json())


@pytest.mark.slow
@pytest.mark.cluster
async def test_lab_killed_mid_execution(
    installed: LocalCluster,
    operator: InClusterOperator,
    ks: KernelSessionClient,
    session_name: str,
    report_figure: Callable[[str, float, str], None],
) -> None:
    """SIGKILL the lab process while a client runs ``time.sleep(30)``: the client gets a
    typed error within seconds (never a hang), the session leaves Ready saying the lab
    restarts, and comes back Ready on the same pod (restartPolicy Always)."""
    apply_session(installed, session_name, {"user": "kim"})
    ready = wait_phase(installed, session_name, "Ready", timeout=90)
    pod = installed.get_json("-n", LABS, f"pod/{ready['podName']}")
    pid = lab_pid(installed, pod)
    url, token, _ = await ks.credentials(session_name)

    manager = await ks.lab_session(session_name)
    async with asyncio.timeout(60):
        async with manager as lab:
            assert await lab.run_python("print('before')") == "before\n"
            running = asyncio.create_task(lab.run_python("import time; time.sleep(30)"))
            await asyncio.wait_for(
                asyncio.shield(_until(lambda: kernels_busy(url, token))), timeout=15
            )
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises((JupyterKernelDiedError, JupyterWebSocketError)) as info:
                async with asyncio.timeout(15):
                    await running
            client_seconds = time.monotonic() - killed
    report_figure(f"client got {type(info.value).__name__} after the kill", client_seconds, "s")

    def left_ready() -> list[dict[str, Any]]:
        return [e for e in events_for(installed, session_name) if e["reason"] == "LabRestarting"]

    (restarting, *_) = wait_for(left_ready, timeout=15, what="a LabRestarting event")
    print(f"operator reported LabRestarting {time.monotonic() - killed:.1f}s after the kill")
    assert restarting["type"] == "Warning"
    assert "restarts: 1" in restarting["message"], restarting["message"]

    again = wait_phase(installed, session_name, "Ready", timeout=60)
    print(f"Ready again {time.monotonic() - killed:.1f}s after the kill")
    assert again["podName"] == ready["podName"]
    assert again["restarts"] >= 1
    assert len(children(installed, session_name)["Pod"]) == 1
    ready_cond = next(c for c in get_ks(installed, session_name)["status"]["conditions"])
    assert ready_cond["status"] == "True"
    # And it runs code again.
    async with asyncio.timeout(60), await ks.lab_session(session_name) as lab:
        assert await lab.run_python("print('after')") == "after\n"


async def _until(predicate: Any, interval: float = 0.1) -> None:
    while True:
        try:
            if await predicate():
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(interval)


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, like a lab behind a proxy during maintenance."""

    requests: list[str] = []

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        body = b"<html>503 Service Unavailable: lab maintenance</html>"
        self.send_response(503)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Retry-After", "30")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    """A real HTTP server on loopback (a thread of this process) answering 503."""
    _Unavailable.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_login_5xx_is_a_typed_web_error(unavailable_server: str) -> None:
    """A real server answering 503 to the login (no mock): JupyterWebError with the
    status and body, the token redacted, and no lab session attempted after it."""
    token = "s3cret-token-" + "x" * 30
    manager = JupyterLabSessionManager(base_url=unavailable_server, token=token, username="lee")
    with pytest.raises(JupyterWebError) as info:
        async with asyncio.timeout(30), manager:
            pytest.fail("opened a session against a 503 server")
    err = info.value
    assert err.status == 503
    assert "maintenance" in (err.body or "")
    assert token not in str(err)
    assert token not in err.url
    assert _Unavailable.requests, "the server saw no request"
    assert not any(r.startswith("POST") and "api/sessions" in r for r in _Unavailable.requests)
