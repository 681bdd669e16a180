"""The protocol in memory: the real Site and Autobahn protocol over the pumped two-sided
transport, every timer on a task.Clock. Timeouts are tested by advancing the clock, never
by sleeping."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from prometheus_client import generate_latest

from presence.server.frames import text_frame
from presence.server.ws import PresenceProtocol
from tests.support.harness import BINARY, CLOSE, PING, Client, Harness


def pumped(**config: Any) -> Harness:
    return Harness(transport="pumped", **config)


@pytest.fixture
def d() -> Harness:
    return pumped(heartbeat_interval=1, heartbeat_timeout=3, offline_grace=5, max_message_size=1024)


def sample(d: Harness, name: str) -> float:
    """A sample as /metrics renders it, e.g. 'ws_errors_total{reason="internal"}'."""
    for line in generate_latest(d.metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def test_connect_message(d: Harness) -> None:
    a, b = d.user("alice"), d.user("alice")
    (connect,) = a.messages
    assert connect["type"] == "CONNECT" and connect["userId"] == "alice"
    assert connect["heartbeatTimeout"] == 3 and connect["heartbeatInterval"] == 1
    assert connect["timestamp"].endswith("Z")
    assert connect["connectionId"] != b.messages[0]["connectionId"]


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", "missing userId"),
        ("?userId=", "missing userId"),
        ("?other=1", "missing userId"),
        ("?userId=a%20b", "invalid userId"),
        ("?userId=" + "x" * 129, "invalid userId"),
        ("?userId=%07bell", "invalid userId"),
    ],
)
def test_bad_user_id_is_closed_1002_without_connect(d: Harness, query: str, reason: str) -> None:
    client = d.connect("/" + query)
    assert client.status == 101
    assert client.messages == []
    assert (client.close_code, client.close_reason) == (1002, reason)
    assert d.model.connection_count == 0


def test_heartbeat_is_acknowledged(d: Harness) -> None:
    a = d.user("alice")
    a.send({"type": "HEARTBEAT", "timestamp": "2024-12-18T10:00:00Z"})
    d.flush()
    assert a.messages[-1]["type"] == "HEARTBEAT_ACK"


def test_silent_connection_is_closed_4408_then_dropped(d: Harness) -> None:
    a = d.user("alice", answer_close=False)
    d.advance(2.5)
    assert a.close_code is None
    d.advance(1.5)  # past the 3 s timeout, within one reaper interval
    assert (a.close_code, a.close_reason) == (4408, "heartbeat timeout")
    assert not a.lost
    d.advance(3.5)  # the client never answered the close: the server drops TCP
    assert a.lost
    assert d.model.connection_count == 0


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [(0.5, 1.0), (1.0, 3.0), (15.0, 45.0)],
    ids=["strict", "short", "defaults"],
)
def test_the_close_comes_a_timeout_after_the_last_frame_within_a_reaper_interval(
    interval: float, timeout: float
) -> None:
    d = pumped(heartbeat_interval=interval, heartbeat_timeout=timeout)
    reaper_interval = min(1.0, timeout / 4)
    a = d.user("alice", answer_close=False)
    d.advance(timeout / 2)
    a.send({"type": "HEARTBEAT"})  # the timeout runs from the last inbound frame
    d.flush()
    d.advance(timeout - 0.01)
    assert a.close_code is None
    d.advance(0.01 + reaper_interval)
    assert (a.close_code, a.close_reason) == (4408, "heartbeat timeout")


@pytest.mark.parametrize("opcode", [1, PING])  # a text message, a ping: any frame is liveness
def test_any_inbound_frame_keeps_a_connection_alive(d: Harness, opcode: int) -> None:
    a = d.user("alice")
    for _ in range(8):
        d.advance(1)
        a.send_frame(b'{"type":"HEARTBEAT"}' if opcode == 1 else b"ping", opcode)
        d.flush()
    assert a.close_code is None and not a.lost


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", "INVALID_JSON"),
        (b"[1,2]", "INVALID_JSON"),
        (b'{"type":"NOPE"}', "UNKNOWN_TYPE"),
        (b'{"type":7}', "INVALID_MESSAGE"),
        (b'{"type":"PRESENCE_UPDATE","payload":{"status":"sleeping"}}', "INVALID_STATUS"),
        (b'{"type":"PRESENCE_UPDATE"}', "INVALID_PAYLOAD"),
        (
            b'{"type":"PRESENCE_UPDATE","payload":{"status":"away","metadata":[]}}',
            "INVALID_PAYLOAD",
        ),
        (b'{"type":"SUBSCRIBE","payload":{"userIds":"alice"}}', "INVALID_PAYLOAD"),
        (b'{"type":"SUBSCRIBE","payload":{"userIds":["a b"]}}', "INVALID_USER_ID"),
        (b'{"type":"HEARTBEAT","x":' + b"[" * 20 + b"]" * 20 + b"}", "TOO_DEEP"),
        (b'{"type":"HEARTBEAT","x":1e999}', "INVALID_JSON"),
    ],
)
def test_bad_messages_get_an_error_and_keep_the_connection(
    d: Harness, payload: bytes, code: str
) -> None:
    a = d.user("alice")
    a.send_frame(payload)
    a.send({"type": "HEARTBEAT"})
    d.flush()
    error, ack = a.messages[-2:]
    assert error["type"] == "ERROR" and error["code"] == code and error["message"]
    assert ack["type"] == "HEARTBEAT_ACK"
    assert a.close_code is None
    assert sample(d, 'ws_errors_total{reason="invalid_message"}') == 1


def test_binary_frame_closes_1003(d: Harness) -> None:
    a = d.user("alice")
    a.send_frame(b"\x00\x01", BINARY)
    d.flush()
    assert a.close_code == 1003


def test_oversized_message_closes_1009(d: Harness) -> None:
    a, b = d.user("alice"), d.user("bob")
    a.send_frame(b'{"type":"HEARTBEAT","pad":"' + b"x" * 1100 + b'"}')
    b.send({"type": "HEARTBEAT"})
    d.flush()
    assert a.close_code == 1009
    assert b.close_code is None and b.messages[-1]["type"] == "HEARTBEAT_ACK"


def test_internal_error_closes_only_that_connection_1011(
    d: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = d.user("alice"), d.user("bob")

    def explode(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(d.hub, "update", explode)
    a.send({"type": "PRESENCE_UPDATE", "payload": {"status": "away"}})
    b.send({"type": "HEARTBEAT"})
    d.flush()
    assert a.close_code == 1011
    assert b.close_code is None and b.messages[-1]["type"] == "HEARTBEAT_ACK"
    assert sample(d, 'ws_errors_total{reason="internal"}') == 1


def test_disconnect_closes_1000_and_watchers_see_offline_at_once(d: Harness) -> None:
    watcher = d.user("bob", subscribe=["alice"])
    a = d.user("alice")
    a.send({"type": "DISCONNECT", "timestamp": "2024-12-18T10:00:00Z"})
    d.flush()
    assert a.close_code == 1000
    diffs = watcher.of_type("PRESENCE_DIFF")
    assert [x["status"] for x in diffs] == ["online", "offline"]
    assert diffs[-1]["lastSeen"] is not None and diffs[-1]["connections"] == 0


def test_client_close_1000_is_offline_at_once(d: Harness) -> None:
    watcher = d.user("bob", subscribe=["alice"])
    a = d.user("alice")
    a.send_frame(b"\x03\xe8", CLOSE)
    d.flush()
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online", "offline"]


def drop(d: Harness, client: Client) -> None:
    client.drop()
    d.flush()


def keep_alive(d: Harness, client: Client, seconds: int) -> None:
    """Let time pass while this client heartbeats every second."""
    for _ in range(seconds):
        d.advance(1)
        client.send({"type": "HEARTBEAT"})
    d.flush()


def test_abrupt_drop_waits_out_the_grace(d: Harness) -> None:
    watcher = d.user("bob", subscribe=["alice"])
    drop(d, d.user("alice"))
    keep_alive(d, watcher, 4)
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online"]
    keep_alive(d, watcher, 2)
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online", "offline"]


def test_reconnect_within_grace_is_invisible(d: Harness) -> None:
    watcher = d.user("bob", subscribe=["alice"])
    drop(d, d.user("alice"))
    keep_alive(d, watcher, 2)
    alice = d.user("alice")
    for _ in range(8):
        keep_alive(d, watcher, 1)
        alice.send({"type": "HEARTBEAT"})
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online"]
    assert sample(d, "presence_offline_suppressed_total") == 1


def test_heartbeat_timeout_gets_the_grace_too(d: Harness) -> None:
    watcher = d.user("bob", subscribe=["alice"])
    d.user("alice")
    keep_alive(d, watcher, 5)  # alice goes quiet: closed at ~3.75 s, then the grace
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online"]
    keep_alive(d, watcher, 5)
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["online", "offline"]


def test_subscribe_state_then_diffs_in_order(d: Harness) -> None:
    a = d.user("alice")
    watcher = d.user("bob", subscribe=["alice", "carol"])
    (state,) = watcher.of_type("PRESENCE_STATE")
    assert state["users"] == {
        "alice": {"status": "online", "metadata": {}, "lastSeen": None, "connections": 1},
        "carol": {"status": "offline", "metadata": {}, "lastSeen": None, "connections": 0},
    }
    for status in ("away", "busy", "busy", "online"):
        a.send({"type": "PRESENCE_UPDATE", "payload": {"status": status, "metadata": {"s": 1}}})
    d.flush()
    assert [x["status"] for x in watcher.of_type("PRESENCE_DIFF")] == ["away", "busy", "online"]
    watcher.send({"type": "UNSUBSCRIBE", "payload": {"userIds": ["alice"]}})
    d.flush()
    a.send({"type": "PRESENCE_UPDATE", "payload": {"status": "away"}})
    d.flush()
    assert len(watcher.of_type("PRESENCE_DIFF")) == 3


def test_too_many_subscriptions(d: Harness) -> None:
    small = pumped(max_subscriptions=2)
    watcher = small.user("bob", subscribe=["a"])
    watcher.send({"type": "SUBSCRIBE", "payload": {"userIds": ["b", "c"]}})
    small.flush()
    assert watcher.messages[-1]["code"] == "TOO_MANY_SUBSCRIPTIONS"
    assert small.model.subscription_count == 1


def test_metrics_follow_connections_and_messages(d: Harness) -> None:
    a1, _a2, b = d.user("alice"), d.user("alice"), d.user("bob")
    assert sample(d, "ws_connections_total") == 3
    assert sample(d, "ws_connections_current") == 3
    assert sample(d, "ws_clients_current") == 2
    a1.send({"type": "HEARTBEAT"})
    b.send({"type": "HEARTBEAT"})
    d.flush()
    assert sample(d, 'ws_messages_total{type="HEARTBEAT"}') == 2
    assert sample(d, "ws_message_size_bytes_count") == 2
    assert sample(d, "ws_latency_seconds_count") == 2
    a1.send({"type": "DISCONNECT"})
    d.flush()
    assert sample(d, "ws_connections_current") == 2
    assert sample(d, "ws_clients_current") == 2
    metrics_text = generate_latest(d.metrics.registry).decode()
    assert "alice" not in metrics_text and "bob" not in metrics_text


def test_shutdown_closes_everyone_1001(d: Harness) -> None:
    clients = [d.user(f"u{i}") for i in range(3)]
    done = d.shutdown()
    d.flush()
    assert [c.close_code for c in clients] == [1001, 1001, 1001]
    fired: list[object] = []
    done.addCallback(fired.append)
    d.advance(0.5)
    assert fired == [None]


def test_shutdown_with_no_clients_is_done_at_once(d: Harness) -> None:
    fired: list[object] = []
    d.shutdown().addCallback(fired.append)
    assert fired == [None]  # no clock time passed: it waits for no one


@pytest.mark.parametrize(
    ("request_line", "status", "body"),
    [
        (b"GET / HTTP/1.1", b"426", b'"error":"UPGRADE_REQUIRED"'),
        (b"GET /nope HTTP/1.1", b"404", b'"error":"NOT_FOUND"'),
        (b"GET /health HTTP/1.1", b"200", b'"status":"OK"'),
        (b"GET /presence/alice HTTP/1.1", b"200", b'"userId":"alice","status":"online"'),
        (b"GET /presence?userIds=alice,bob HTTP/1.1", b"200", b'"bob":{"status":"offline"'),
        (b"GET /presence?userIds=a%20b HTTP/1.1", b"400", b'"error":"INVALID_USER_ID"'),
        (b"GET /presence HTTP/1.1", b"400", b'"error":"INVALID_QUERY"'),
    ],
)
def test_http_resources(d: Harness, request_line: bytes, status: bytes, body: bytes) -> None:
    d.user("alice")
    client = d.open()
    client.feed(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    d.flush()
    assert client.raw.split(b" ", 2)[1] == status
    assert body in client.raw
    assert client.lost


def test_presence_query_is_capped_at_1000_ids(d: Harness) -> None:
    ids = ",".join(f"u{i}" for i in range(1001)).encode()
    client = d.open()
    client.feed(b"GET /presence?userIds=" + ids + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    d.flush()
    assert client.status == 400
    assert b"TOO_MANY_USER_IDS" in client.body


def test_protocol_class_is_ours(d: Harness) -> None:
    assert issubclass(d.factory.protocol, PresenceProtocol)


def test_large_messages_use_the_longer_frame_lengths(d: Harness) -> None:
    big = pumped(max_message_size=200_000)
    ids = [f"user-with-a-longish-id-{i:04d}" for i in range(1000)]
    watcher = big.user("w")
    watcher.send({"type": "SUBSCRIBE", "payload": {"userIds": ids}})
    big.flush()
    (state,) = watcher.of_type("PRESENCE_STATE")
    assert list(state["users"]) == ids  # over 65535 bytes: the 8-byte length form
    watcher.send({"type": "SUBSCRIBE", "payload": {"userIds": ids[:3]}})
    big.flush()
    assert len(watcher.of_type("PRESENCE_STATE")[-1]["users"]) == 3  # the 2-byte form


def test_the_http_channel_is_released_after_the_upgrade(d: Harness) -> None:
    """Only the WebSocket protocol stays per connection: the HTTP channel that carried the
    handshake (and its request) must not live on through the Site's idle timer or as the
    transport's producer."""
    client: Client = d.connect("/?userId=alice")
    assert client.status == 101
    gc.collect()
    assert client.http_channel is None
    client.send({"type": "HEARTBEAT"})
    d.flush()
    assert client.messages[-1]["type"] == "HEARTBEAT_ACK"


def test_an_open_connection_keeps_no_handshake_data(d: Harness) -> None:
    """Memory per connection: Autobahn's copy of the opening handshake and its empty send
    queue are dropped once the connection is open; its queued-send path still works."""
    client = d.user("alice")
    protocol = client.ws
    assert not hasattr(protocol, "http_request_data")
    assert not hasattr(protocol, "http_headers")
    assert not protocol.send_queue
    protocol.sendData(text_frame(b'{"type":"X"}'), sync=True)  # Autobahn's own queue path
    d.flush()
    assert client.messages[-1] == {"type": "X"}
