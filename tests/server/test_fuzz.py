"""Arbitrary JSON and arbitrary bytes at the message handler (through real frames, in
memory): the server only ever answers with its documented messages (ERROR for what it
refuses) or a documented close code, never 1011, and keeps serving."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.harness import Harness, client_frame

SERVER_TYPES = {"CONNECT", "HEARTBEAT_ACK", "ERROR", "PRESENCE_STATE", "PRESENCE_DIFF"}
ERROR_CODES = {
    "INVALID_JSON",
    "INVALID_MESSAGE",
    "UNKNOWN_TYPE",
    "INVALID_STATUS",
    "INVALID_PAYLOAD",
    "INVALID_USER_ID",
    "METADATA_TOO_LARGE",
    "TOO_DEEP",
    "TOO_MANY_SUBSCRIPTIONS",
    "RATE_LIMITED",
    "AUTH_DISABLED",
    "INVALID_TOKEN",
}
# 1000 DISCONNECT, 1002 protocol error, 1003 binary frame, 1007 invalid UTF-8, 1009 too big.
CLOSE_CODES = {1000, 1002, 1003, 1007, 1009}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=40,
)
message_types = st.sampled_from(
    [
        "HEARTBEAT",
        "PRESENCE_UPDATE",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "REFRESH_TOKEN",
        "DISCONNECT",
        "NOPE",
    ]
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["online", "away", "busy", "gone"]) | json_values,
        "metadata": json_values,
        "userIds": st.lists(st.text(max_size=10), max_size=5) | json_values,
        "token": st.text(max_size=30) | json_values,
    },
)
messages = json_values | st.fixed_dictionaries(
    {"type": message_types | json_values}, optional={"payload": payloads | json_values}
)


def check(server: Harness, frames: bytes) -> None:
    client = server.connect("/?userId=fuzz")
    assert client.read_messages()[0]["type"] == "CONNECT"
    client.feed(frames)
    for opcode, payload in client.read_frames():
        if opcode == 1:
            reply: Any = json.loads(payload)
            assert reply["type"] in SERVER_TYPES
            if reply["type"] == "ERROR":
                assert reply["code"] in ERROR_CODES
    if client.close_code is not None:
        assert client.close_code in CLOSE_CODES, (client.close_code, client.close_reason)
    else:
        client.send({"type": "HEARTBEAT"})
        assert client.read_messages()[-1]["type"] == "HEARTBEAT_ACK"
    assert server.error_count("internal") == 0


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(messages, min_size=1, max_size=5))
def test_arbitrary_json(batch: list[Any]) -> None:
    server = Harness(rate_messages=1000, rate_seconds=1)
    check(server, b"".join(client_frame(json.dumps(m).encode()) for m in batch))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=200)), max_size=4))
def test_arbitrary_bytes_as_frames(batch: list[tuple[int, bytes]]) -> None:
    server = Harness(rate_messages=1000, rate_seconds=1, max_message_size=256)
    check(server, b"".join(client_frame(data, opcode) for opcode, data in batch))


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes_on_the_wire(data: bytes) -> None:
    """Not even frames: whatever Autobahn makes of it, nothing reaches past a close."""
    server = Harness(rate_messages=1000, rate_seconds=1)
    client = server.connect("/?userId=fuzz")
    client.read_messages()
    client.feed(data)
    for opcode, payload in client.read_frames():
        if opcode == 1:
            assert json.loads(payload)["type"] in SERVER_TYPES
    assert client.close_code in (None, *CLOSE_CODES)
    assert server.error_count("internal") == 0
