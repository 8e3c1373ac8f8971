"""The port-forward framing (v4.channel.k8s.io): pure functions, no server."""

from __future__ import annotations

import pytest

from kernelsession.client.cli._portforward import (
    DATA_CHANNEL,
    ERROR_CHANNEL,
    PortForwardData,
    PortForwardDecoder,
    PortForwardFailure,
    PortForwardProtocolError,
    _refusal,
    encode_data,
)

PORT_8888 = (8888).to_bytes(2, "little")  # b"\xb8\x22"


def test_client_data_goes_on_channel_zero_without_a_port_prefix() -> None:
    assert encode_data(b"GET / HTTP/1.1\r\n") == b"\x00GET / HTTP/1.1\r\n"
    assert encode_data(b"") == b"\x00"


def test_each_channel_opens_with_its_port_then_carries_payload() -> None:
    decoder = PortForwardDecoder(8888)
    assert decoder.feed(bytes([DATA_CHANNEL]) + PORT_8888) == []
    assert decoder.feed(bytes([ERROR_CHANNEL]) + PORT_8888) == []
    assert decoder.feed(b"\x00HTTP/1.1 200 OK") == [PortForwardData(b"HTTP/1.1 200 OK")]
    # after the announcement, bytes that look like a port are payload
    assert decoder.feed(b"\x00" + PORT_8888) == [PortForwardData(PORT_8888)]
    assert decoder.feed(b"\x01an error occurred forwarding 8888 -> 8888: connection refused") == [
        PortForwardFailure("an error occurred forwarding 8888 -> 8888: connection refused")
    ]


def test_port_and_payload_in_the_first_message() -> None:
    decoder = PortForwardDecoder(8888)
    assert decoder.feed(b"\x00" + PORT_8888 + b"data") == [PortForwardData(b"data")]
    assert decoder.feed(b"\x01" + PORT_8888 + b"oops") == [PortForwardFailure("oops")]


def test_error_text_is_decoded_leniently() -> None:
    decoder = PortForwardDecoder(80)
    decoder.feed(b"\x01" + (80).to_bytes(2, "little"))
    assert decoder.feed(b"\x01bad \xff byte") == [PortForwardFailure("bad \ufffd byte")]


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"", "empty"),
        (b"\x02" + PORT_8888, "unknown channel 2"),
        (b"\x00\xb8", "without its port"),
        (b"\x00" + (8889).to_bytes(2, "little"), "port 8889, not 8888"),
    ],
)
def test_protocol_violations_are_typed_errors(message: bytes, error: str) -> None:
    with pytest.raises(PortForwardProtocolError, match=error):
        PortForwardDecoder(8888).feed(message)


def test_refusals_name_the_missing_permission() -> None:
    assert "`create` on `pods/portforward`" in _refusal(403, "labs/alice-lab")
    assert "labs/alice-lab" in _refusal(403, "labs/alice-lab")
    assert "not found" in _refusal(404, "labs/x")
    assert "401" in _refusal(401, "labs/x")
    assert "HTTP 500" in _refusal(500, "labs/x")
