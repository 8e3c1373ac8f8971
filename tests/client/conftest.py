"""Real jupyter-server and Kernel Gateway processes on loopback for the client tests (no mocks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from kernelsession.client import JupyterLabSession, JupyterLabSessionManager
from kernelsession.client.testing import LocalJupyterServer, LocalKernelGateway

UNLIMITED = [
    "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=0",
    "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=0",
]
LEGACY_PROTOCOL = ["--ZMQChannelsWebsocketConnection.kernel_ws_protocol="]


def _serve(
    kind: type[LocalJupyterServer] = LocalJupyterServer, **kwargs: object
) -> Iterator[LocalJupyterServer]:
    server = kind(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lab() -> Iterator[LocalJupyterServer]:
    """A stock jupyter-server (default IOPub rate limits)."""
    yield from _serve()


@pytest.fixture(scope="session")
def lab_subpath() -> Iterator[LocalJupyterServer]:
    """A server under a non-root base URL, like a JupyterHub single-user server."""
    yield from _serve(base_url="/user/alice/")


@pytest.fixture(scope="session")
def lab_unlimited() -> Iterator[LocalJupyterServer]:
    """A server with the IOPub data and message rate limits lifted."""
    yield from _serve(extra_args=UNLIMITED)


@pytest.fixture(scope="session")
def lab_legacy() -> Iterator[LocalJupyterServer]:
    """A server that does not select the v1 subprotocol (legacy JSON frames)."""
    yield from _serve(extra_args=LEGACY_PROTOCOL)


@pytest.fixture(scope="session")
def gateway() -> Iterator[LocalJupyterServer]:
    """A Jupyter Kernel Gateway 3 (jupyter-websocket, auth_token; no login page)."""
    yield from _serve(LocalKernelGateway)


@pytest.fixture
def doomed_lab() -> Iterator[LocalJupyterServer]:
    """A server the test may kill."""
    yield from _serve()


def _manager_for(server: LocalJupyterServer, **kwargs: object) -> JupyterLabSessionManager:
    return JupyterLabSessionManager(
        base_url=str(kwargs.pop("base_url", server.url)),
        token=str(kwargs.pop("token", server.token)),
        username=str(kwargs.pop("username", "alice")),
        **kwargs,  # type: ignore[arg-type]
    )


async def _lab_sessions(server: LocalJupyterServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(
            server.url + "api/sessions", headers={"Authorization": f"token {server.token}"}
        )
        response.raise_for_status()
        sessions: list[dict[str, Any]] = response.json()
        return sessions


@pytest.fixture
def manager_for() -> Callable[..., JupyterLabSessionManager]:
    """Factory: ``manager_for(server, **manager_kwargs)``."""
    return _manager_for


@pytest.fixture
def lab_sessions() -> Callable[[LocalJupyterServer], Awaitable[list[dict[str, Any]]]]:
    """``await lab_sessions(server)``: the server's lab sessions, asked out of band."""
    return _lab_sessions


@pytest.fixture(scope="module")
async def session(lab: LocalJupyterServer) -> AsyncIterator[JupyterLabSession]:
    """One lab session on the stock server, shared by a module's tests."""
    async with _manager_for(lab) as s:
        yield s
