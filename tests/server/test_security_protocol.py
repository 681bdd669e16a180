"""Authentication, origins, rate limits, caps, the opening handshake and slow readers, in
memory: the real daemon on the direct (synchronous) transport and a task.Clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from presence.core.auth import verifier_from_public_key, verifier_from_secret
from tests.support.harness import (
    CLOSE,
    PING,
    T0,
    Client,
    Harness,
    client_frame,
    upgrade_request,
)

SECRET = b"k" * 40
ORIGIN = ("https://app.example.com",)


def token(sub: str = "alice", exp: float = T0 + 60, secret: bytes = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": exp, **claims}, secret, algorithm="HS256")


# For tests that let minutes pass on the clock with a quiet client: the reaper runs, as in
# the daemon, and must not close the connection for silence before the deadline under test.
PATIENT = {"heartbeat_interval": 600.0, "heartbeat_timeout": 1800.0}


def jwt_server(**config: Any) -> Harness:
    return Harness(verifier=verifier_from_secret(SECRET), allowed_origins=ORIGIN, **config)


def assert_refused(client: Client, code: int, reason: str) -> None:
    frames = client.read_frames()
    assert [op for op, _ in frames] == [8], frames  # a close frame and nothing else
    assert (client.close_code, client.close_reason) == (code, reason)


# -- authentication ---------------------------------------------------------------------


def test_token_in_query_and_in_bearer_header() -> None:
    server = jwt_server()
    a = server.connect(f"/?userId=alice&token={token()}")
    assert a.status == 101 and a.read_message()["type"] == "CONNECT"
    b = server.connect("/?userId=bob", {"Authorization": f"Bearer {token('bob')}"})
    assert b.read_message()["type"] == "CONNECT"
    assert server.model.connection_count == 2


def _alg_none() -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    body = json.dumps({"sub": "alice", "exp": T0 + 60}).encode()
    header = b64(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{b64(body)}."


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: token(secret=b"f" * 40), "token signature invalid"),
        (lambda: token(exp=T0 - 1), "token expired"),
        (lambda: token(sub="mallory"), "token sub does not match userId"),
        (_alg_none, "token algorithm not allowed (server accepts HS256)"),
        (
            lambda: jwt.encode({"sub": "alice", "exp": T0 + 60}, b"k" * 64, algorithm="HS512"),
            "token algorithm not allowed (server accepts HS256)",
        ),
        (lambda: token(nbf=T0 + 3600), "token not yet valid (nbf)"),
        (lambda: jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "token has no exp claim"),
        (lambda: "", "missing token"),
    ],
    ids=["forged", "expired", "wrong-sub", "alg-none", "wrong-alg", "nbf", "no-exp", "missing"],
)
def test_bad_tokens_are_refused_with_1008(make: Any, reason: str) -> None:
    server = jwt_server()
    bad = make()
    client = server.connect(f"/?userId=alice&token={bad}" if bad else "/?userId=alice")
    assert client.status == 101
    assert_refused(client, 1008, reason)
    if bad:
        assert bad.encode() not in client.raw.split(b"\r\n\r\n", 1)[1]
    assert server.model.connection_count == 0
    assert server.error_count("auth") == 1


def test_rs256_server_refuses_hs256_signed_with_its_public_key() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = Harness(verifier=verifier_from_public_key(pem), allowed_origins=ORIGIN)
    good = jwt.encode({"sub": "alice", "exp": T0 + 60}, private, algorithm="RS256")
    assert server.connect(f"/?userId=alice&token={good}").read_message()["type"] == "CONNECT"
    confused = jwt.encode({"sub": "alice", "exp": T0 + 60}, b"x" * 64, algorithm="HS256")
    client = server.connect(f"/?userId=alice&token={confused}")
    assert_refused(client, 1008, "token algorithm not allowed (server accepts RS256)")


def test_userid_checks_come_first() -> None:
    server = jwt_server()
    assert_refused(server.connect(f"/?token={token()}"), 1002, "missing userId")


# -- refresh ------------------------------------------------------------------------------


def test_refresh_in_time_keeps_the_connection() -> None:
    server = jwt_server(token_grace=30, **PATIENT)
    client = server.connect(f"/?userId=alice&token={token(exp=T0 + 60)}")
    client.read_messages()
    server.advance(70)  # past exp, within the grace
    client.send({"type": "REFRESH_TOKEN", "payload": {"token": token(exp=T0 + 600)}})
    assert client.read_frames() == []  # no reply when good
    server.advance(100)  # well past the old exp + grace
    client.send({"type": "HEARTBEAT"})
    assert client.read_message()["type"] == "HEARTBEAT_ACK"
    server.advance(600 + 30 - 170)  # the new token's exp + grace
    client.read_frames()
    assert (client.close_code, client.close_reason) == (1008, "token expired")


def test_refresh_too_late_closes_1008() -> None:
    server = jwt_server(token_grace=30, **PATIENT)
    client = server.connect(f"/?userId=alice&token={token(exp=T0 + 60)}")
    client.read_messages()
    server.advance(89.9)
    assert client.read_frames() == []
    server.advance(0.1)
    assert_refused(client, 1008, "token expired")
    # A refresh after the close changes nothing.
    client.send({"type": "REFRESH_TOKEN", "payload": {"token": token(exp=T0 + 600)}})
    assert server.model.connection_count == 0 or client.ws.state != client.ws.STATE_OPEN


def test_bad_refresh_answers_error_and_keeps_the_deadline() -> None:
    server = jwt_server(token_grace=30, **PATIENT)
    client = server.connect(f"/?userId=alice&token={token(exp=T0 + 60)}")
    client.read_messages()
    for bad, reason in [
        (token(sub="bob", exp=T0 + 600), "token sub does not match userId"),
        (token(exp=T0 + 600, secret=b"z" * 40), "token signature invalid"),
        (token(exp=T0 - 5), "token expired"),
    ]:
        client.send({"type": "REFRESH_TOKEN", "payload": {"token": bad}})
        error = client.read_message()
        assert (error["type"], error["code"], error["message"]) == (
            "ERROR",
            "INVALID_TOKEN",
            reason,
        )
    server.advance(89.9)  # the first token's exp + grace, to the tenth of a second
    assert client.read_frames() == []
    assert (client.close_code, client.close_reason) == (None, None)
    server.advance(0.1)
    assert_refused(client, 1008, "token expired")


def test_refresh_without_auth_is_an_error() -> None:
    server = Harness()
    client = server.connect()
    client.read_messages()
    client.send({"type": "REFRESH_TOKEN", "payload": {"token": "x"}})
    assert client.read_message()["code"] == "AUTH_DISABLED"


# -- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://app.example.com"])
def test_foreign_and_null_origins_get_403_and_never_reach_the_model(origin: str) -> None:
    server = jwt_server()
    client = server.connect(f"/?userId=alice&token={token()}", {"Origin": origin})
    assert client.status == 403
    assert server.model.connection_count == 0
    assert server.metrics.registry.get_sample_value("ws_connections_total") == 0


def test_allowed_origin_and_no_origin_are_served() -> None:
    server = jwt_server()
    ok = server.connect(f"/?userId=alice&token={token()}", {"Origin": "https://app.example.com"})
    assert ok.status == 101 and ok.read_message()["type"] == "CONNECT"
    assert server.connect(f"/?userId=alice&token={token()}").status == 101


def test_wildcard_patterns_and_default() -> None:
    server = Harness(allowed_origins=("https://*.example.com", "null"))
    assert server.connect(headers={"Origin": "https://a.example.com"}).status == 101
    assert server.connect(headers={"Origin": "null"}).status == 101
    assert server.connect(headers={"Origin": "https://example.org"}).status == 403
    open_server = Harness()  # --auth none default: *
    assert open_server.connect(headers={"Origin": "https://anything.test"}).status == 101


# -- rate limit ---------------------------------------------------------------------------


def test_rate_limit_refuses_then_recovers_and_spares_others() -> None:
    server = Harness(rate_messages=5, rate_seconds=10)
    noisy, quiet = server.connect("/?userId=noisy"), server.connect("/?userId=quiet")
    noisy.read_messages(), quiet.read_messages()
    for _ in range(6):
        noisy.send({"type": "HEARTBEAT"})
    replies = noisy.read_messages()
    assert [r["type"] for r in replies] == ["HEARTBEAT_ACK"] * 5 + ["ERROR"]
    assert replies[-1]["code"] == "RATE_LIMITED"
    # A dropped message is not acted on.
    noisy.send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    assert noisy.read_message()["code"] == "RATE_LIMITED"
    assert server.model.view("noisy").status == "online"
    quiet.send({"type": "HEARTBEAT"})
    assert quiet.read_message()["type"] == "HEARTBEAT_ACK"
    server.advance(2)  # one token back (5 per 10 s)
    noisy.send({"type": "HEARTBEAT"})
    assert noisy.read_message()["type"] == "HEARTBEAT_ACK"
    assert server.error_count("rate_limited") == 2


def test_past_three_times_the_limit_closes_1008() -> None:
    server = Harness(rate_messages=5, rate_seconds=10)
    client = server.connect()
    client.read_messages()
    for _ in range(15):
        client.send({"type": "HEARTBEAT"})
    assert len(client.read_messages()) == 15  # 5 acks, 10 RATE_LIMITED
    client.send({"type": "HEARTBEAT"})
    assert_refused(client, 1008, "rate limit exceeded")


# -- connection caps ----------------------------------------------------------------------


def test_total_cap_answers_503_and_disturbs_nobody() -> None:
    server = Harness(max_connections=2)
    a, b = server.connect("/?userId=a"), server.connect("/?userId=b")
    c = server.connect("/?userId=c")
    assert (a.status, b.status, c.status) == (101, 101, 503)
    assert b"too many connections" in c.raw
    assert server.model.connection_count == 2
    a.read_messages()
    a.send({"type": "HEARTBEAT"})
    assert a.read_messages()[-1]["type"] == "HEARTBEAT_ACK"
    assert server.error_count("capacity") == 1


def test_per_user_cap_closes_1013() -> None:
    server = Harness(max_connections_per_user=2)
    first = [server.connect("/?userId=alice") for _ in range(2)]
    third = server.connect("/?userId=alice")
    assert_refused(third, 1013, "too many connections for this user")
    assert server.connect("/?userId=bob").read_message()["type"] == "CONNECT"
    assert server.model.connections_of("alice") == 2
    first[0].read_messages()
    first[0].send({"type": "HEARTBEAT"})
    assert first[0].read_message()["type"] == "HEARTBEAT_ACK"


# -- the opening handshake ---------------------------------------------------------------

REQUEST = upgrade_request("/?userId=alice")


def test_byte_a_second_handshake_is_dropped_at_the_deadline() -> None:
    server = Harness()
    client = server.open()
    for i in range(4):
        client.feed(REQUEST[i : i + 1])
        server.advance(1)
    assert not client.aborted
    client.feed(REQUEST[4:5])
    server.advance(1)  # 5 s after the connection began, however busy the client is
    assert client.aborted
    assert server.model.connection_count == 0
    assert server.error_count("handshake") == 1


def test_handshake_within_the_deadline_is_served_and_the_deadline_is_then_off() -> None:
    server = Harness(**PATIENT)
    client = server.open()
    client.feed(REQUEST[:10])
    server.advance(4.9)
    client.feed(REQUEST[10:])
    assert client.status == 101
    server.advance(60)
    assert not client.aborted
    assert server.model.connection_count == 1


def test_oversized_headers_get_400() -> None:
    server = Harness()
    client = server.open()
    status = client.request(headers={f"X-Pad-{i}": "a" * 1000 for i in range(17)})
    assert status == 400
    assert client.disconnecting
    assert server.model.connection_count == 0


def test_one_endless_header_line_is_cut_off() -> None:
    server = Harness()
    client = server.open()
    client.feed(b"GET /?userId=alice HTTP/1.1\r\nX-Long: " + b"a" * 20000)
    assert client.disconnecting


def test_headers_just_under_the_cap_are_fine() -> None:
    server = Harness()
    assert server.connect(headers={"X-Pad": "a" * 15000}).status == 101


# -- input ---------------------------------------------------------------------------------


def test_deep_json_and_non_finite_numbers_get_errors() -> None:
    server = Harness()
    client = server.connect()
    client.read_messages()
    deep: Any = {}
    for _ in range(40):
        deep = {"a": deep}
    client.send({"type": "PRESENCE_UPDATE", "payload": {"status": "online", "metadata": deep}})
    assert client.read_message()["code"] == "TOO_DEEP"
    client.send_frame(b'{"type":"HEARTBEAT","x":NaN}')
    assert client.read_message()["code"] == "INVALID_JSON"
    client.send_frame(b"[" * 5000 + b"]" * 5000)
    assert client.read_message()["code"] in ("INVALID_JSON", "TOO_DEEP")
    big = {"blob": "x" * 5000}
    client.send({"type": "PRESENCE_UPDATE", "payload": {"status": "online", "metadata": big}})
    assert client.read_message()["code"] == "METADATA_TOO_LARGE"
    client.send({"type": "HEARTBEAT"})
    assert client.read_message()["type"] == "HEARTBEAT_ACK"


def test_compression_off_unless_asked() -> None:
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    off = Harness().connect(headers=offer)
    assert b"permessage-deflate" not in off.response_headers.lower()
    on = Harness(compression=True).connect(headers=offer)
    assert b"permessage-deflate" in on.response_headers.lower()


# -- slow readers ------------------------------------------------------------------------


def test_a_client_that_does_not_read_is_disconnected() -> None:
    server = Harness(max_send_buffer=64 * 1024, rate_messages=10_000, rate_seconds=1)
    watcher = server.connect("/?userId=watcher")
    watcher.send({"type": "SUBSCRIBE", "payload": {"userIds": ["alice"]}})
    watcher.read_messages()
    alice = server.connect("/?userId=alice")
    watcher.stop_reading()
    arrived = len(watcher.frames)
    for i in range(100):
        metadata = {"n": i, "pad": "x" * 3000}
        alice.send(
            {"type": "PRESENCE_UPDATE", "payload": {"status": "online", "metadata": metadata}}
        )
    assert len(watcher.frames) == arrived  # all of it is still in the server's send buffer
    watcher.start_reading()
    frames = watcher.read_frames()
    assert frames[-1][0] == CLOSE
    assert watcher.close_code == 1008 and "not reading" in (watcher.close_reason or "")
    diffs = sum(1 for op, _ in frames if op == 1)
    assert diffs < 30  # stopped near 64 KiB, not after all 100
    assert server.error_count("slow_reader") == 1
    # alice, who reads, is fine.
    alice.read_messages()
    alice.send({"type": "HEARTBEAT"})
    assert alice.read_message()["type"] == "HEARTBEAT_ACK"


# -- HTTP endpoints ------------------------------------------------------------------------


def http_get(server: Harness, path: str, headers: dict[str, str] | None = None) -> int:
    status = server.http(path, headers).status
    assert status is not None
    return status


def test_presence_api_needs_the_api_token_when_auth_is_on() -> None:
    api = b"a" * 32
    server = Harness(auth="jwt", verifier=verifier_from_secret(SECRET), api_token=api)
    assert http_get(server, "/presence/alice") == 401
    assert http_get(server, "/presence?userIds=a,b", {"Authorization": "Bearer wrong"}) == 401
    assert http_get(server, "/presence/alice", {"Authorization": f"Bearer {api.decode()}"}) == 200
    assert http_get(server, "/health") == 200
    assert http_get(server, "/metrics") == 200
    no_token = Harness(auth="jwt", verifier=verifier_from_secret(SECRET))
    assert http_get(no_token, "/presence/alice", {"Authorization": "Bearer anything"}) == 401
    assert http_get(Harness(), "/presence/alice") == 200  # --auth none, no token file


def test_metrics_token() -> None:
    server = Harness(metrics_token=b"m" * 32)
    assert http_get(server, "/metrics") == 401
    assert http_get(server, "/metrics", {"Authorization": "Bearer " + "m" * 32}) == 200
    assert http_get(server, "/health") == 200


def test_pings_count_against_the_rate_limit() -> None:
    server = Harness(rate_messages=3, rate_seconds=10)
    client = server.connect()
    client.read_messages()
    for _ in range(4):
        client.feed(client_frame(b"hi", PING))
    assert [op for op, _ in client.read_frames()] == [10, 10, 10]  # the 4th gets no pong
    for _ in range(6):
        client.feed(client_frame(b"hi", PING))
    assert_refused(client, 1008, "rate limit exceeded")


def test_compressed_messages_are_bounded_after_inflation() -> None:
    import zlib

    offer = {"Sec-WebSocket-Extensions": "permessage-deflate"}
    server = Harness(compression=True, max_message_size=4096)
    client = server.connect(headers=offer)
    assert [op for op, _ in client.read_frames()] == [1]  # the (compressed) CONNECT

    def deflated(data: bytes) -> bytes:
        compressor = zlib.compressobj(wbits=-15)
        body = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        return body[:-4]  # permessage-deflate drops the final 00 00 ff ff

    small = deflated(b'{"type":"HEARTBEAT"}')
    client.feed(bytes([0xC1]) + client_frame(small)[1:])  # FIN + RSV1 + text
    assert [op for op, _ in client.read_frames()] == [1]  # the (compressed) HEARTBEAT_ACK
    bomb = deflated(b'{"type":"HEARTBEAT","pad":"' + b"a" * 1_000_000 + b'"}')
    assert len(bomb) < 4096
    client.feed(bytes([0xC1]) + client_frame(bomb)[1:])
    client.read_frames()
    assert client.close_code == 1009


def test_unsent_bytes_reads_tcp_and_tls_buffers() -> None:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from presence.server.frames import unsent_bytes

    class Tcp:
        dataBuffer = b"x" * 100
        offset = 40
        _tempDataLen = 7

    assert unsent_bytes(Tcp()) == 67
    tls = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
    tls.transport = Tcp()  # a ProtocolWrapper forwards unknown attributes to its transport
    tls._appSendBuffer = []
    assert unsent_bytes(tls) == 67
    assert unsent_bytes(object()) == 0
