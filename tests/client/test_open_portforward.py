"""The port-forward upstream (`PortForwardUpstream`, kubernetes_asyncio's WsApiClient)
behind the local proxy, against a real jupyter-server.

The API server here is a STAND-IN: a small aiohttp websocket endpoint on loopback that
speaks the API server's port-forward protocol (``v4.channel.k8s.io``, port-announcing
first frames, data on channel 0, errors on channel 1) and pipes to the lab's TCP port.
It exists because this machine's cluster cannot serve port-forward yet; it also
produces two faults on demand (the API server refusing with 403, the kubelet reporting
an error on the error channel). tests/e2e/test_open.py runs the real API server and
kubelet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import websockets
from aiohttp import web
from kubernetes_asyncio import client

from kernelsession.client.cli._localproxy import LocalProxy
from kernelsession.client.cli._portforward import SUBPROTOCOL, PortForwardError, PortForwardUpstream
from kernelsession.client.testing import LocalJupyterServer

BEARER = "stand-in-bearer"


class StandInAPIServer:
    """``/api/v1/namespaces/NS/pods/POD/portforward`` to the lab's port, and faults."""

    def __init__(self, lab_port: int) -> None:
        self.lab_port = lab_port
        self.seen: list[dict[str, str]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/portforward", self.portforward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def portforward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            {
                "authorization": request.headers.get("Authorization", ""),
                "protocol": request.headers.get("Sec-WebSocket-Protocol", ""),
                "ports": request.query.get("ports", ""),
                "pod": request.match_info["pod"],
            }
        )
        if request.headers.get("Authorization") != f"Bearer {BEARER}":
            return web.Response(status=401)
        if request.match_info["pod"] == "forbidden":
            return web.Response(status=403, text="pods/portforward is forbidden")
        ws = web.WebSocketResponse(protocols=[SUBPROTOCOL])
        await ws.prepare(request)
        port = int(request.query["ports"])
        announce = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + announce)
        await ws.send_bytes(b"\x01" + announce)
        if request.match_info["pod"] == "refused":
            await ws.send_bytes(b"\x01error forwarding port 8888: connection refused")
            await ws.close()
            return ws
        reader, writer = await asyncio.open_connection("127.0.0.1", self.lab_port)

        async def down() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        task = asyncio.create_task(down())
        try:
            async for message in ws:
                assert message.data[:1] == b"\x00"  # the client writes data only
                writer.write(message.data[1:])
                await writer.drain()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            writer.close()
        return ws


@pytest.fixture
async def api_server(lab: LocalJupyterServer) -> AsyncIterator[StandInAPIServer]:
    server = StandInAPIServer(lab.port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def configuration(api_server: StandInAPIServer) -> client.Configuration:
    return client.Configuration(
        host=f"http://127.0.0.1:{api_server.port}",
        api_key={"BearerToken": BEARER},
        api_key_prefix={"BearerToken": "Bearer"},
    )


def execute_request(code: str) -> tuple[str, str]:
    msg_id = uuid.uuid4().hex
    message = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "t",
            "session": uuid.uuid4().hex,
            "date": datetime.now(UTC).isoformat(),
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": False},
        "channel": "shell",
        "buffers": [],
    }
    return msg_id, json.dumps(message)


async def test_lab_through_the_port_forward_upstream(
    lab: LocalJupyterServer, api_server: StandInAPIServer
) -> None:
    upstream = PortForwardUpstream(
        configuration(api_server), namespace="labs", pod="alice-lab-1", port=lab.port
    )
    try:
        async with (
            LocalProxy(upstream, token=lab.token) as proxy,
            httpx.AsyncClient(trust_env=False, follow_redirects=True) as browser,
        ):
            page = await browser.get(proxy.url)
            assert page.status_code == 200
            assert "jupyter-config-data" in page.text
            assert lab.token not in page.text
            origin = f"http://127.0.0.1:{proxy.port}"
            kernel = (await browser.post(origin + "/api/kernels", json={})).json()
            cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
            try:
                async with websockets.connect(
                    f"ws://127.0.0.1:{proxy.port}/api/kernels/{kernel['id']}/channels",
                    additional_headers={"Cookie": cookie},
                ) as ws:
                    msg_id, request = execute_request("print(6*7)")
                    await ws.send(request)
                    async with asyncio.timeout(60):
                        while True:
                            reply = json.loads(await ws.recv())
                            if reply["parent_header"].get("msg_id") != msg_id:
                                continue
                            if reply["msg_type"] == "stream":
                                assert reply["content"]["text"] == "42\n"
                                break
            finally:
                await browser.delete(origin + f"/api/kernels/{kernel['id']}")
    finally:
        await upstream.aclose()
    # one websocket per local connection, authenticated as the kubeconfig says
    assert len(api_server.seen) >= 2
    for seen in api_server.seen:
        assert seen == {
            "authorization": f"Bearer {BEARER}",
            "protocol": SUBPROTOCOL,
            "ports": str(lab.port),
            "pod": "alice-lab-1",
        }


async def test_refusals_and_kubelet_errors_are_typed(
    lab: LocalJupyterServer, api_server: StandInAPIServer
) -> None:
    forbidden = PortForwardUpstream(
        configuration(api_server), namespace="labs", pod="forbidden", port=lab.port
    )
    refused = PortForwardUpstream(
        configuration(api_server), namespace="labs", pod="refused", port=lab.port
    )
    try:
        with pytest.raises(
            PortForwardError, match=r"403 Forbidden.*`create` on `pods/portforward`"
        ):
            await forbidden.connect()
        stream = await refused.connect()
        with pytest.raises(PortForwardError, match="labs/refused: error forwarding port 8888"):
            await stream.receive()
        await stream.aclose()
        # behind the proxy, both become a 502 page that says why
        for upstream, why in ((forbidden, "pods/portforward"), (refused, "connection refused")):
            async with (
                LocalProxy(upstream, token=lab.token) as proxy,
                httpx.AsyncClient(trust_env=False, follow_redirects=True) as browser,
            ):
                answer = await browser.get(proxy.url)
                assert answer.status_code == 502
                assert why in answer.text
                assert lab.token not in answer.text
    finally:
        await forbidden.aclose()
        await refused.aclose()
