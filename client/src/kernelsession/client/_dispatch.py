"""Routing kernel messages to the request they answer, and collecting a request's output.

No I/O: the session's reader task feeds every decoded message to a
:class:`MessageRouter`, which hands it to the :class:`PendingRequest` whose
``msg_id`` is the message's parent, so no request ever sees (or consumes)
another's messages.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ._protocol import KernelMessage

__all__ = ["RATE_LIMIT_NOTICES", "MessageRouter", "PendingRequest", "Termination"]

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
    """

    def __init__(self, msg_id: str, *, wait_idle: bool = True) -> None:
        self.msg_id = msg_id
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
                if content.get("name") == "stdout":
                    self.stdout.append(text)
                else:
                    if text.startswith(RATE_LIMIT_NOTICES) and self.lost_output_notice is None:
                        self.lost_output_notice = text
                    self.stderr.append(text)
            elif msg_type in ("execute_result", "display_data"):
                self.outputs.append(content)
            elif msg_type == "error":
                self.error = content
            elif msg_type == "status" and content.get("execution_state") == "idle":
                self.idle = True
        elif msg_type.endswith("_reply"):
            self.reply = content
        self._check_done()

    def terminate(self, termination: Termination) -> None:
        """End the request without a (complete) reply."""
        if self.termination is None and not self.done.done():
            self.termination = termination
            self.done.set_result(None)

    @property
    def complete(self) -> bool:
        return self.reply is not None and (self.idle or not self.wait_idle)

    def _check_done(self) -> None:
        if self.complete and not self.done.done():
            self.done.set_result(None)


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
