"""Result assembly from a finished request: pure functions, no server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest

from kernelsession.client import (
    JupyterExecutionError,
    JupyterKernelDiedError,
    JupyterOutputLostError,
    JupyterWebSocketError,
    OutputChunk,
)
from kernelsession.client._dispatch import (
    PendingRequest,
    Termination,
    assemble_result,
    decode_images,
    termination_error,
)
from kernelsession.client._protocol import KernelMessage

PNG = b"\x89PNG\r\n\x1a\nfake"
JPEG = b"\xff\xd8\xff\xe0fake"


def _msg(channel: str, msg_type: str, content: dict[str, Any]) -> KernelMessage:
    return KernelMessage(
        channel=channel,
        header={"msg_id": "x", "msg_type": msg_type},
        parent_header={"msg_id": "r"},
        content=content,
    )


def _finished(*messages: KernelMessage, status: str = "ok") -> PendingRequest:
    request = PendingRequest("r")
    for m in messages:
        request.feed(m)
    request.feed(_msg("shell", "execute_reply", {"status": status, "execution_count": 4}))
    request.feed(_msg("iopub", "status", {"execution_state": "idle"}))
    assert request.done.done()
    return request


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_ok_result_has_streams_outputs_and_images():
    request = _finished(
        _msg("iopub", "stream", {"name": "stdout", "text": "a"}),
        _msg("iopub", "stream", {"name": "stderr", "text": "e"}),
        _msg("iopub", "display_data", {"data": {"image/png": _b64(PNG), "text/plain": "fig"}}),
        _msg("iopub", "stream", {"name": "stdout", "text": "b"}),
        _msg("iopub", "execute_result", {"data": {"image/jpeg": _b64(JPEG)}, "execution_count": 4}),
    )
    result = assemble_result(request)
    assert (result.stdout, result.stderr, result.execution_count) == ("ab", "e", 4)
    assert result.images == [("image/png", PNG), ("image/jpeg", JPEG)]
    assert result.result == {"image/jpeg": _b64(JPEG)}


async def test_streaming_callback_sees_chunks_in_order():
    seen: list[OutputChunk] = []
    request = PendingRequest("r", on_stream=lambda n, t: seen.append(OutputChunk(n, t)))
    request.feed(_msg("iopub", "stream", {"name": "stdout", "text": "1"}))
    request.feed(_msg("iopub", "stream", {"name": "stderr", "text": "2"}))
    assert seen == [OutputChunk("stdout", "1"), OutputChunk("stderr", "2")]


async def test_error_reply_raises_execution_error_with_kwargs():
    request = _finished(
        _msg("iopub", "error", {"ename": "KeyError", "evalue": "'k'", "traceback": ["t1", "t2"]}),
        status="error",
    )
    started = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(JupyterExecutionError) as excinfo:
        assemble_result(request, user="u", started_at=started, code="d['k']", secrets=("tok",))
    error = excinfo.value
    assert (error.ename, error.evalue, error.status) == ("KeyError", "'k'", "error")
    assert error.error == "t1\nt2"
    assert (error.user, error.started_at, error.code) == ("u", started, "d['k']")


async def test_aborted_and_lost_output_and_terminations():
    with pytest.raises(JupyterExecutionError) as aborted:
        assemble_result(_finished(status="aborted"))
    assert aborted.value.ename == "Aborted"
    notice = "IOPub data rate exceeded.\n"
    lost = _finished(
        _msg("iopub", "stream", {"name": "stdout", "text": "part"}),
        _msg("iopub", "stream", {"name": "stderr", "text": notice}),
    )
    with pytest.raises(JupyterOutputLostError) as lost_error:
        assemble_result(lost)
    assert lost_error.value.partial_stdout == "part"
    died = PendingRequest("r")
    died.terminate(Termination("kernel-died", "dead", execution_state="dead"))
    with pytest.raises(JupyterKernelDiedError):
        assemble_result(died)
    error = termination_error(Termination("websocket", "broke", close_code=1006))
    assert isinstance(error, JupyterWebSocketError)
    assert error.code == 1006


def test_decode_images_skips_bad_values_and_joins_lines():
    encoded = _b64(PNG)
    outputs: list[dict[str, Any]] = [
        {"data": {"image/png": [encoded[:4], encoded[4:]]}},
        {"data": {"image/png": "%%%not base64"}},
        {"data": {"image/gif": _b64(b"GIF89a")}},
        {"metadata": {}},
    ]
    assert decode_images(outputs) == [("image/png", PNG)]
