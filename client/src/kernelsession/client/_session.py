"""Lab sessions: the manager opens one, the session runs code and moves files.

The manager does the HTTP side (login, creating and deleting the lab session or
kernel) and gives the session a :class:`KernelConnection` (socket, reader,
routing, reconnecting) and what it needs to interrupt the kernel and reach the
contents API; results are assembled by the pure functions of ``_dispatch``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ._connection import KernelConnection
from ._dispatch import PendingRequest, assemble_result, termination_error
from ._errors import (
    JupyterExecutionTimeoutError,
    JupyterTimeoutError,
    JupyterWebError,
    JupyterWebSocketError,
    redact,
)
from ._files import Contents, Source
from ._logging import default_logger
from ._login import LabHttp
from ._models import (
    CellResult,
    CodeContext,
    ExecutionResult,
    NotebookResult,
    OutputChunk,
    SessionTimings,
)
from ._notebook import load_code_cells
from ._websocket import MessageHandler, open_kernel_websocket

__all__ = ["JupyterLabSession", "JupyterLabSessionManager"]

#: How long an interrupted request may take to deliver its reply and idle status.
_DRAIN_TIMEOUT = 15.0
#: How long to wait for the session/kernel DELETE.
_CLOSE_TIMEOUT = 10.0


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _seconds(value: timedelta | float | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _ws_url(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    return "ws://" + http_url[len("http://") :]


class JupyterLabSession:
    """An open lab session: one kernel and its websocket. Made by the manager.

    Any number of requests may be in flight (from concurrent tasks); each gets
    only its own messages.
    """

    def __init__(
        self,
        *,
        connection: KernelConnection,
        http: LabHttp,
        kernel_id: str,
        session_id: str,
        logger: Any,
    ) -> None:
        self._connection = connection
        self._http = http
        self.kernel_id = kernel_id
        #: The server's lab session id ("" where the kernel was created directly).
        self.session_id = session_id
        self._secrets = connection.secrets
        self._logger = logger.bind(kernel_id=kernel_id)
        self._contents = Contents(http, user=connection.username, secrets=connection.secrets)

    @property
    def subprotocol(self) -> str | None:
        """The websocket subprotocol the server selected (``None``: legacy JSON frames)."""
        return self._connection.subprotocol

    @property
    def user(self) -> str:
        return self._connection.username

    @property
    def reconnects(self) -> int:
        """How many times a broken websocket was reopened during this session."""
        return self._connection.reconnects

    def _error_kwargs(
        self, started_at: datetime, code: str | None, context: CodeContext | None
    ) -> dict[str, Any]:
        return {
            "user": self.user,
            "started_at": started_at,
            "context": context,
            "code": code,
            "secrets": self._secrets,
        }

    def _execute_request(self, code: str) -> Any:
        return self._connection.message(
            "shell",
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )

    def _timeout_error(
        self, seconds: float | None, interrupted: bool, kwargs: dict[str, Any]
    ) -> JupyterExecutionTimeoutError:
        self._logger.warning("Code execution timed out", timeout=seconds, interrupted=interrupted)
        return JupyterExecutionTimeoutError(
            f"the code ran longer than its timeout of {seconds:g} s"
            + ("; the kernel was interrupted" if interrupted else ""),
            timeout=float(seconds or 0),
            interrupted=interrupted,
            **kwargs,
        )

    # -- running code --------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        context: CodeContext | None = None,
        *,
        timeout: timedelta | float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and return everything it produced.

        Complete only once both the ``execute_reply`` and the kernel's idle
        status for this request have arrived. ``images`` holds the PNG and JPEG
        images of its ``display_data`` and ``execute_result`` outputs, decoded.

        Raises:
            JupyterExecutionError: The code raised (or the request was aborted).
            JupyterExecutionTimeoutError: ``timeout`` passed; the kernel was
                interrupted and the session stays usable.
            JupyterKernelDiedError: The kernel died or restarted meanwhile.
            JupyterOutputLostError: The server dropped output (IOPub rate limit).
            JupyterWebSocketError: The websocket closed, or broke and could not be
                reopened within the manager's ``reconnect_timeout``.
        """
        started_at = _now()
        seconds = _seconds(timeout)
        request = await self._connection.request(self._execute_request(code))
        try:
            try:
                if seconds is None:
                    await request.done  # no timer, no shield: the common, fastest path
                else:
                    async with asyncio.timeout(seconds):
                        await asyncio.shield(request.done)
            except TimeoutError:
                interrupted = await self._interrupt_and_drain(request)
                kwargs = self._error_kwargs(started_at, code, context)
                raise self._timeout_error(seconds, interrupted, kwargs) from None
        finally:
            self._connection.unregister(request.msg_id)
        if request.termination is None and request.lost_output_notice is None:
            reply = request.reply
            if reply is not None and reply.get("status") == "ok":
                return assemble_result(request)  # the common case: no error kwargs built
        return assemble_result(request, **self._error_kwargs(started_at, code, context))

    async def run_python(
        self,
        code: str,
        context: CodeContext | None = None,
        *,
        timeout: timedelta | float | None = None,
    ) -> str:
        """Run ``code``; return only what it wrote to stdout, in order.

        stderr, ``execute_result`` and ``display_data`` are not part of the
        result (use :meth:`execute` for them).

        Raises:
            JupyterExecutionError: The code raised.
            JupyterExecutionTimeoutError: ``timeout`` passed (kernel interrupted,
                session still usable).
            JupyterKernelDiedError: The kernel died while running the code.
            JupyterOutputLostError: The server dropped some of the output.
            JupyterWebSocketError: The websocket closed, or broke and could not be reopened.
        """
        result = await self.execute(code, context, timeout=timeout)
        return result.stdout

    async def stream(
        self,
        code: str,
        context: CodeContext | None = None,
        *,
        timeout: timedelta | float | None = None,
    ) -> AsyncIterator[OutputChunk]:
        """Run ``code``, yielding its stdout and stderr as the kernel produces them.

        ``async for chunk in session.stream(code): print(chunk.name, chunk.text)``.
        The iteration ends once the execution is complete; then, as
        :meth:`run_python` would, it raises if the code failed. ``timeout``
        bounds the whole execution (the time the caller spends between chunks
        counts). Leaving the loop early stops listening, not the code.

        Raises:
            JupyterExecutionError: The code raised (after its output was yielded).
            JupyterExecutionTimeoutError: ``timeout`` passed; the kernel was
                interrupted and the session stays usable.
            JupyterKernelDiedError, JupyterOutputLostError, JupyterWebSocketError:
                as for :meth:`run_python`.
        """
        started_at = _now()
        seconds = _seconds(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if seconds is None else loop.time() + seconds
        queue: asyncio.Queue[OutputChunk | None] = asyncio.Queue()

        def on_stream(name: str, text: str) -> None:
            queue.put_nowait(OutputChunk(name, text))

        request = await self._connection.request(self._execute_request(code), on_stream=on_stream)
        request.done.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await queue.get()
                except TimeoutError:
                    interrupted = await self._interrupt_and_drain(request)
                    kwargs = self._error_kwargs(started_at, code, context)
                    raise self._timeout_error(seconds, interrupted, kwargs) from None
                if chunk is None:
                    break
                yield chunk
        finally:
            self._connection.unregister(request.msg_id)
        assemble_result(request, **self._error_kwargs(started_at, code, context))

    async def run_notebook(
        self,
        notebook: str | os.PathLike[str] | Mapping[str, Any],
        *,
        timeout: timedelta | float | None = None,
    ) -> NotebookResult:
        """Run a notebook's code cells in order, in this session's kernel.

        ``notebook`` is a path to an ``.ipynb`` file or an nbformat dict;
        markdown and raw cells are skipped. ``timeout`` applies to each cell.
        Errors carry a :class:`CodeContext` with the notebook's name, the cell's
        id and its 1-based number among all cells.

        Raises:
            JupyterExecutionError: A cell raised (``context`` names the notebook,
                ``cell`` and ``cell_number``); later cells were not run.
            JupyterExecutionTimeoutError, JupyterKernelDiedError,
                JupyterOutputLostError, JupyterWebSocketError: as for :meth:`execute`.
            OSError: The notebook path cannot be read.
            ValueError: It is not a notebook (nbformat's errors are ValueErrors).
        """
        name, cells = load_code_cells(notebook)
        t0 = time.perf_counter()
        results: list[CellResult] = []
        for cell in cells:
            context = CodeContext(
                notebook=name, cell=cell.cell_id, cell_number=str(cell.cell_number)
            )
            t_cell = time.perf_counter()
            result = await self.execute(cell.source, context, timeout=timeout)
            results.append(
                CellResult(
                    cell_id=cell.cell_id,
                    cell_number=cell.cell_number,
                    stdout=result.stdout,
                    seconds=time.perf_counter() - t_cell,
                    result=result,
                )
            )
        return NotebookResult(notebook=name, cells=results, seconds=time.perf_counter() - t0)

    async def _interrupt_and_drain(self, request: PendingRequest) -> bool:
        """Interrupt the kernel and wait (bounded) for the request to finish."""
        try:
            await self._http.request(
                "POST",
                f"api/kernels/{self.kernel_id}/interrupt",
                what="interrupting the kernel",
            )
        except JupyterWebError as e:
            self._logger.warning("Interrupting the kernel failed", error=e.message)
            return False
        try:
            async with asyncio.timeout(_DRAIN_TIMEOUT):
                await asyncio.shield(request.done)
        except TimeoutError:
            self._logger.warning("Interrupted request did not finish", msg_id=request.msg_id)
            return False
        return request.termination is None

    async def kernel_info(self, *, timeout: float = 60.0) -> dict[str, Any]:
        """Ask the kernel for its ``kernel_info_reply`` content.

        Raises:
            JupyterTimeoutError: No reply within ``timeout`` seconds.
            JupyterKernelDiedError, JupyterWebSocketError: As for :meth:`execute`.
        """
        started_at = _now()
        connection = self._connection
        request = await connection.request(
            connection.message("shell", "kernel_info_request", {}), wait_idle=False
        )
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(request.done)
        except TimeoutError:
            raise JupyterTimeoutError(
                f"the kernel did not answer kernel_info_request within {timeout:g} s",
                **self._error_kwargs(started_at, None, None),
            ) from None
        finally:
            connection.unregister(request.msg_id)
        if request.termination is not None:
            raise termination_error(
                request.termination, **self._error_kwargs(started_at, None, None)
            )
        return request.reply or {}

    # -- files ---------------------------------------------------------------------------

    async def upload(self, data_or_path: Source, remote_path: str) -> None:
        """Write a file in the lab through its contents API (binary-safe).

        ``data_or_path`` is the content (``bytes``, ``bytearray``, ``memoryview``)
        or a local file path (``str`` or ``os.PathLike``); ``remote_path`` is
        relative to the server's root directory, whose directories must exist.
        Files larger than 4 MiB go in chunks, read from disk one at a time.

        Raises:
            JupyterUnsupportedError: The server has no contents API (Kernel Gateway).
            JupyterNotFoundError: The remote directory does not exist.
            JupyterWebError: Another HTTP failure.
            OSError: The local file cannot be read.
        """
        await self._contents.upload(data_or_path, remote_path)

    async def download(self, remote_path: str) -> bytes:
        """The bytes of a file in the lab (relative to the server's root directory).

        Raises:
            JupyterUnsupportedError: The server has no contents API (Kernel Gateway).
            JupyterNotFoundError: No such file.
            JupyterWebError: Another HTTP failure.
        """
        return await self._contents.download(remote_path)


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
