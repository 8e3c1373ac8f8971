"""A lab session: runs code (``execute``, ``run_python``, ``stream``, ``run_notebook``)
and moves files.

:class:`~._manager.JupyterLabSessionManager` opens it and gives it a
:class:`KernelConnection` (socket, reader, routing, reconnecting) and what it needs to
interrupt the kernel and reach the contents API; results are assembled by the pure
functions of ``_dispatch``.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ._connection import KernelConnection
from ._dispatch import PendingRequest, assemble_result, termination_error
from ._errors import (
    JupyterExecutionTimeoutError,
    JupyterTimeoutError,
    JupyterWebError,
)
from ._files import Contents, Source
from ._login import LabHttp
from ._models import (
    CellResult,
    CodeContext,
    ExecutionResult,
    NotebookResult,
    OutputChunk,
)
from ._notebook import load_code_cells

__all__ = ["JupyterLabSession"]

#: How long an interrupted request may take to deliver its reply and idle status.
_DRAIN_TIMEOUT = 15.0


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _seconds(value: timedelta | float | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


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
