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
import re
import struct
import uuid
from collections.abc import Callable
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


_Part = bytes | memoryview
#: ``"key": "value"`` of a flat JSON object whose value needs no unescaping. Only a key
#: is followed by ``:`` (a ``"`` inside a string value is always escaped), so the first
#: match is the key itself.
_MSG_ID = re.compile(rb'"msg_id"\s*:\s*"([^"\\]*)"')
_MSG_TYPE = re.compile(rb'"msg_type"\s*:\s*"([^"\\]*)"')


class KernelMessage:
    """One Jupyter message, with the channel it travelled on.

    A message decoded from a v1 frame keeps its four JSON parts undecoded until
    they are read: routing needs only the parent's ``msg_id`` and the type, which
    are found without decoding (:attr:`parent_msg_id`, :attr:`msg_type`), and most
    messages' metadata (and an ``execute_input``'s content) are never read. A part
    that is not a JSON object raises :class:`ProtocolError` when it is read.
    """

    __slots__ = (
        "_content",
        "_header",
        "_metadata",
        "_parent_header",
        "_raw",
        "buffers",
        "channel",
    )

    def __init__(
        self,
        channel: str,
        header: dict[str, Any],
        parent_header: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        content: dict[str, Any] | None = None,
        buffers: list[bytes] | None = None,
    ) -> None:
        self.channel = channel
        self._header: dict[str, Any] | None = header
        self._parent_header: dict[str, Any] | None = {} if parent_header is None else parent_header
        self._metadata: dict[str, Any] | None = {} if metadata is None else metadata
        self._content: dict[str, Any] | None = {} if content is None else content
        self.buffers: list[bytes] = [] if buffers is None else buffers
        self._raw: list[_Part] | None = None

    @classmethod
    def _from_parts(cls, channel: str, parts: list[_Part], buffers: list[bytes]) -> KernelMessage:
        msg = cls.__new__(cls)
        msg.channel = channel
        msg._header = msg._parent_header = msg._metadata = msg._content = None
        msg.buffers = buffers
        msg._raw = parts
        return msg

    def _part(self, index: int) -> dict[str, Any]:
        assert self._raw is not None
        try:
            return _load(self._raw[index])
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ProtocolError(f"message part {index} is not JSON: {e}") from e

    @property
    def header(self) -> dict[str, Any]:
        if self._header is None:
            self._header = self._part(0)
        return self._header

    @header.setter
    def header(self, value: dict[str, Any]) -> None:
        self._header = value

    @property
    def parent_header(self) -> dict[str, Any]:
        if self._parent_header is None:
            self._parent_header = self._part(1)
        return self._parent_header

    @parent_header.setter
    def parent_header(self, value: dict[str, Any]) -> None:
        self._parent_header = value

    @property
    def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            self._metadata = self._part(2)
        return self._metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._metadata = value

    @property
    def content(self) -> dict[str, Any]:
        if self._content is None:
            self._content = self._part(3)
        return self._content

    @content.setter
    def content(self, value: dict[str, Any]) -> None:
        self._content = value

    @property
    def msg_id(self) -> str:
        return str(self.header.get("msg_id", ""))

    @property
    def msg_type(self) -> str:
        if self._header is None:
            found = _MSG_TYPE.search(self._raw[0]) if self._raw is not None else None
            if found is not None:
                return found.group(1).decode()
        return str(self.header.get("msg_type", ""))

    @property
    def parent_msg_id(self) -> str | None:
        """``msg_id`` of the request this message answers, or ``None``."""
        if self._parent_header is None:
            raw = self._raw[1] if self._raw is not None else b""
            if len(raw) <= 2:
                return None
            found = _MSG_ID.search(raw)
            if found is not None:
                return found.group(1).decode() or None
        parent = self.parent_header.get("msg_id") if self.parent_header else None
        return str(parent) if parent else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KernelMessage):
            return NotImplemented
        return (
            self.channel,
            self.header,
            self.parent_header,
            self.metadata,
            self.content,
            self.buffers,
        ) == (
            other.channel,
            other.header,
            other.parent_header,
            other.metadata,
            other.content,
            other.buffers,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"KernelMessage(channel={self.channel!r}, msg_type={self.msg_type!r})"


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
#: The C scanner behind ``json.loads``, called directly: one call instead of four.
_Scanner = Callable[[str, int], tuple[Any, int]]
_scan_once: _Scanner = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _load(part: _Part) -> dict[str, Any]:
    # Most parent headers and metadata are "{}": no parser call for them. Decoding to
    # str first skips json's encoding detection on bytes.
    if len(part) <= 2 and (not part or part == b"{}"):
        return {}
    text = str(part, "utf-8")
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        value, end = None, -1
    if end != len(text):  # leading or trailing space, or not JSON: json.loads decides
        value = _loads(text)
    if not isinstance(value, dict):
        raise ProtocolError("message part is not a JSON object")
    return value


_U64 = struct.Struct("<Q")
_OFFSETS: dict[int, struct.Struct] = {}
_SIX = struct.Struct("<6Q")


def decode_v1(frame: bytes) -> KernelMessage:
    """Parse a v1 binary frame (its JSON parts are decoded when read)."""
    size = len(frame)
    if size < 8:
        raise ProtocolError("v1 frame shorter than its offset count")
    (count,) = _U64.unpack_from(frame, 0)
    if count < 6 or 8 * (count + 1) > size:
        if count < 2 or 8 * (count + 1) > size:
            raise ProtocolError(f"v1 frame has a bad offset count {count}")
        raise ProtocolError(f"v1 frame has {count - 2} parts, expected at least 4")
    if count == 6:  # four parts, no buffers: almost every message
        o0, o1, o2, o3, o4, o5 = _SIX.unpack_from(frame, 8)
        if not (o0 == 56 and o0 <= o1 <= o2 <= o3 <= o4 <= o5 <= size):
            raise ProtocolError("v1 frame offsets are not increasing or run past its end")
        return KernelMessage._from_parts(
            frame[o0:o1].decode(), [frame[o1:o2], frame[o2:o3], frame[o3:o4], frame[o4:o5]], []
        )
    table = _OFFSETS.get(count)
    if table is None:
        table = _OFFSETS.setdefault(count, struct.Struct(f"<{count}Q"))
    offsets = table.unpack_from(frame, 8)
    if offsets[0] != 8 * (count + 1) or list(offsets) != sorted(offsets):
        raise ProtocolError("v1 frame offsets are not increasing")
    if offsets[-1] > size:
        raise ProtocolError("v1 frame offsets run past its end")
    view = memoryview(frame)
    o0, o1, o2, o3, o4, o5 = offsets[:6]
    channel = str(view[o0:o1], "utf-8")
    parts: list[_Part] = [view[o1:o2], view[o2:o3], view[o3:o4], view[o4:o5]]
    buffers = [bytes(view[offsets[i] : offsets[i + 1]]) for i in range(5, count - 1)]
    return KernelMessage._from_parts(channel, parts, buffers)


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
