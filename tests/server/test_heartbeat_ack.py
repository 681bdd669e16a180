"""HEARTBEAT_ACK is formatted and framed once a millisecond: every answer still carries
exactly the timestamp wire.iso gives for the moment it was handled."""

from __future__ import annotations

import zlib

import pytest

from presence.core import wire
from tests.support.harness import TEXT, FrameDecoder, Harness


def heartbeat_stamp(harness: Harness) -> str:
    client = harness.connect(f"/?userId=u{harness.clock.seconds()!r}")
    client.read_messages()
    client.send({"type": "HEARTBEAT"})
    ack = client.read_message()
    assert ack["type"] == "HEARTBEAT_ACK"
    stamp: str = ack["timestamp"]
    return stamp


@pytest.mark.parametrize(
    "steps", [[0.0, 0.0, 0.0], [0.0004, 0.0004, 0.0004], [0.001, 0.001], [1.0, 0.0], [0.9995]]
)
def test_every_ack_has_the_timestamp_of_its_moment(steps: list[float]) -> None:
    harness = Harness()
    for step in steps:
        harness.clock.advance(step)
        assert heartbeat_stamp(harness) == wire.iso(harness.clock.seconds())


def test_same_millisecond_other_second_is_not_reused() -> None:
    harness = Harness()
    first = heartbeat_stamp(harness)
    harness.clock.advance(1.0)  # same millisecond within the next second
    second = heartbeat_stamp(harness)
    assert first != second
    assert second == wire.iso(harness.clock.seconds())


def test_many_connections_in_one_millisecond_all_get_it() -> None:
    harness = Harness()
    clients = [harness.connect(f"/?userId=c{i}") for i in range(5)]
    for client in clients:
        client.read_messages()
        client.send({"type": "HEARTBEAT"})
    stamp = wire.iso(harness.clock.seconds())
    assert [c.read_message() for c in clients] == [
        {"type": "HEARTBEAT_ACK", "timestamp": stamp}
    ] * 5


def test_a_compressed_connection_gets_a_compressed_ack() -> None:
    harness = Harness(compression=True)
    client = harness.connect(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert b"permessage-deflate" in client.response_headers.lower()
    heartbeat_stamp(Harness())  # the uncompressed frame of this millisecond is cached now
    client.send({"type": "HEARTBEAT"})
    # The frames as sent, not inflated by the client: CONNECT, then the ack, in one deflate
    # stream (context takeover).
    _, _, after_head = client.link.server.value().partition(b"\r\n\r\n")
    frames = FrameDecoder().feed(after_head)
    assert [opcode for opcode, _ in frames] == [TEXT, TEXT]
    inflate = zlib.decompressobj(-15)
    messages = [inflate.decompress(payload + b"\x00\x00\xff\xff") for _, payload in frames]
    assert b'"CONNECT"' in messages[0]
    assert messages[1] == wire.heartbeat_ack(wire.iso(harness.clock.seconds()))
