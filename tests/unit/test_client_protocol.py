"""Framing of kernel messages, checked against jupyter-server's own implementation."""

from __future__ import annotations

import json

import pytest
from jupyter_server.services.kernels.connection.base import (
    deserialize_msg_from_ws_v1,
    serialize_binary_message,
    serialize_msg_to_ws_v1,
)

from kernelsession.client._protocol import (
    V1_SUBPROTOCOL,
    KernelMessage,
    ProtocolError,
    decode_frame,
    decode_legacy_binary,
    decode_legacy_text,
    decode_v1,
    encode_legacy,
    encode_message,
    encode_v1,
    make_message,
)


def sample(buffers: list[bytes] | None = None) -> KernelMessage:
    msg = make_message(
        "shell", "execute_request", {"code": "print('é')"}, session_id="s1", username="u"
    )
    msg.parent_header = {"msg_id": "parent-1"}
    msg.metadata = {"m": 1}
    msg.buffers = buffers or []
    return msg


def test_make_message_header():
    msg = sample()
    assert msg.msg_type == "execute_request"
    assert msg.header["session"] == "s1"
    assert msg.header["username"] == "u"
    assert msg.header["version"] == "5.3"
    assert len(msg.msg_id) == 32
    assert msg.parent_msg_id == "parent-1"


@pytest.mark.parametrize("buffers", [[], [b"\x00\x01", b""], [b"abc" * 1000]])
def test_v1_roundtrip(buffers):
    msg = sample(buffers)
    decoded = decode_v1(encode_v1(msg))
    assert decoded == msg


def test_v1_matches_server_decoder():
    msg = sample([b"buf"])
    channel, parts = deserialize_msg_from_ws_v1(encode_v1(msg))
    assert channel == "shell"
    assert [json.loads(p) for p in parts[:4]] == [
        msg.header,
        msg.parent_header,
        msg.metadata,
        msg.content,
    ]
    assert parts[4] == b"buf"


def test_v1_decodes_server_frames():
    objects = [
        {"msg_id": "a", "msg_type": "stream"},
        {"msg_id": "p"},
        {},
        {"name": "stdout", "text": "hi"},
    ]
    parts = [json.dumps(x).encode() for x in objects]
    frame = serialize_msg_to_ws_v1(parts, "iopub")
    msg = decode_v1(frame)
    assert msg.channel == "iopub"
    assert msg.msg_type == "stream"
    assert msg.parent_msg_id == "p"
    assert msg.content["text"] == "hi"
    assert msg.buffers == []


@pytest.mark.parametrize(
    "frame",
    [b"", b"\x01" + b"\x00" * 7, (5).to_bytes(8, "little") + b"\x00" * 8, b"\xff" * 64],
)
def test_v1_rejects_garbage(frame):
    with pytest.raises(ProtocolError):
        decode_v1(frame)


def test_legacy_text_roundtrip():
    msg = sample()
    text = encode_legacy(msg)
    assert json.loads(text)["channel"] == "shell"
    assert decode_legacy_text(text) == msg


def test_legacy_rejects_buffers_on_send():
    with pytest.raises(ProtocolError):
        encode_legacy(sample([b"x"]))


def test_legacy_binary_from_server_serializer():
    msg = {
        "channel": "iopub",
        "header": {"msg_id": "h", "msg_type": "comm_msg"},
        "parent_header": {"msg_id": "p"},
        "metadata": {},
        "content": {"data": {}},
        "buffers": [b"one", b"two!"],
    }
    decoded = decode_legacy_binary(serialize_binary_message(dict(msg)))
    assert decoded.channel == "iopub"
    assert decoded.buffers == [b"one", b"two!"]
    assert decoded.parent_msg_id == "p"


def test_dispatch_on_subprotocol():
    msg = sample()
    assert isinstance(encode_message(msg, V1_SUBPROTOCOL), bytes)
    assert isinstance(encode_message(msg, None), str)
    assert decode_frame(encode_message(msg, V1_SUBPROTOCOL), V1_SUBPROTOCOL) == msg
    assert decode_frame(encode_message(msg, None), None) == msg
    with pytest.raises(ProtocolError):
        decode_frame("text", V1_SUBPROTOCOL)
    with pytest.raises(ProtocolError):
        decode_legacy_text("[1, 2]")


def _server_frame(header: bytes, parent: bytes, metadata: bytes, content: bytes) -> bytes:
    return serialize_msg_to_ws_v1([header, parent, metadata, content], "iopub")


def test_v1_routing_fields_without_decoding_the_parts():
    # jupyter-server's own spacing; metadata and content are not JSON here, and only
    # reading them fails: routing reads just the parent's msg_id and the type
    frame = _server_frame(
        b'{"msg_id": "m1", "msg_type": "stream", "username": "u"}',
        b'{"username": "a\\"msg_id\\": \\"spoof", "msg_id": "p1", "msg_type": "execute_request"}',
        b"not json",
        b"[1]",
    )
    msg = decode_v1(frame)
    assert (msg.msg_type, msg.parent_msg_id, msg.channel) == ("stream", "p1", "iopub")
    with pytest.raises(ProtocolError):
        _ = msg.metadata
    with pytest.raises(ProtocolError):
        _ = msg.content
    assert msg.parent_header["username"] == 'a"msg_id": "spoof'


@pytest.mark.parametrize(
    ("parent", "expected"),
    [
        (b"{}", None),
        (b"", None),
        (b'{"msg_id": ""}', None),
        (b'{"msg_id": "esc\\u0041ped"}', "escAped"),  # escapes: decoded as JSON
        (b'{ "msg_id" :"spaced" }', "spaced"),
    ],
)
def test_v1_parent_msg_id_forms(parent, expected):
    msg = decode_v1(_server_frame(b'{"msg_id": "m", "msg_type": "status"}', parent, b"{}", b"{}"))
    assert msg.parent_msg_id == expected
    assert msg.msg_type == "status"


def test_v1_lazy_message_equals_the_decoded_one():
    msg = sample([b"buf"])
    decoded = decode_v1(encode_v1(msg))
    assert decoded == msg
    assert decoded.header == msg.header
    assert decoded.buffers == [b"buf"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"name": "stdout", "text": "hi"}', {"name": "stdout", "text": "hi"}),
        (b'  {"a": 1} \n', {"a": 1}),  # spaces around: still JSON
        (b'{"t": "\\u00e9\\n"}', {"t": "é\n"}),
        (b"[1]", ProtocolError),
        (b'{"a": 1}x', ProtocolError),  # trailing garbage
        (b'{"a":', ProtocolError),
        (b"\xff{}", ProtocolError),  # not UTF-8
    ],
)
def test_v1_content_parts(content, expected):
    msg = decode_v1(_server_frame(b'{"msg_id": "m", "msg_type": "stream"}', b"{}", b"{}", content))
    if expected is ProtocolError:
        with pytest.raises(ProtocolError):
            _ = msg.content
    else:
        assert msg.content == expected


def test_v1_four_part_frame_offsets_are_checked():
    good = _server_frame(b'{"msg_id": "m", "msg_type": "status"}', b"{}", b"{}", b"{}")
    assert decode_v1(good).msg_type == "status"
    table = bytearray(good)
    table[8 * 3 : 8 * 4] = (len(good) + 10).to_bytes(8, "little")  # a part past the end
    with pytest.raises(ProtocolError):
        decode_v1(bytes(table))
    swapped = bytearray(good)
    swapped[8 * 2 : 8 * 3] = (100).to_bytes(8, "little")  # the channel past the header
    with pytest.raises(ProtocolError):
        decode_v1(bytes(swapped))
