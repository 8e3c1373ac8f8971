"""Jupyter kernel messages over a websocket: building, framing and parsing.

Pure functions, no I/O. Two wire formats:

* ``v1.kernel.websocket.jupyter.org`` (binary frames): a little-endian uint64
  count ``n`` of offsets, then ``n`` uint64 offsets; bytes ``[o0:o1]`` are the
  channel name, then each ``[o_i:o_i+1]`` is a part (header, parent_header,
  metadata, content as JSON, then raw buffers).
* legacy (no subprotocol selected): JSON text frames holding the whole message
  plus a ``channel`` key; messages with buffers come as binary frames: a
  big-endian uint32 count ``n``, ``n`` uint32 offsets, the JSON message, buffers.
"""

from __future__ import annotations

import itertools
import json
import struct
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "PROTOCOL_VERSION",
    "V1_SUBPROTOCOL",
    "KernelMessage",
    "ProtocolError",
    "decode_frame",
    "decode_legacy_binary",
    "decode_legacy_text",
    "decode_v1",
    "encode_legacy",
    "encode_message",
    "encode_v1",
    "make_message",
]

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"


class ProtocolError(ValueError):
    """A websocket frame is not a well-formed kernel message."""


@dataclass(slots=True)
class KernelMessage:
    """One Jupyter message, with the channel it travelled on."""

    channel: str
    header: dict[str, Any]
    parent_header: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    content: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        return str(self.header.get("msg_type", ""))

    @property
    def parent_msg_id(self) -> str | None:
        """``msg_id`` of the request this message answers, or ``None``."""
        parent = self.parent_header.get("msg_id") if self.parent_header else None
        return str(parent) if parent else None


def make_message(
    channel: str,
    msg_type: str,
    content: dict[str, Any],
    *,
    session_id: str,
    username: str,
    msg_id: str | None = None,
) -> KernelMessage:
    """Build a request message with a fresh header."""
    header = {
        "msg_id": msg_id or uuid.uuid4().hex,
        "msg_type": msg_type,
        "username": username,
        "session": session_id,
        "date": datetime.now(tz=UTC).isoformat(),
        "version": PROTOCOL_VERSION,
    }
    return KernelMessage(channel=channel, header=header, content=content)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode_v1(msg: KernelMessage) -> bytes:
    """Frame ``msg`` for the v1 binary subprotocol."""
    parts = [
        _dumps(msg.header),
        _dumps(msg.parent_header),
        _dumps(msg.metadata),
        _dumps(msg.content),
        *msg.buffers,
    ]
    channel = msg.channel.encode()
    count = len(parts) + 2
    offsets = [8 * (1 + count)]
    offsets.append(offsets[-1] + len(channel))
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    # The last part runs to the end of the frame; its end offset closes the table.
    offsets.append(offsets[-1] + len(parts[-1]))
    table = struct.pack(f"<{count + 1}Q", count, *offsets)
    return b"".join([table, channel, *parts])


_loads = json.loads


def _load(part: bytes | memoryview) -> dict[str, Any]:
    # Most parent headers and metadata are "{}": no parser call for them. Decoding to
    # str first skips json's encoding detection on bytes.
    if len(part) <= 2 and (not part or part == b"{}"):
        return {}
    value = _loads(str(part, "utf-8"))
    if not isinstance(value, dict):
        raise ProtocolError("message part is not a JSON object")
    return value


def decode_v1(frame: bytes) -> KernelMessage:
    """Parse a v1 binary frame."""
    if len(frame) < 8:
        raise ProtocolError("v1 frame shorter than its offset count")
    (count,) = struct.unpack_from("<Q", frame, 0)
    if count < 2 or 8 * (count + 1) > len(frame):
        raise ProtocolError(f"v1 frame has a bad offset count {count}")
    offsets = list(struct.unpack_from(f"<{count}Q", frame, 8))
    if offsets[0] != 8 * (count + 1) or any(b < a for a, b in itertools.pairwise(offsets)):
        raise ProtocolError("v1 frame offsets are not increasing")
    if offsets[-1] > len(frame):
        raise ProtocolError("v1 frame offsets run past its end")
    view = memoryview(frame)
    channel = bytes(view[offsets[0] : offsets[1]]).decode()
    parts = [view[offsets[i] : offsets[i + 1]] for i in range(1, count - 1)]
    if len(parts) < 4:
        raise ProtocolError(f"v1 frame has {len(parts)} parts, expected at least 4")
    return KernelMessage(
        channel=channel,
        header=_load(parts[0]),
        parent_header=_load(parts[1]),
        metadata=_load(parts[2]),
        content=_load(parts[3]),
        buffers=[bytes(p) for p in parts[4:]],
    )


def _from_dict(msg: dict[str, Any], buffers: list[bytes]) -> KernelMessage:
    header = msg.get("header")
    if not isinstance(header, dict):
        raise ProtocolError("message has no header")
    return KernelMessage(
        channel=str(msg.get("channel") or "shell"),
        header=header,
        parent_header=msg.get("parent_header") or {},
        metadata=msg.get("metadata") or {},
        content=msg.get("content") or {},
        buffers=buffers,
    )


def encode_legacy(msg: KernelMessage) -> str:
    """Encode ``msg`` as a legacy JSON text frame (buffers are not supported there)."""
    if msg.buffers:
        raise ProtocolError("legacy JSON frames cannot carry buffers")
    return json.dumps(
        {
            "channel": msg.channel,
            "header": msg.header,
            "parent_header": msg.parent_header,
            "metadata": msg.metadata,
            "content": msg.content,
            "buffers": [],
        },
        ensure_ascii=False,
    )


def decode_legacy_text(frame: str | bytes) -> KernelMessage:
    """Parse a legacy JSON text frame."""
    try:
        msg = json.loads(frame)
    except ValueError as e:
        raise ProtocolError(f"frame is not JSON: {e}") from e
    if not isinstance(msg, dict):
        raise ProtocolError("frame is not a JSON object")
    return _from_dict(msg, [])


def decode_legacy_binary(frame: bytes) -> KernelMessage:
    """Parse a legacy binary frame (a JSON message followed by buffers)."""
    if len(frame) < 4:
        raise ProtocolError("legacy binary frame too short")
    (nbufs,) = struct.unpack_from("!I", frame, 0)
    if nbufs < 1 or 4 * (nbufs + 1) > len(frame):
        raise ProtocolError(f"legacy binary frame has a bad buffer count {nbufs}")
    offsets = [*struct.unpack_from(f"!{nbufs}I", frame, 4), len(frame)]
    chunks = [frame[a:b] for a, b in itertools.pairwise(offsets)]
    msg = json.loads(chunks[0])
    if not isinstance(msg, dict):
        raise ProtocolError("legacy binary frame does not start with a JSON object")
    return _from_dict(msg, chunks[1:])


def encode_message(msg: KernelMessage, subprotocol: str | None) -> bytes | str:
    """Frame ``msg`` for whichever protocol the server selected."""
    return encode_v1(msg) if subprotocol == V1_SUBPROTOCOL else encode_legacy(msg)


def decode_frame(frame: bytes | str, subprotocol: str | None) -> KernelMessage:
    """Parse one websocket frame for whichever protocol the server selected."""
    if subprotocol == V1_SUBPROTOCOL:
        if isinstance(frame, str):
            raise ProtocolError("text frame on the v1 binary protocol")
        return decode_v1(frame)
    if isinstance(frame, bytes):
        return decode_legacy_binary(frame)
    return decode_legacy_text(frame)
