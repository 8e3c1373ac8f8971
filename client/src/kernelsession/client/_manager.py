"""Opening a lab session: :class:`JupyterLabSessionManager` logs in, creates the lab
session or kernel, opens the kernel websocket and yields a :class:`JupyterLabSession`;
on exit it closes the socket and deletes what it created, also when opening failed
half way.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ._connection import KernelConnection
from ._errors import (
    JupyterTimeoutError,
    JupyterWebError,
    JupyterWebSocketError,
    redact,
)
from ._logging import default_logger
from ._login import LabHttp
from ._models import (
    SessionTimings,
)
from ._session import JupyterLabSession, _now, _seconds
from ._websocket import MessageHandler, open_kernel_websocket

__all__ = ["JupyterLabSessionManager"]

#: How long to wait for the session/kernel DELETE.
_CLOSE_TIMEOUT = 10.0


def _ws_url(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    return "ws://" + http_url[len("http://") :]


class JupyterLabSessionManager:
    """Open a lab session as an async context manager; yields a :class:`JupyterLabSession`.

    ``async with`` logs in, starts a kernel and opens its websocket offering the
    ``v1.kernel.websocket.jupyter.org`` subprotocol (falling back to JSON frames
    if the server does not select it), then waits for the kernel's first reply.
    It works unchanged against jupyter-server (JupyterLab), a lab behind a
    base_url, and Jupyter Kernel Gateway:

    * where there is a login page, the token is posted to it as a browser does
      (cookies and XSRF); where there is none (Kernel Gateway), the token goes
      in an ``Authorization`` header;
    * where there is a login page a lab session is created (``POST
      api/sessions``), falling back to a bare kernel if the server has no
      sessions API; without a login page a kernel is created directly (``POST
      api/kernels``).

    On exit it closes the websocket and deletes what it created (the lab
    session, or the kernel), which also happens when opening failed half way.

    Args:
        base_url: The server's base URL, e.g. ``http://host:8888/user/alice/``.
        token: The server's token (never logged, redacted from errors).
        username: The lab user, bound to logs and carried by errors.
        kernel_name: Kernel spec to start.
        notebook_name: Session path/name; a unique console name if ``None``.
        max_websocket_size: Largest accepted websocket message in bytes
            (``None``: no limit). A larger message closes the socket and fails
            with a ``JupyterWebSocketError`` saying so.
        websocket_open_timeout: Bound on opening the websocket and getting the
            kernel's first reply.
        logger: A structlog logger; ``user`` is bound to it. By default the
            library logs to the stdlib logger ``kernelsession.client``, which
            prints nothing unless the application configures logging.
        ping_interval: Websocket keepalive: a ping this often (``None``: never),
            so proxies and load balancers do not drop a socket during a long
            silent cell. A pong must come within ``max(ping_interval * 3, 60 s)``.
        reconnect_timeout: When the websocket breaks without a close frame
            (network, proxy) while the server and kernel live, reopen it with
            the same client session id within this time and return the complete
            results (the server buffers output meanwhile); ``None`` disables it.

    Raises (from ``__aenter__``):
        JupyterWebError: Login or session/kernel creation failed.
        JupyterTimeoutError: The websocket or kernel did not answer in time.
        JupyterWebSocketError: The websocket could not be opened.
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        username: str,
        kernel_name: str = "python3",
        notebook_name: str | None = None,
        max_websocket_size: int | None = None,
        websocket_open_timeout: timedelta = timedelta(seconds=60),
        logger: Any = None,
        ping_interval: timedelta | float | None = timedelta(seconds=20),
        reconnect_timeout: timedelta | float | None = timedelta(seconds=10),
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.username = username
        self.kernel_name = kernel_name
        self.notebook_name = notebook_name
        self.max_websocket_size = max_websocket_size
        self.websocket_open_timeout = websocket_open_timeout
        self.ping_interval = _seconds(ping_interval)
        self.reconnect_timeout = _seconds(reconnect_timeout)
        self.timings = SessionTimings()
        self._token = token
        self._logger = (logger if logger is not None else default_logger()).bind(
            user=username, base_url=redact(base_url, (token,))
        )
        self._http = LabHttp(base_url, token, username)
        self._lab_session_id: str | None = None
        self._kernel_id: str | None = None
        self._connection: KernelConnection | None = None
        self._session: JupyterLabSession | None = None
        self._closing = False
        # Overridable by tests/benchmarks: websocket subprotocols offered and quickack.
        self._subprotocols: list[str] | None = None
        self._quickack = True

    async def __aenter__(self) -> JupyterLabSession:
        try:
            return await self._open()
        except BaseException:
            await self._cleanup()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._cleanup()

    async def _open(self) -> JupyterLabSession:
        t0 = time.perf_counter()
        has_login_page = await self._http.login()
        t1 = time.perf_counter()
        self.timings.login = t1 - t0
        self._logger.debug("Logged in", login_page=has_login_page)

        kernel_id = await self._start_kernel(with_session=has_login_page)
        t2 = time.perf_counter()
        self.timings.session_create = t2 - t1

        timeout = self.websocket_open_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        connection = KernelConnection(
            lambda session_id, on_message: self._connect_websocket(
                kernel_id, session_id, on_message
            ),
            username=self.username,
            secrets=(self._token,),
            logger=self._logger.bind(kernel_id=kernel_id),
            max_websocket_size=self.max_websocket_size,
            reconnect_timeout=self.reconnect_timeout,
            kernel_alive=lambda: self._kernel_alive(kernel_id),
        )
        self._connection = connection
        await connection.open()
        self._logger.debug(
            "Opened kernel websocket", subprotocol=connection.subprotocol or "legacy-json"
        )
        session = JupyterLabSession(
            connection=connection,
            http=self._http,
            kernel_id=kernel_id,
            session_id=self._lab_session_id or "",
            logger=self._logger,
        )
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            await session.kernel_info(timeout=remaining)
        except JupyterTimeoutError as e:
            e.message = f"the kernel did not answer within {timeout:g} s of opening"
            raise
        self._session = session
        self.timings.websocket_open = time.perf_counter() - t2
        return session

    async def _start_kernel(self, *, with_session: bool) -> str:
        """Create a lab session (or a bare kernel where there is no sessions API).

        Raises:
            JupyterWebError: The server refused.
        """
        if with_session:
            name = self.notebook_name or f"kernelsession-{uuid.uuid4().hex[:12]}"
            response = await self._http.request(
                "POST",
                "api/sessions",
                json={
                    "kernel": {"name": self.kernel_name},
                    "name": name,
                    "path": name,
                    "type": "notebook" if self.notebook_name else "console",
                },
                expect=(200, 201, 404),
                what="creating the lab session",
            )
            if response.status_code != 404:
                body = response.json()
                self._lab_session_id = str(body["id"])
                self._kernel_id = str(body["kernel"]["id"])
                self._logger.info(
                    "Created lab session",
                    session_id=self._lab_session_id,
                    kernel_id=self._kernel_id,
                )
                return self._kernel_id
        response = await self._http.request(
            "POST", "api/kernels", json={"name": self.kernel_name}, what="creating the kernel"
        )
        self._kernel_id = str(response.json()["id"])
        self._logger.info("Created kernel", kernel_id=self._kernel_id)
        return self._kernel_id

    async def _kernel_alive(self, kernel_id: str) -> bool | None:
        """Whether the kernel still exists: ``False`` when the server refuses
        connections (nothing listens: it is gone) or says 404; ``None`` when
        unreachable otherwise (a network problem, worth retrying)."""
        try:
            response = await self._http.client.get(f"api/kernels/{kernel_id}", timeout=5.0)
        except httpx.ConnectError as e:
            cause: BaseException | None = e
            while cause is not None:
                if isinstance(cause, ConnectionRefusedError):
                    return False
                cause = cause.__cause__ or cause.__context__
            return None
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            return False
        return True if response.status_code == 200 else None

    async def _connect_websocket(
        self, kernel_id: str, client_session_id: str, on_message: MessageHandler
    ) -> ClientConnection:
        """Open the kernel websocket.

        Raises:
            JupyterTimeoutError: Not open within ``websocket_open_timeout``.
            JupyterWebSocketError: Refused or failed.
        """
        started_at = _now()
        url = _ws_url(self._http.url(f"api/kernels/{kernel_id}/channels"))
        url += f"?session_id={client_session_id}"
        kwargs: dict[str, Any] = {
            "user": self.username,
            "started_at": started_at,
            "secrets": (self._token,),
        }
        timeout = self.websocket_open_timeout.total_seconds()
        ping = self.ping_interval
        try:
            ws = await open_kernel_websocket(
                url,
                headers=self._http.websocket_headers(),
                max_size=self.max_websocket_size,
                open_timeout=self.websocket_open_timeout,
                ping_interval=ping,
                ping_timeout=max(ping * 3, 60.0) if ping else None,
                quickack=self._quickack,
                subprotocols=self._subprotocols,
                on_message=on_message,
            )
        except TimeoutError:
            raise JupyterTimeoutError(
                f"opening the kernel websocket took longer than {timeout:g} s", **kwargs
            ) from None
        except InvalidStatus as e:
            raise JupyterWebSocketError(
                f"the server refused the kernel websocket with HTTP {e.response.status_code}",
                **kwargs,
            ) from None
        except (InvalidHandshake, OSError, ConnectionClosed) as e:
            raise JupyterWebSocketError(
                f"opening the kernel websocket failed: {type(e).__name__}: {e}", **kwargs
            ) from None
        return ws

    async def _delete(self, path: str, what: str) -> None:
        try:
            await asyncio.wait_for(
                self._http.request("DELETE", path, expect=(204, 404), what=what), _CLOSE_TIMEOUT
            )
            self._logger.info(what.capitalize().replace("deleting", "Deleted"), path=path)
        except (JupyterWebError, TimeoutError) as e:
            self._logger.warning(
                f"Could not finish {what}", path=path, error=str(getattr(e, "message", e))
            )

    async def _cleanup(self) -> None:
        if self._closing:
            return
        self._closing = True
        t0 = time.perf_counter()
        try:
            if self._connection is not None:
                await self._connection.close()
            if self._lab_session_id is not None:
                await self._delete(
                    f"api/sessions/{self._lab_session_id}", "deleting the lab session"
                )
            elif self._kernel_id is not None:
                await self._delete(f"api/kernels/{self._kernel_id}", "deleting the kernel")
        finally:
            await self._http.aclose()
            self.timings.cleanup = time.perf_counter() - t0
