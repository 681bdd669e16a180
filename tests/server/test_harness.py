"""The in-memory harness itself: its one encoder and decoder agree, and both transports
give the same client API the same answers."""

from __future__ import annotations

import pytest

from tests.support.harness import (
    CLOSE,
    MASK,
    T0,
    TEXT,
    ZERO_MASK,
    Frame,
    FrameDecoder,
    Harness,
    Transport,
    client_frame,
)

TRANSPORTS: list[Transport] = ["direct", "pumped"]


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
@pytest.mark.parametrize("mask", [MASK, ZERO_MASK])
def test_the_decoder_reads_what_the_encoder_writes_cut_anywhere(length: int, mask: bytes) -> None:
    payload = bytes(i % 251 for i in range(length))
    data = client_frame(payload, mask=mask) + client_frame(b"\x03\xe8", CLOSE, mask=mask)
    decoder = FrameDecoder()
    frames = decoder.feed(data[:1]) + decoder.feed(data[1:7]) + decoder.feed(data[7:])
    assert frames == [Frame(TEXT, payload), Frame(CLOSE, b"\x03\xe8")]
    assert decoder.buffer == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_heartbeat_disconnect(transport: Transport) -> None:
    h = Harness(transport=transport)
    client = h.connect("/?userId=alice")
    assert client.status == 101
    assert client.read_message()["type"] == "CONNECT"
    client.send({"type": "HEARTBEAT"})
    h.settle()
    assert client.read_message()["type"] == "HEARTBEAT_ACK"
    client.send({"type": "DISCONNECT"})
    h.flush()  # the client echoes the close; the server then drops the connection
    assert (client.close_code, client.lost) == (1000, True)
    assert [m["type"] for m in client.messages] == ["CONNECT", "HEARTBEAT_ACK"]
    assert h.model.connection_count == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_dropped_client_is_lost_to_the_server(transport: Transport) -> None:
    h = Harness(transport=transport)
    client = h.connect()
    assert h.model.connection_count == 1
    client.drop()
    h.flush()
    assert client.lost and client.close_code is None
    assert h.model.connection_count == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_plain_http(transport: Transport) -> None:
    h = Harness(transport=transport)
    client = h.http("/health")
    assert client.status == 200 and b'"status":"OK"' in client.body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_that_stops_reading_fills_the_servers_send_buffer(transport: Transport) -> None:
    h = Harness(transport=transport, rate_messages=1000)
    watcher = h.user("watcher", subscribe=["alice"])
    alice = h.user("alice")
    watcher.stop_reading()
    seen = len(watcher.frames)
    for i in range(30):  # about 100 KiB of diffs, well under the 4 MiB --max-send-buffer
        metadata = {"i": i, "pad": "x" * 3000}
        alice.send(
            {"type": "PRESENCE_UPDATE", "payload": {"status": "online", "metadata": metadata}}
        )
    h.settle()
    assert len(watcher.frames) == seen
    assert watcher.ws.backed_up  # paused, as TCP pauses its producer past 64 KiB
    watcher.start_reading()
    h.settle()
    assert not watcher.ws.backed_up
    assert len(watcher.of_type("PRESENCE_DIFF")) == 1 + 30


def test_advance_lands_exactly_and_fires_timers_on_the_way() -> None:
    h = Harness()
    fired: list[float] = []
    h.clock.callLater(60, lambda: fired.append(h.clock.seconds()))
    h.advance(89.9)
    h.advance(0.1)
    assert h.clock.seconds() == T0 + 89.9 + 0.1
    assert fired == [T0 + 60]
