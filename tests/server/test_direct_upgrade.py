"""The direct upgrade at "/": the opening handshake goes to Autobahn without twisted.web's
Request, and every answer is byte for byte what the twisted.web path gives."""

from __future__ import annotations

import json
import re
from typing import Any

import jwt
import pytest

from presence.core.auth import verifier_from_secret
from presence.server import web, ws
from presence.server.handshake import direct_upgrade
from tests.support.harness import KEY, TEXT, Client, FrameDecoder, Harness, client_frame

SECRET = b"k" * 40
T0 = 1_700_000_000.0
ALICE = "/?userId=alice"


def head(target: str = "/?userId=alice", *extra: str, version: str = "HTTP/1.1") -> bytes:
    lines = [
        f"GET {target} {version}",
        "Host: 127.0.0.1:3000",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def decide(data: bytes) -> bool | None:
    return direct_upgrade(data, 16384, 500)


def test_a_plain_handshake_goes_direct() -> None:
    assert decide(head()) is True
    assert decide(head("/")) is True
    assert decide(head("/?userId=a&token=x.y.z")) is True
    assert decide(head(ALICE, "Upgrade-Insecure-Requests: 1")) is True


@pytest.mark.parametrize("cut", [1, 3, 5, 6, 20, -2, -1])
def test_a_partial_head_waits(cut: int) -> None:
    assert decide(head()[:cut]) is None


@pytest.mark.parametrize(
    "data",
    [
        head("/health"),
        head("//"),
        head("/x?userId=a"),
        head("http://127.0.0.1:3000/?userId=a"),
        head(version="HTTP/1.0"),
        head().replace(b"GET", b"get"),
        head().replace(b"GET", b"POST"),
        head().replace(b"Upgrade: websocket", b"Upgrade: h2c"),
        head().replace(b"Upgrade: websocket\r\n", b""),
        head(ALICE, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),  # a header twice
        head(ALICE, "sec-websocket-version: 13"),  # twice, in another case
        head(ALICE, "Content-Length: 0"),
        head(ALICE, "Transfer-Encoding: chunked"),
        head(ALICE, "Expect: 100-continue"),
        head(ALICE, " folded"),  # obs-fold
        head(ALICE, "X-Bad : space before the colon"),
        head(ALICE, "NoColon"),
        head(ALICE, "X-Nul: a\x00b"),
        head(ALICE, "X-Latin: caf\xe9"),  # obs-text: left to twisted.web and Autobahn
        head().replace(b"\r\nHost", b"\nHost"),  # a bare LF
        head() + client_frame(b'{"type":"HEARTBEAT"}'),  # data after the head
        head(ALICE, "X-Pad: " + "a" * 16400),
        b"\r\n" + head(),
        b"GET /?userId=alice HTTP/1.1\r\nX-Long: " + b"a" * 20000,
    ],
)
def test_anything_else_goes_to_twisted_web(data: bytes) -> None:
    assert decide(data) is False


def test_too_many_headers_go_to_twisted_web() -> None:
    extra = [f"X-H{i}: v" for i in range(10)]
    assert direct_upgrade(head(ALICE, *extra), 16384, 15) is True
    assert direct_upgrade(head(ALICE, *extra), 16384, 14) is False


# -- the same answers on both paths ------------------------------------------------------


def token(sub: str = "alice", exp: float = T0 + 60) -> str:
    return jwt.encode({"sub": sub, "exp": exp}, SECRET, algorithm="HS256")


def server(direct: bool, **config: Any) -> Harness:
    made = Harness(**config)
    if not direct:
        made.site.websocket = None  # as before: every request through twisted.web
    return made


SCENARIOS: dict[str, tuple[dict[str, Any], list[bytes]]] = {
    "served": ({}, [head()]),
    "served in pieces": ({}, [head()[:7], head()[7:40], head()[40:]]),
    "a byte at a time": ({}, [head()[i : i + 1] for i in range(len(head()))]),
    "cut in the blank line": ({}, [head()[:-3], head()[-3:-1], head()[-1:]]),
    "cut before the blank line": ({}, [head()[:-4], head()[-4:]]),
    "frame after a cut": ({}, [head()[:-1], head()[-1:] + client_frame(b'{"type":"HEARTBEAT"}')]),
    "plain GET in pieces": ({}, [b"GET / HTTP/1.1\r\nHo", b"st: x\r\n\r\n"]),
    "health in pieces": ({}, [b"GET /", b"health HTTP/1.1\r\nHost: x\r\n\r\n"]),
    "no userId": ({}, [head("/")]),
    "invalid userId": ({}, [head("/?userId=a%20b")]),
    "foreign origin": (
        {"allowed_origins": ("https://app.example.com",)},
        [head(ALICE, "Origin: https://evil.example.com")],
    ),
    "allowed origin": (
        {"allowed_origins": ("https://app.example.com",)},
        [head(ALICE, "Origin: https://app.example.com")],
    ),
    "at capacity": ({"max_connections": 1, "_held": 1}, [head()]),
    "no token": ({"verifier": verifier_from_secret(SECRET)}, [head()]),
    "token in query": (
        {"verifier": verifier_from_secret(SECRET)},
        [head(f"/?userId=alice&token={token()}")],
    ),
    "bearer token": (
        {"verifier": verifier_from_secret(SECRET)},
        [head(ALICE, f"Authorization: Bearer {token()}")],
    ),
    "expired token": (
        {"verifier": verifier_from_secret(SECRET)},
        [head(f"/?userId=alice&token={token(exp=T0 - 3600)}")],
    ),
    "other sub": (
        {"verifier": verifier_from_secret(SECRET)},
        [head(f"/?userId=alice&token={token('bob')}")],
    ),
    "bad version": ({}, [head().replace(b"Version: 13", b"Version: 8")]),
    "no key": ({}, [head().replace(f"Sec-WebSocket-Key: {KEY}\r\n".encode(), b"")]),
    "bad key": ({}, [head().replace(KEY.encode(), b"short")]),
    "no host": ({}, [head().replace(b"Host: 127.0.0.1:3000\r\n", b"")]),
    "no connection: upgrade": ({}, [head().replace(b"Connection: Upgrade", b"Connection: x")]),
    "plain GET": ({}, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
    "plain GET with a query": ({}, [b"GET /?userId=alice HTTP/1.1\r\nHost: x\r\n\r\n"]),
    "health": ({}, [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"]),
    "oversized": ({}, [head(ALICE, *(f"X-Pad-{i}: {'a' * 1000}" for i in range(17)))]),
    "endless line": ({}, [b"GET /?userId=alice HTTP/1.1\r\nX-Long: " + b"a" * 20000]),
    "just under the cap": ({}, [head(ALICE, "X-Pad: " + "a" * 15000)]),
    "pipelined frame": ({}, [head() + client_frame(b'{"type":"HEARTBEAT"}')]),
    "then a heartbeat": ({}, [head(), client_frame(b'{"type":"HEARTBEAT"}')]),
    "duplicate key": ({}, [head(ALICE, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==")]),
    "HTTP/1.0": ({}, [head(version="HTTP/1.0")]),
    "compression": (
        {"compression": True},
        [head(ALICE, "Sec-WebSocket-Extensions: permessage-deflate")],
    ),
}


def run(direct: bool, config: dict[str, Any], chunks: list[bytes]) -> tuple[Any, ...]:
    config = dict(config)
    held = config.pop("_held", 0)
    made = server(direct, **config)
    for i in range(held):  # connections that are there already
        assert made.connect(f"/?userId=held{i}").status == 101
    client = made.open()
    for chunk in chunks:
        client.feed(chunk)
    made.clock.advance(10)  # past every deadline
    transport = client.link.server  # the server's end: value() keeps every byte written
    return (
        re.sub(rb"\r\nDate: [^\r]*", b"", transport.value()),  # twisted.web's, wall clock
        transport.disconnecting,
        transport.aborted,
        made.model.connection_count,
        made.metrics.errors["handshake"].value,
        made.metrics.errors["auth"].value,
        made.metrics.errors["capacity"].value,
        type(transport.protocol).__name__,
    )


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_same_answer_on_both_paths(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection id in CONNECT is random: the same one on both paths.
    monkeypatch.setattr(ws.os, "urandom", lambda n: b"\x01" * n)
    config, chunks = SCENARIOS[name]
    assert run(True, config, chunks) == run(False, config, chunks)


# -- which path was taken ------------------------------------------------------------------


@pytest.fixture
def entry_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    render = web.WebSocketEntry.render

    def counting(self: web.WebSocketEntry, request: Any) -> Any:
        calls.append(request.uri)
        return render(self, request)

    monkeypatch.setattr(web.WebSocketEntry, "render", counting)
    return calls


def test_the_direct_path_skips_twisted_web(entry_calls: list[bytes]) -> None:
    made = Harness(heartbeat_timeout=3600.0)  # the reaper runs: no heartbeat is due in 60 s
    client = made.open()
    channel = client.http_channel  # held here: the client keeps only a weak reference
    client.request()
    assert client.status == 101
    assert entry_calls == []
    assert channel.requests == []
    assert channel.transport is None
    assert getattr(channel, "_networkProducer", None) is None  # never registered
    assert client.link.server.producer is client.ws  # registered at onOpen, nobody else
    made.clock.advance(60)
    assert not client.aborted  # the handshake deadline is off
    assert client.read_message()["type"] == "CONNECT"


def answer(client: Client, start: int = 0) -> tuple[int, list[Any]]:
    """The status of the response the server wrote from byte ``start`` on, and the text
    messages after its head (the client parses only the first response on a connection)."""
    data = client.link.server.value()[start:]
    response, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, data
    frames = FrameDecoder().feed(rest)
    return int(response.split(b" ", 2)[1]), [json.loads(p) for op, p in frames if op == TEXT]


def test_a_kept_alive_connection_upgrades_through_twisted_web(entry_calls: list[bytes]) -> None:
    made = Harness()
    client = made.open()
    client.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.status == 200
    start = len(client.link.server.value())  # what the health check wrote is done with
    client.feed(head())
    status, messages = answer(client, start)
    assert status == 101
    assert entry_calls == [b"/?userId=alice"]
    assert len(messages) == 1, messages
    assert messages[0]["type"] == "CONNECT"


@pytest.mark.parametrize("size", [1, 3, 4, 7, 64])
def test_a_handshake_in_pieces_goes_direct(entry_calls: list[bytes], size: int) -> None:
    made = Harness()
    client = made.open()
    data = head()
    for i in range(0, len(data), size):
        client.feed(data[i : i + size])
    assert client.status == 101
    assert entry_calls == []
    assert client.read_message()["type"] == "CONNECT"


def test_http_set_up_waits_for_a_request_that_is_no_direct_upgrade() -> None:
    """HTTPChannel's idle timer and producer wait while the first request may still be a
    direct upgrade (the handshake deadline runs from the start); without a deadline the
    idle timer is what ends a silent client, so it starts at once."""
    waiting = Harness().open()
    channel = waiting.http_channel
    assert channel._TimeoutMixin__timeoutCall is None and channel._deadline is not None
    waiting.feed(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert channel._TimeoutMixin__timeoutCall is not None  # twisted.web's from here on, as before
    assert waiting.link.server.producer is channel
    at_once = Harness(handshake_timeout=0).open().http_channel
    assert at_once._TimeoutMixin__timeoutCall is not None and at_once._deadline is None
