"""The answers to the frames of one read go out in one write: the same bytes, in the same
order, as when every frame came in a read of its own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from presence.server import fastpath
from tests.support.harness import CLOSE as CLOSE_OP
from tests.support.harness import TEXT, Client, FrameDecoder, Harness, client_frame


def frame(message: Any) -> bytes:
    return client_frame(json.dumps(message).encode())


HEARTBEAT = frame({"type": "HEARTBEAT"})
PING = client_frame(b"hi", opcode=9)
CLOSE = client_frame((1000).to_bytes(2, "big") + b"bye", opcode=8)
UPDATE = frame({"type": "PRESENCE_UPDATE", "payload": {"status": "away"}})
SUBSCRIBE_SELF = frame({"type": "SUBSCRIBE", "payload": {"userIds": ["alice"]}})

SEQUENCES: dict[str, list[bytes]] = {
    "heartbeats": [HEARTBEAT] * 5,
    "then a ping": [HEARTBEAT, HEARTBEAT, PING, HEARTBEAT],
    "then a close": [HEARTBEAT, HEARTBEAT, CLOSE],
    "then DISCONNECT": [HEARTBEAT, frame({"type": "DISCONNECT"}), HEARTBEAT],
    "errors": [client_frame(b"not json"), HEARTBEAT, frame({"type": "NOPE"})],
    "binary": [HEARTBEAT, client_frame(b"\x00", opcode=2), HEARTBEAT],
    "bad utf-8": [HEARTBEAT, client_frame(b"\xff\xfe"), HEARTBEAT],
    "own diffs": [SUBSCRIBE_SELF, UPDATE, HEARTBEAT, UPDATE],
    "over the rate limit": [HEARTBEAT] * 20,
    "far over the rate limit": [HEARTBEAT] * 40,
    "many answers": [HEARTBEAT] * 200,  # past CORK_LIMIT
    "a partial frame": [HEARTBEAT, HEARTBEAT, HEARTBEAT[:5]],
}


def connect(config: dict[str, Any]) -> tuple[Harness, Client]:
    harness = Harness(**config)
    watcher = harness.connect("/?userId=alice")
    return harness, watcher


def run(chunks: list[bytes], together: bool, config: dict[str, Any]) -> tuple[Any, ...]:
    _, client = connect(config)
    client.read_messages()
    server = client.link.server  # the server's end: value() keeps every byte written
    writes: list[bytes] = []
    write = server.write

    def counting(data: bytes) -> None:
        writes.append(bytes(data))
        write(data)

    server.write = counting  # type: ignore[method-assign]
    if together:
        client.feed(b"".join(chunks))
    else:
        for chunk in chunks:
            client.feed(chunk)
    return server.value(), server.disconnecting, len(writes)


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_the_same_bytes_in_one_read_as_in_many(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("presence.server.ws.os.urandom", lambda n: b"\x01" * n)
    config = {"rate_messages": 5, "rate_seconds": 10} if "rate" in name else {}
    config.setdefault("rate_messages", 1000)
    apart = run(SEQUENCES[name], False, config)
    together = run(SEQUENCES[name], True, config)
    assert together[:2] == apart[:2]
    assert together[2] <= apart[2]


def test_heartbeats_in_one_read_are_answered_in_one_write() -> None:
    _, _, writes = run([HEARTBEAT] * 5, True, {})
    assert writes == 1
    _, _, writes = run([HEARTBEAT] * 5, False, {})
    assert writes == 5


def test_a_big_cork_goes_out_in_pieces() -> None:
    _, _, writes = run([HEARTBEAT] * 200, True, {"rate_messages": 1000})
    ack = len(b'{"type":"HEARTBEAT_ACK","timestamp":"2023-11-14T22:13:20.000Z"}') + 2
    assert writes == -(-200 * ack // (fastpath.CORK_LIMIT + ack))  # each just over the limit


def test_nothing_is_corked_once_a_read_is_done() -> None:
    _, client = connect({})
    client.read_messages()
    client.feed(HEARTBEAT * 3)
    assert client.ws._cork is None and client.ws._corked == 0
    assert len(client.read_messages()) == 3
    client.ws.send(b'{"type":"X"}')  # from elsewhere (a diff, say): out at once
    assert client.read_messages() == [{"type": "X"}]


def stalled(together: bool) -> tuple[int, int | None, float]:
    harness = Harness(max_send_buffer=64 * 1024, rate_messages=100_000, rate_seconds=1)
    client = harness.connect("/?userId=alice")
    client.read_messages()
    server = client.link.server
    start = len(server.value())
    client.stop_reading()
    if together:
        client.feed(HEARTBEAT * 2000)  # about 130 KiB of answers the client never reads
    else:
        for _ in range(2000):
            client.feed(HEARTBEAT)
    # What the server wrote, read or not: the client itself has received none of it.
    frames = FrameDecoder().feed(server.value()[start:])
    closes = [payload for opcode, payload in frames if opcode == CLOSE_OP]
    close_code = int.from_bytes(closes[-1][:2], "big") if closes and closes[-1] else None
    close_reason = closes[-1][2:].decode() if closes else None
    assert frames[-1].opcode == CLOSE_OP and "not reading" in (close_reason or "")
    acks = sum(1 for opcode, _ in frames if opcode == TEXT)
    return acks, close_code, harness.error_count("slow_reader")


def test_a_client_that_does_not_read_is_closed_at_the_limit_as_before() -> None:
    apart, together = stalled(False), stalled(True)
    assert apart[1:] == together[1:] == (1008, 1)
    ack = len(b'{"type":"HEARTBEAT_ACK","timestamp":"2023-11-14T22:13:20.000Z"}') + 2
    # At most one cork's worth of answers later than frame by frame, not all 2000.
    assert apart[0] <= together[0] <= apart[0] + fastpath.CORK_LIMIT // ack + 1
