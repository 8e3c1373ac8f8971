"""Routing kernel messages to the request they answer, and assembling its result.

No I/O: the connection's reader task feeds every decoded message to a
:class:`MessageRouter`, which hands it to the :class:`PendingRequest` whose
``msg_id`` is the message's parent, so no request ever sees (or consumes)
another's messages. :func:`assemble_result` and :func:`termination_error` turn a
finished request into an :class:`ExecutionResult` or the typed error to raise.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import (
    JupyterError,
    JupyterExecutionError,
    JupyterKernelDiedError,
    JupyterOutputLostError,
    JupyterWebSocketError,
)
from ._models import ExecutionResult
from ._protocol import KernelMessage

__all__ = [
    "IMAGE_MIME_TYPES",
    "RATE_LIMIT_NOTICES",
    "MessageRouter",
    "PendingRequest",
    "Termination",
    "assemble_result",
    "decode_images",
    "termination_error",
]

#: MIME types decoded into ``ExecutionResult.images``.
IMAGE_MIME_TYPES = ("image/png", "image/jpeg")

#: Start of the stderr text a stock jupyter-server sends when it drops output.
RATE_LIMIT_NOTICES = ("IOPub data rate exceeded", "IOPub message rate exceeded")

#: Kernel states, sent without a parent, that mean running requests will never finish.
_DEATH_STATES = frozenset({"restarting", "dead", "autorestarting"})


@dataclass(frozen=True, slots=True)
class Termination:
    """Why a request ended without its reply: the kernel died or the socket broke."""

    kind: str  # "kernel-died" | "websocket"
    detail: str
    execution_state: str | None = None
    close_code: int | None = None
    reason: str | None = None


class PendingRequest:
    """Everything received so far for one shell request.

    Complete once both its ``*_reply`` (shell) and, when ``wait_idle``, the
    kernel's ``status: idle`` with this parent (iopub) have arrived: only then
    is all the output in. Stream text is kept as lists and joined once.
    ``on_stream(name, text)``, when set, is called with every stream message
    as it arrives (for streaming to a caller).
    """

    __slots__ = (
        "done",
        "error",
        "idle",
        "lost_output_notice",
        "msg_id",
        "on_stream",
        "outputs",
        "reply",
        "stderr",
        "stdout",
        "termination",
        "wait_idle",
    )

    def __init__(
        self,
        msg_id: str,
        *,
        wait_idle: bool = True,
        on_stream: Callable[[str, str], None] | None = None,
    ) -> None:
        self.msg_id = msg_id
        self.on_stream = on_stream
        self.wait_idle = wait_idle
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.outputs: list[dict[str, Any]] = []
        self.error: dict[str, Any] | None = None
        self.reply: dict[str, Any] | None = None
        self.idle = False
        self.lost_output_notice: str | None = None
        self.termination: Termination | None = None
        self.done = asyncio.get_running_loop().create_future()

    def feed(self, msg: KernelMessage) -> None:
        """Take one message whose parent is this request."""
        msg_type = msg.msg_type
        content = msg.content
        if msg.channel == "iopub":
            if msg_type == "stream":
                text = content.get("text", "")
                name = content.get("name")
                if name == "stdout":
                    self.stdout.append(text)
                else:
                    name = "stderr"
                    if text.startswith(RATE_LIMIT_NOTICES) and self.lost_output_notice is None:
                        self.lost_output_notice = text
                    self.stderr.append(text)
                if self.on_stream is not None:
                    self.on_stream(name, text)
            elif msg_type in ("execute_result", "display_data"):
                self.outputs.append(content)
            elif msg_type == "error":
                self.error = content
            elif msg_type == "status" and content.get("execution_state") == "idle":
                self.idle = True
        elif msg_type.endswith("_reply"):
            self.reply = content
        if self.reply is not None and (self.idle or not self.wait_idle) and not self.done.done():
            self.done.set_result(None)

    def terminate(self, termination: Termination) -> None:
        """End the request without a (complete) reply."""
        if self.termination is None and not self.done.done():
            self.termination = termination
            self.done.set_result(None)

    @property
    def complete(self) -> bool:
        return self.reply is not None and (self.idle or not self.wait_idle)


class MessageRouter:
    """Dispatch messages by ``parent_header.msg_id`` to registered requests."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingRequest] = {}
        self.unrouted = 0

    def register(self, request: PendingRequest) -> None:
        self._pending[request.msg_id] = request

    def unregister(self, msg_id: str) -> None:
        self._pending.pop(msg_id, None)

    @property
    def pending(self) -> list[PendingRequest]:
        return list(self._pending.values())

    def dispatch(self, msg: KernelMessage) -> None:
        """Route one message; kernel death notices end every pending request."""
        parent = msg.parent_msg_id
        request = self._pending.get(parent) if parent else None
        if request is not None:
            request.feed(msg)
            return
        if msg.msg_type == "status":
            state = msg.content.get("execution_state")
            if state in _DEATH_STATES:
                self.terminate_all(
                    Termination(
                        kind="kernel-died",
                        detail=f"the kernel reported execution_state={state!r}",
                        execution_state=str(state),
                    )
                )
                return
        self.unrouted += 1

    def terminate_all(self, termination: Termination) -> None:
        for request in list(self._pending.values()):
            request.terminate(termination)


def termination_error(termination: Termination, **kwargs: Any) -> JupyterError:
    """The error for a request ended by ``termination`` (``kwargs``: user, code...)."""
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


def decode_images(outputs: list[dict[str, Any]]) -> list[tuple[str, bytes]]:
    """``(mime_type, bytes)`` of every PNG and JPEG in ``outputs`` (MIME bundle contents).

    Base64 values may be one string or a list of lines (nbformat style); values
    that do not decode are skipped.
    """
    images: list[tuple[str, bytes]] = []
    for output in outputs:
        data = output.get("data")
        if not data:
            continue
        for mime in IMAGE_MIME_TYPES:
            value = data.get(mime)
            if value is None:
                continue
            if isinstance(value, list):
                value = "".join(value)
            if not isinstance(value, str):
                continue
            try:
                images.append((mime, base64.b64decode(value)))
            except (binascii.Error, ValueError):
                continue
    return images


def assemble_result(request: PendingRequest, **kwargs: Any) -> ExecutionResult:
    """The result of a finished ``execute_request``, or raise its typed error.

    ``kwargs`` (user, started_at, context, code, secrets) go to the error.

    Raises:
        JupyterKernelDiedError, JupyterWebSocketError: the request was terminated.
        JupyterExecutionError: the reply's status is not ``ok`` (error or aborted).
        JupyterOutputLostError: the server reported dropping output.
    """
    if request.termination is not None:
        raise termination_error(request.termination, **kwargs)
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
        images=decode_images(request.outputs) if request.outputs else [],
    )
