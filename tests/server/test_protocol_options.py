"""Autobahn's protocol options live once on the factory's protocol class: every connection
reads the factory's values, and none carries a copy of its own."""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketServerProtocol

from tests.support.harness import Harness


def test_every_option_is_the_factorys() -> None:
    harness = Harness(max_message_size=1000)
    client = harness.connect()
    assert client.status == 101
    proto, factory = client.ws, harness.factory
    for name in WebSocketServerProtocol.CONFIG_ATTRS:
        assert getattr(proto, name) == getattr(factory, name), name
        assert name not in proto.__dict__, name
    assert proto.maxMessagePayloadSize == 1000
    assert proto.openHandshakeTimeout == 5.0


def test_options_set_later_reach_new_connections() -> None:
    harness = Harness()
    harness.factory.setProtocolOptions(closeHandshakeTimeout=7.0)
    client = harness.connect()
    assert client.ws.closeHandshakeTimeout == 7.0


def test_a_message_over_the_cap_still_closes_1009() -> None:
    harness = Harness(max_message_size=100)
    client = harness.connect()
    client.read_messages()
    client.send_frame(b'{"type":"HEARTBEAT","pad":"' + b"x" * 200 + b'"}')
    client.read_frames()
    assert client.close_code == 1009


def test_compression_is_still_negotiated() -> None:
    """perMessageCompressionAccept is a function: on the class it must not become a method."""
    harness = Harness(compression=True)
    client = harness.connect(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert client.status == 101
    assert b"permessage-deflate" in client.response_headers.lower()
    assert client.ws._perMessageCompress is not None


def test_no_compression_without_the_option() -> None:
    harness = Harness()
    client = harness.connect(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert client.status == 101
    assert b"permessage-deflate" not in client.response_headers.lower()
