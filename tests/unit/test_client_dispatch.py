"""Routing messages by parent msg_id and deciding when a request is complete."""

from __future__ import annotations

from typing import Any

from kernelsession.client._dispatch import MessageRouter, PendingRequest, Termination
from kernelsession.client._protocol import KernelMessage


def msg(channel: str, msg_type: str, parent: str | None, content: dict[str, Any]) -> KernelMessage:
    return KernelMessage(
        channel=channel,
        header={"msg_id": "m", "msg_type": msg_type},
        parent_header={"msg_id": parent} if parent else {},
        content=content,
    )


def stream(parent: str, text: str, name: str = "stdout") -> KernelMessage:
    return msg("iopub", "stream", parent, {"name": name, "text": text})


def idle(parent: str | None) -> KernelMessage:
    return msg("iopub", "status", parent, {"execution_state": "idle"})


def reply(parent: str, status: str = "ok") -> KernelMessage:
    return msg("shell", "execute_reply", parent, {"status": status, "execution_count": 1})


async def test_routes_by_parent_and_needs_reply_and_idle():
    router = MessageRouter()
    a, b = PendingRequest("a"), PendingRequest("b")
    router.register(a)
    router.register(b)
    for m in [
        stream("a", "a1"),
        stream("b", "b1"),
        stream("a", "err", "stderr"),
        stream("zzz", "other"),
        reply("a"),
    ]:
        router.dispatch(m)
    assert not a.done.done()  # reply without idle is not complete
    router.dispatch(stream("a", "a2"))
    router.dispatch(idle("a"))
    assert a.done.done()
    assert a.stdout == ["a1", "a2"]
    assert a.stderr == ["err"]
    assert b.stdout == ["b1"]
    assert not b.done.done()
    router.dispatch(idle("b"))  # idle before reply: still waiting
    assert not b.done.done()
    router.dispatch(reply("b"))
    assert b.done.done()
    assert router.unrouted == 1


async def test_outputs_and_errors_collected():
    request = PendingRequest("x")
    request.feed(msg("iopub", "display_data", "x", {"data": {"text/plain": "d"}}))
    request.feed(msg("iopub", "execute_result", "x", {"data": {"text/plain": "r"}}))
    request.feed(msg("iopub", "error", "x", {"ename": "E", "evalue": "v", "traceback": []}))
    assert len(request.outputs) == 2
    assert request.error is not None
    assert request.error["ename"] == "E"


async def test_rate_limit_notice_detected():
    request = PendingRequest("x")
    request.feed(stream("x", "IOPub data rate exceeded.\nThe Jupyter server will...", "stderr"))
    assert request.lost_output_notice is not None
    other = PendingRequest("y")
    other.feed(stream("y", "IOPub data rate exceeded", "stdout"))  # user's own stdout text
    assert other.lost_output_notice is None


async def test_kernel_death_terminates_all_pending():
    router = MessageRouter()
    a, b = PendingRequest("a"), PendingRequest("b")
    router.register(a)
    router.register(b)
    router.dispatch(idle(None))  # unrelated status: ignored
    assert not a.done.done()
    router.dispatch(msg("iopub", "status", None, {"execution_state": "restarting"}))
    assert a.done.done()
    assert b.done.done()
    assert a.termination is not None
    assert a.termination.kind == "kernel-died"
    assert a.termination.execution_state == "restarting"


async def test_terminate_is_idempotent_and_unregister():
    router = MessageRouter()
    a = PendingRequest("a")
    router.register(a)
    router.terminate_all(Termination(kind="websocket", detail="x", close_code=1006))
    router.terminate_all(Termination(kind="kernel-died", detail="y"))
    assert a.termination is not None
    assert a.termination.kind == "websocket"
    router.unregister("a")
    assert router.pending == []
    router.dispatch(stream("a", "late"))
    assert a.stdout == []
