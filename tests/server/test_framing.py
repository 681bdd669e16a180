"""Our fast path for small text frames must agree with Autobahn's parser on everything:
masks, pipelining, frames split across reads, fragments, control frames, bad input."""

from __future__ import annotations

import os
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.server.frames import text_frame, unmask
from tests.support.harness import PING, ZERO_MASK, Client, Harness, client_frame

HEARTBEAT = b'{"type":"HEARTBEAT"}'


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes = ZERO_MASK) -> bytes:
    """A client frame, by default with the zero mask the RFC allows (and the fast path
    short-cuts)."""
    return client_frame(payload, opcode, fin=fin, mask=mask)


@pytest.fixture
def d() -> Harness:
    return Harness(transport="pumped")


def deliver(d: Harness, client: Client, data: bytes, chunks: list[int] | None = None) -> None:
    """Hand raw bytes to the server protocol, optionally cut into pieces."""
    cuts = [0, *sorted(set(c for c in (chunks or []) if 0 < c < len(data))), len(data)]
    for a, b in pairwise(cuts):
        client.feed(data[a:b])
        d.flush()


def test_unmask_matches_the_rfc() -> None:
    mask = os.urandom(4)
    payload = os.urandom(37)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert unmask(masked, mask) == payload
    assert unmask(b"", mask) == b""


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_text_frame_lengths(length: int) -> None:
    framed = text_frame(b"x" * length)
    assert framed[0] == 0x81
    header = 2 if length < 126 else 4 if length < 65536 else 10
    assert len(framed) == header + length


@settings(max_examples=60, deadline=None)
@given(
    masks=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=6),
    pad=st.integers(0, 300),
    cuts=st.lists(st.integers(1, 2000), max_size=5),
)
def test_pipelined_masked_frames_in_any_pieces(
    masks: list[bytes], pad: int, cuts: list[int]
) -> None:
    d = Harness(transport="pumped")
    client = d.user("alice")
    message = b'{"type":"HEARTBEAT","pad":"' + b"p" * pad + b'"}'
    data = b"".join(frame(1, message, mask=m) for m in masks)
    deliver(d, client, data, cuts)
    acks = client.of_type("HEARTBEAT_ACK")
    assert len(acks) == len(masks)
    assert client.close_code is None


def test_ping_between_text_frames_is_answered_and_counts(d: Harness) -> None:
    client = d.user("alice")
    data = frame(1, HEARTBEAT, mask=b"abcd") + frame(PING, b"hi") + frame(1, HEARTBEAT)
    deliver(d, client, data)
    assert len(client.of_type("HEARTBEAT_ACK")) == 2
    assert client.close_code is None


def test_fragmented_message_is_reassembled(d: Harness) -> None:
    client = d.user("alice")
    data = frame(1, HEARTBEAT[:5], fin=False, mask=b"wxyz") + frame(0, HEARTBEAT[5:])
    deliver(d, client, data + frame(1, HEARTBEAT))
    assert len(client.of_type("HEARTBEAT_ACK")) == 2


def test_invalid_utf8_closes_1007(d: Harness) -> None:
    client = d.user("alice")
    deliver(d, client, frame(1, b'{"type":"\xff"}', mask=b"abcd"))
    assert client.close_code == 1007


def test_unmasked_client_frame_is_a_protocol_error(d: Harness) -> None:
    client = d.user("alice")
    deliver(d, client, b"\x81" + bytes([len(HEARTBEAT)]) + HEARTBEAT)
    assert client.close_code == 1002


def test_rsv_bits_are_a_protocol_error(d: Harness) -> None:
    client = d.user("alice")
    deliver(d, client, b"\xc1" + frame(1, HEARTBEAT)[1:])
    assert client.close_code == 1002


def test_frame_over_the_limit_closes_1009() -> None:
    small = Harness(transport="pumped", max_message_size=300)
    client = small.user("alice")
    deliver(
        small, client, frame(1, b'{"type":"HEARTBEAT","p":"' + b"x" * 400 + b'"}', mask=b"abcd")
    )
    assert client.close_code == 1009


def test_text_after_disconnect_is_not_handled(d: Harness) -> None:
    client = d.user("alice")
    deliver(d, client, frame(1, b'{"type":"DISCONNECT"}') + frame(1, HEARTBEAT))
    assert client.close_code == 1000
    assert client.of_type("HEARTBEAT_ACK") == []
