"""HEARTBEAT_ACK is formatted and framed once a millisecond: every answer still carries
exactly the timestamp wire.iso gives for the moment it was handled."""

from __future__ import annotations

import zlib

import pytest

from presence.core import wire
from tests.support.memws import Server


def heartbeat_stamp(server: Server) -> str:
    client = server.connect(f"/?userId=u{server.clock.seconds()!r}")
    client.messages()
    client.send({"type": "HEARTBEAT"})
    ack = client.message()
    assert ack["type"] == "HEARTBEAT_ACK"
    stamp: str = ack["timestamp"]
    return stamp


@pytest.mark.parametrize(
    "steps", [[0.0, 0.0, 0.0], [0.0004, 0.0004, 0.0004], [0.001, 0.001], [1.0, 0.0], [0.9995]]
)
def test_every_ack_has_the_timestamp_of_its_moment(steps: list[float]) -> None:
    server = Server()
    for step in steps:
        server.clock.advance(step)
        assert heartbeat_stamp(server) == wire.iso(server.clock.seconds())


def test_same_millisecond_other_second_is_not_reused() -> None:
    server = Server()
    first = heartbeat_stamp(server)
    server.clock.advance(1.0)  # same millisecond within the next second
    second = heartbeat_stamp(server)
    assert first != second
    assert second == wire.iso(server.clock.seconds())


def test_many_connections_in_one_millisecond_all_get_it() -> None:
    server = Server()
    clients = [server.connect(f"/?userId=c{i}") for i in range(5)]
    for client in clients:
        client.messages()
        client.send({"type": "HEARTBEAT"})
    stamp = wire.iso(server.clock.seconds())
    assert [c.message() for c in clients] == [{"type": "HEARTBEAT_ACK", "timestamp": stamp}] * 5


def test_a_compressed_connection_gets_a_compressed_ack() -> None:
    server = Server(compression=True)
    client = server.connect(headers={"Sec-WebSocket-Extensions": "permessage-deflate"})
    assert b"permessage-deflate" in client.response_headers.lower()
    heartbeat_stamp(Server())  # the uncompressed frame of this millisecond is cached now
    client.send({"type": "HEARTBEAT"})
    frames = client.frames()  # CONNECT, then the ack: one deflate stream (context takeover)
    assert [opcode for opcode, _ in frames] == [1, 1]
    inflate = zlib.decompressobj(-15)
    messages = [inflate.decompress(payload + b"\x00\x00\xff\xff") for _, payload in frames]
    assert b'"CONNECT"' in messages[0]
    assert messages[1] == wire.heartbeat_ack(wire.iso(server.clock.seconds()))
