"""Lab sessions: the manager opens one, the session runs code."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from ._dispatch import MessageRouter, PendingRequest, Termination
from ._errors import (
    JupyterError,
    JupyterExecutionError,
    JupyterExecutionTimeoutError,
    JupyterKernelDiedError,
    JupyterOutputLostError,
    JupyterTimeoutError,
    JupyterWebError,
    JupyterWebSocketError,
    redact,
)
from ._login import LabHttp
from ._models import CodeContext, ExecutionResult, SessionTimings
from ._protocol import (
    KernelMessage,
    ProtocolError,
    decode_frame,
    encode_message,
    make_message,
)
from ._websocket import open_kernel_websocket

__all__ = ["JupyterLabSession", "JupyterLabSessionManager"]

#: How long an interrupted request may take to deliver its reply and idle status.
_DRAIN_TIMEOUT = 15.0
#: How long to wait for the websocket close handshake and the session DELETE.
_CLOSE_TIMEOUT = 10.0
# Seconds to wait for one kernel_info round trip (shell + IOPub) before asking again.
_NUDGE_ATTEMPT = 1.0


def _now() -> datetime:
    return datetime.now(tz=UTC)


def _ws_url(http_url: str) -> str:
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    return "ws://" + http_url[len("http://") :]


class JupyterLabSession:
    """An open lab session: one kernel and its websocket. Made by the manager.

    One reader task reads every frame and routes it by parent ``msg_id``, so
    any number of requests may be in flight (from concurrent tasks) without one
    consuming another's messages.
    """

    def __init__(
        self,
        *,
        manager: JupyterLabSessionManager,
        websocket: ClientConnection,
        kernel_id: str,
        session_id: str,
        client_session_id: str,
    ) -> None:
        self._manager = manager
        self._ws = websocket
        self.kernel_id = kernel_id
        self.session_id = session_id
        self._client_session_id = client_session_id
        self._router = MessageRouter()
        self._closed: Termination | None = None
        self._kernel_restarted = False
        self._closing_ws = False
        self._reconnect_lock = asyncio.Lock()
        self._logger = manager._logger.bind(kernel_id=kernel_id)
        self._reader = asyncio.create_task(
            self._read_loop(), name=f"kernelsession-reader-{kernel_id}"
        )

    @property
    def subprotocol(self) -> str | None:
        """The websocket subprotocol the server selected (``None``: legacy JSON frames)."""
        return self._ws.subprotocol

    @property
    def user(self) -> str:
        return self._manager.username

    # -- reading ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        ws = self._ws
        subprotocol = ws.subprotocol
        dispatch = self._router.dispatch
        try:
            async for frame in ws:
                try:
                    msg = decode_frame(frame, subprotocol)
                except (ProtocolError, ValueError, UnicodeDecodeError) as e:
                    self._logger.warning("Dropping malformed kernel frame", error=str(e))
                    continue
                if (
                    msg.msg_type == "status"
                    and not msg.parent_msg_id
                    and msg.content.get("execution_state") in ("restarting", "dead")
                ):
                    self._kernel_restarted = True
                    self._logger.warning(
                        "Kernel restarting or dead",
                        execution_state=msg.content.get("execution_state"),
                    )
                dispatch(msg)
            close = ws.protocol.close_rcvd or ws.protocol.close_sent
            self._set_closed(close.code if close else None, close.reason if close else None, None)
        except ConnectionClosed as e:
            close = e.rcvd or e.sent
            self._set_closed(close.code if close else None, close.reason if close else None, e)
        except Exception as e:  # pragma: no cover - defensive: never leave requests hanging
            self._logger.exception("Kernel websocket reader failed")
            self._set_closed(None, f"{type(e).__name__}: {e}", e)

    def _set_closed(self, code: int | None, reason: str | None, exc: BaseException | None) -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            limit = self._manager.max_websocket_size
            detail = (
                f"a kernel message was larger than max_websocket_size ({limit} bytes); "
                "the websocket was closed"
            )
        elif self._manager._closing or self._closing_ws:
            detail = "the websocket was closed by the client"
        else:
            detail = "the kernel websocket closed unexpectedly"
            if code is None or code == CloseCode.ABNORMAL_CLOSURE:
                detail = "the kernel websocket broke (no close frame: server gone or network)"
        termination = Termination(kind="websocket", detail=detail, close_code=code, reason=reason)
        if self._closed is None:
            self._closed = termination
            if not (self._manager._closing or self._closing_ws):
                self._logger.warning(
                    "Kernel websocket closed", close_code=code, reason=reason, detail=detail
                )
        self._router.terminate_all(termination)

    # -- sending ---------------------------------------------------------------------

    def _message(self, channel: str, msg_type: str, content: dict[str, Any]) -> KernelMessage:
        return make_message(
            channel,
            msg_type,
            content,
            session_id=self._client_session_id,
            username=self.user,
        )

    async def _send(self, msg: KernelMessage) -> None:
        await self._ws.send(encode_message(msg, self._ws.subprotocol))

    async def _reconnect_if_restarted(self) -> None:
        """After a kernel restart, open a fresh websocket to the same kernel.

        A restart may move the kernel to new ports, which leaves the server's
        side of the old websocket talking to nothing; like JupyterLab, reconnect.
        """
        async with self._reconnect_lock:
            if not self._kernel_restarted or self._manager._closing:
                return
            self._logger.info("Reconnecting the kernel websocket after a kernel restart")
            await self._close()
            self._ws = await self._manager._connect_websocket(
                self.kernel_id, self._client_session_id
            )
            self._closed = None
            self._closing_ws = False
            self._kernel_restarted = False
            self._reader = asyncio.create_task(
                self._read_loop(), name=f"kernelsession-reader-{self.kernel_id}"
            )
            await self._nudge(self._manager.websocket_open_timeout.total_seconds())

    async def _nudge(self, timeout: float) -> None:
        """Wait until both shell and IOPub reach the (restarted) kernel.

        A kernel_info_request is complete only once its IOPub idle status arrives; the
        server's IOPub subscription to a freshly started kernel may not be connected
        yet (ZMQ drops what a subscriber misses), so ask again until one completes.
        This is what jupyter-server's own "nudge" does for new connections, which it
        skips when it restores a buffered one.

        Raises:
            JupyterTimeoutError: not reachable within ``timeout`` seconds.
            JupyterKernelDiedError, JupyterWebSocketError: as for :meth:`execute`.
        """
        started_at = _now()
        deadline = time.monotonic() + timeout
        while True:
            request = await self._request(
                self._message("shell", "kernel_info_request", {}), wait_idle=True
            )
            attempt = min(_NUDGE_ATTEMPT, max(deadline - time.monotonic(), 0.001))
            try:
                async with asyncio.timeout(attempt):
                    await asyncio.shield(request.done)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise JupyterTimeoutError(
                        f"the restarted kernel did not answer on shell and IOPub within "
                        f"{timeout:g} s",
                        **self._error_kwargs(started_at, None, None),
                    ) from None
                continue
            finally:
                self._router.unregister(request.msg_id)
            if request.termination is not None:
                raise self._termination_error(
                    request.termination, **self._error_kwargs(started_at, None, None)
                )
            return

    async def _request(self, msg: KernelMessage, *, wait_idle: bool = True) -> PendingRequest:
        if self._kernel_restarted and msg.msg_type != "kernel_info_request":
            await self._reconnect_if_restarted()
        request = PendingRequest(msg.msg_id, wait_idle=wait_idle)
        self._router.register(request)
        if self._closed is not None:
            request.terminate(self._closed)
            return request
        try:
            await self._send(msg)
        except ConnectionClosed as e:
            close = e.rcvd or e.sent
            self._set_closed(close.code if close else None, close.reason if close else None, e)
        return request

    # -- errors ----------------------------------------------------------------------

    def _error_kwargs(
        self, started_at: datetime, code: str | None, context: CodeContext | None
    ) -> dict[str, Any]:
        return {
            "user": self.user,
            "started_at": started_at,
            "context": context,
            "code": code,
            "secrets": (self._manager._token,),
        }

    def _termination_error(self, termination: Termination, **kwargs: Any) -> JupyterError:
        if termination.kind == "kernel-died":
            return JupyterKernelDiedError(
                f"the kernel died while running the code ({termination.detail})",
                execution_state=termination.execution_state,
                **kwargs,
            )
        return JupyterWebSocketError(
            termination.detail,
            close_code=termination.close_code,
            reason=termination.reason,
            **kwargs,
        )

    # -- public API ------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        context: CodeContext | None = None,
        *,
        timeout: timedelta | float | None = None,
    ) -> ExecutionResult:
        """Run ``code`` and return everything it produced.

        Complete only once both the ``execute_reply`` and the kernel's idle
        status for this request have arrived.

        Raises:
            JupyterExecutionError: The code raised (or the request was aborted).
            JupyterExecutionTimeoutError: ``timeout`` passed; the kernel was
                interrupted and the session stays usable.
            JupyterKernelDiedError: The kernel died or restarted meanwhile.
            JupyterOutputLostError: The server dropped output (IOPub rate limit).
            JupyterWebSocketError: The websocket is closed or broke.
        """
        started_at = _now()
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        kwargs = self._error_kwargs(started_at, code, context)
        msg = self._message(
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
        request = await self._request(msg)
        try:
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(request.done)
            except TimeoutError:
                interrupted = await self._interrupt_and_drain(request)
                self._logger.warning(
                    "Code execution timed out", timeout=seconds, interrupted=interrupted
                )
                raise JupyterExecutionTimeoutError(
                    f"the code ran longer than its timeout of {seconds:g} s"
                    + ("; the kernel was interrupted" if interrupted else ""),
                    timeout=float(seconds or 0),
                    interrupted=interrupted,
                    **kwargs,
                ) from None
        finally:
            self._router.unregister(request.msg_id)
        return self._result(request, kwargs)

    def _result(self, request: PendingRequest, kwargs: dict[str, Any]) -> ExecutionResult:
        if request.termination is not None:
            raise self._termination_error(request.termination, **kwargs)
        reply = request.reply or {}
        status = str(reply.get("status", "ok"))
        if status != "ok":
            error = request.error or reply
            ename = error.get("ename") or ("Aborted" if status == "aborted" else "Error")
            evalue = error.get("evalue") or ""
            traceback = "\n".join(error.get("traceback") or [])
            raise JupyterExecutionError(
                f"{ename}: {evalue}" if evalue else str(ename),
                error=traceback or None,
                ename=str(ename),
                evalue=str(evalue),
                status=status,
                **kwargs,
            )
        stdout = "".join(request.stdout)
        if request.lost_output_notice is not None:
            raise JupyterOutputLostError(
                "the lab server dropped part of the output (IOPub rate limit exceeded); "
                "the result would be incomplete",
                notice=request.lost_output_notice,
                partial_stdout=stdout,
                **kwargs,
            )
        return ExecutionResult(
            msg_id=request.msg_id,
            stdout=stdout,
            stderr="".join(request.stderr),
            outputs=request.outputs,
            execution_count=reply.get("execution_count"),
            status=status,
        )

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
            JupyterWebSocketError: The websocket closed or broke.
        """
        result = await self.execute(code, context, timeout=timeout)
        return result.stdout

    async def _interrupt_and_drain(self, request: PendingRequest) -> bool:
        """Interrupt the kernel and wait (bounded) for the request to finish."""
        try:
            await self._manager._http.request(
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
        kwargs = self._error_kwargs(started_at, None, None)
        request = await self._request(
            self._message("shell", "kernel_info_request", {}), wait_idle=False
        )
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(request.done)
        except TimeoutError:
            raise JupyterTimeoutError(
                f"the kernel did not answer kernel_info_request within {timeout:g} s", **kwargs
            ) from None
        finally:
            self._router.unregister(request.msg_id)
        if request.termination is not None:
            raise self._termination_error(request.termination, **kwargs)
        return request.reply or {}

    async def _close(self) -> None:
        self._closing_ws = True
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._ws.close()
        except TimeoutError:
            self._ws.transport.abort()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class JupyterLabSessionManager:
    """Open a lab session as an async context manager; yields a :class:`JupyterLabSession`.

    ``async with`` logs in (token to cookies and XSRF, through the login form
    as a browser does), creates a lab session with a kernel (``POST
    api/sessions``), opens the kernel websocket offering the
    ``v1.kernel.websocket.jupyter.org`` subprotocol (falling back to JSON
    frames if the server does not select it) and waits for the kernel's first
    reply. On exit it closes the websocket and deletes the lab session, which
    also happens when opening failed after the session was created.

    Args:
        base_url: The lab's base URL, e.g. ``http://host:8888/user/alice/``.
        token: The lab token (never logged, redacted from errors).
        username: The lab user, bound to logs and carried by errors.
        kernel_name: Kernel spec to start.
        notebook_name: Session path/name; a unique console name if ``None``.
        max_websocket_size: Largest accepted websocket message in bytes
            (``None``: no limit). A larger message closes the socket and fails
            with a ``JupyterWebSocketError`` saying so.
        websocket_open_timeout: Bound on opening the websocket and getting the
            kernel's first reply.
        logger: A structlog logger; ``user`` is bound to it.

    Raises (from ``__aenter__``):
        JupyterWebError: Login or session creation failed.
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
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.username = username
        self.kernel_name = kernel_name
        self.notebook_name = notebook_name
        self.max_websocket_size = max_websocket_size
        self.websocket_open_timeout = websocket_open_timeout
        self.timings = SessionTimings()
        self._token = token
        self._logger = (logger or structlog.get_logger("kernelsession.client")).bind(
            user=username, base_url=redact(base_url, (token,))
        )
        self._http = LabHttp(base_url, token, username)
        self._lab_session_id: str | None = None
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
        await self._http.login()
        t1 = time.perf_counter()
        self.timings.login = t1 - t0
        self._logger.debug("Logged in to the lab")

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
            what="creating the lab session",
        )
        body = response.json()
        self._lab_session_id = str(body["id"])
        kernel_id = str(body["kernel"]["id"])
        t2 = time.perf_counter()
        self.timings.session_create = t2 - t1
        self._logger.info(
            "Created lab session", session_id=self._lab_session_id, kernel_id=kernel_id
        )

        session = await self._open_websocket(kernel_id)
        self._session = session
        self.timings.websocket_open = time.perf_counter() - t2
        return session

    async def _open_websocket(self, kernel_id: str) -> JupyterLabSession:
        timeout = self.websocket_open_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        client_session_id = uuid.uuid4().hex
        ws = await self._connect_websocket(kernel_id, client_session_id)
        session = JupyterLabSession(
            manager=self,
            websocket=ws,
            kernel_id=kernel_id,
            session_id=self._lab_session_id or "",
            client_session_id=client_session_id,
        )
        self._session = session
        self._logger.debug("Opened kernel websocket", subprotocol=ws.subprotocol or "legacy-json")
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            await session.kernel_info(timeout=remaining)
        except JupyterTimeoutError as e:
            e.message = f"the kernel did not answer within {timeout:g} s of opening"
            raise
        return session

    async def _connect_websocket(self, kernel_id: str, client_session_id: str) -> ClientConnection:
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
        try:
            ws = await open_kernel_websocket(
                url,
                cookie_header=self._http.cookie_header(),
                xsrf=self._http.xsrf,
                max_size=self.max_websocket_size,
                open_timeout=self.websocket_open_timeout,
                quickack=self._quickack,
                subprotocols=self._subprotocols,
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

    async def _cleanup(self) -> None:
        if self._closing:
            return
        self._closing = True
        t0 = time.perf_counter()
        try:
            if self._session is not None:
                await self._session._close()
            if self._lab_session_id is not None:
                try:
                    await asyncio.wait_for(
                        self._http.request(
                            "DELETE",
                            f"api/sessions/{self._lab_session_id}",
                            expect=(204, 404),
                            what="deleting the lab session",
                        ),
                        _CLOSE_TIMEOUT,
                    )
                    self._logger.info("Deleted lab session", session_id=self._lab_session_id)
                except (JupyterWebError, TimeoutError) as e:
                    self._logger.warning(
                        "Could not delete the lab session",
                        session_id=self._lab_session_id,
                        error=str(getattr(e, "message", e)),
                    )
        finally:
            await self._http.aclose()
            self.timings.cleanup = time.perf_counter() - t0
