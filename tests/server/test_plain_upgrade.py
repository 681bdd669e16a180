"""The plain upgrade (``presence.server.upgrade``) against Autobahn's own processHandshake:
for any opening handshake, the same request reaches onConnect, the same bytes go back and
the connection ends in the same state, whichever path read it. Autobahn runs here as it
comes, with the options the daemon sets."""

from __future__ import annotations

from typing import Any

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from presence.server.factory import ProtocolConfig, protocol_options
from presence.server.upgrade import UpgradeProtocol, plain_upgrade
from tests.support.harness import KEY


class Recording:
    """onConnect keeps what it was given; a userId "deny" is refused, as admission would."""

    requests: list[Any]
    opened: bool

    def onConnect(self, request: Any) -> None:
        self.requests.append(
            (
                request.peer,
                request.headers,
                request.host,
                request.path,
                request.params,
                request.version,
                request.origin,
                list(request.protocols),
                list(request.extensions),
            )
        )
        if request.params.get("userId") == ["deny"]:
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "denied")
        if request.params.get("userId") == ["boom"]:
            raise RuntimeError("boom")

    def onOpen(self) -> None:
        self.opened = True


class Autobahn(Recording, WebSocketServerProtocol):  # type: ignore[misc]
    pass


class Ours(Recording, UpgradeProtocol):  # type: ignore[misc]
    def on_text(self, payload: bytes, binary: bool) -> None:
        pass


def factory(protocol: type) -> WebSocketServerFactory:
    made = WebSocketServerFactory()
    made.protocol = protocol
    made.setProtocolOptions(**OPTIONS)  # the daemon's, as PresenceFactory sets them
    return made


OPTIONS = protocol_options(ProtocolConfig())


class TCPLike(StringTransport):
    """As a TCP transport: unregistering when no producer is registered is no error."""

    def unregisterProducer(self) -> None:
        self.producer = None


def run(protocol: type, head: bytes, **options: Any) -> tuple[Any, ...]:
    made = factory(protocol)
    made.externalPort = options.pop("externalPort", None)  # a session parameter
    if options:
        made.setProtocolOptions(**options)
    proto = made.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    proto.requests, proto.opened = [], False
    transport = TCPLike(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 3000),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
    )
    proto.makeConnection(transport)
    proto.dataReceived(head)
    timer = proto.openHandshakeTimeoutCall
    if timer is not None:
        timer.cancel()
    return (
        proto.requests,
        transport.value(),
        proto.opened,
        proto.state,
        transport.disconnecting,
        proto.data,
        proto.wasNotCleanReason,
    )


def same(head: bytes, **options: Any) -> tuple[Any, ...]:
    theirs = run(Autobahn, head, **options)
    ours = run(Ours, head, **options)
    assert ours == theirs
    return ours


def head(*lines: str, target: str = "/?userId=alice", rest: bytes = b"") -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", *lines]) + "\r\n\r\n").encode("latin-1") + rest


PLAIN = (
    "Host: 127.0.0.1:3000",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
)


def test_a_plain_handshake_is_read_here_and_answered_as_autobahn_answers() -> None:
    assert plain_upgrade(head(*PLAIN)) is not None
    requests, response, opened, *_ = same(head(*PLAIN))
    assert opened and response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in response  # RFC 6455
    assert requests[0][3:5] == ("/", {"userId": ["alice"]})


@pytest.mark.parametrize(
    "data",
    [
        head(*PLAIN, "Origin: https://app.example.com"),
        head(*PLAIN, "Origin: null"),
        head(*PLAIN, "Origin: file:///x"),
        head(*PLAIN, "Authorization: Bearer a.b.c"),
        head(*PLAIN, target="/?userId=deny"),
        head(*PLAIN, target="/?userId=a%20b&token=x+y&empty=&flag"),
        head(*PLAIN, target="/any/path?userId=alice"),
        head(*PLAIN, target="/?a?b"),
        head("Host: [::1]:3000", *PLAIN[1:]),
        head("Host: [::1]", *PLAIN[1:]),
        head("Host: example.com", *PLAIN[1:]),
        head(*PLAIN[:1], "Upgrade: h2c, WebSocket", *PLAIN[2:]),
        head(*PLAIN[:2], "Connection: keep-alive, upgrade", *PLAIN[3:]),
        head(*PLAIN, rest=b"\x81\x80\x00\x00\x00\x00"),  # a frame right after the head
    ],
)
def test_plain_variants_take_the_plain_path_with_the_same_outcome(data: bytes) -> None:
    assert plain_upgrade(data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n") is not None
    same(data)


@pytest.mark.parametrize(
    "data",
    [
        head(*PLAIN, "Sec-WebSocket-Protocol: chat"),
        head(*PLAIN, "Sec-WebSocket-Extensions: permessage-deflate"),
        head(*PLAIN, "X-Forwarded-For: 10.0.0.1"),
        head(*PLAIN, "Host: twice"),
        head(*PLAIN, "X-Latin: caf\xe9"),
        head(*PLAIN, target="//evil/?userId=a"),
        head(*PLAIN, target="/#frag"),
        head(*PLAIN, target="/;p?userId=a"),
        head(*PLAIN, target="http://h/?userId=a"),
        head("Host: h:x", *PLAIN[1:]),
        head("Host: h:+1", *PLAIN[1:]),
        head(*PLAIN[1:]),  # no Host
        head(*PLAIN[:1], "Upgrade: h2c", *PLAIN[2:]),
        head(*PLAIN[:2], "Connection: close", *PLAIN[3:]),
        head(*PLAIN[:4], "Sec-WebSocket-Version: 8"),
        head(*PLAIN[:4], "Sec-WebSocket-Version: 013"),
        head(*PLAIN[:4]),  # no version
        head(*PLAIN[:3], "Sec-WebSocket-Key: short==", *PLAIN[4:]),
        head(*PLAIN[:3], "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ!!", *PLAIN[4:]),
        head(*PLAIN[:3], "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub2*jZQ==", *PLAIN[4:]),
        head(*PLAIN, " folded"),
        head(*PLAIN, "Bad Name: x"),
        head(*PLAIN).replace(b"GET", b"POST"),
        head(*PLAIN).replace(b"HTTP/1.1", b"HTTP/1.0"),
    ],
)
def test_anything_else_is_left_to_autobahn_with_the_same_outcome(data: bytes) -> None:
    assert plain_upgrade(data) is None
    same(data)


@pytest.mark.parametrize("origin", ["not a url", "http://", "https://"])
def test_an_origin_autobahn_cannot_read_is_left_to_it(origin: str) -> None:
    _, response, opened, *_ = same(head(*PLAIN, f"Origin: {origin}"))
    assert response.startswith(b"HTTP/1.1 400 ") and not opened


def test_an_error_in_on_connect_fails_the_handshake_as_autobahn_does() -> None:
    _, response, opened, *_ = same(head(*PLAIN, target="/?userId=boom"))
    assert response.startswith(b"HTTP/1.1 500 ") and not opened


def test_options_the_plain_path_does_not_take_go_to_autobahn() -> None:
    same(head(*PLAIN), maxConnections=10)
    same(head(*PLAIN), externalPort=3000)
    same(head(*PLAIN, "Origin: https://evil.example.com"), allowedOrigins=["https://ok.*"])
    same(head(*PLAIN, "Origin: null"), allowNullOrigin=False)
    same(head(*PLAIN), autoPingInterval=10)


# -- any handshake ---------------------------------------------------------------------------

TARGETS = [
    "/",
    "/?userId=alice",
    "/?userId=deny",
    "/?userId=a&userId=b",
    "/x?y=%41+1",
    "/?",
    "//h",
    "/#f",
    "/;p",
    "/?q#f",
    "*",
    "/a b",
    "http://h/?userId=a",
]
HEADERS: dict[str, list[str | None]] = {
    "Host": [None, "h", "h:3000", "h:x", "h:", "[::1]", "[::1]:1", " h ", "a, b"],
    "Upgrade": [None, "websocket", "WebSocket", "websocket, h2c", "h2c", ""],
    "Connection": [None, "Upgrade", "keep-alive, Upgrade", "close", "upgradex"],
    "Sec-WebSocket-Version": [None, "13", "8", "013", "x", "13, 13"],
    "Sec-WebSocket-Key": [None, KEY, KEY[:-2], "A" * 22 + "==", "A" * 21 + "*==", KEY + " "],
    "Origin": [None, "http://a.com", "null", "file://x", "garbage", "http://", "https://a:99"],
    "Sec-WebSocket-Protocol": [None, None, "chat", "a, a"],
    "Sec-WebSocket-Extensions": [None, None, "permessage-deflate", "x-unknown"],
    "X-Forwarded-For": [None, None, "10.0.0.1"],
    "Authorization": [None, "Bearer t"],
    "X-Odd": [None, "tab\there", "caf\xe9", "", "a:b"],
}


@st.composite
def handshakes(draw: Any) -> bytes:
    lines = []
    for name, values in HEADERS.items():
        value = draw(st.sampled_from(values))
        if value is not None:
            spelled = draw(st.sampled_from([name, name.lower(), name.upper()]))
            lines.append(f"{spelled}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}{value}")
    lines = draw(st.permutations(lines))
    if lines and draw(st.booleans()):
        lines.append(draw(st.sampled_from(lines)))  # a header twice
    method = draw(st.sampled_from(["GET", "GET", "GET", "get", "POST"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2"]))
    first = f"{method} {draw(st.sampled_from(TARGETS))} {version}"
    return ("\r\n".join([first, *lines]) + "\r\n\r\n").encode("latin-1")


@settings(max_examples=400, deadline=None)
@given(handshakes())
def test_any_handshake_has_the_same_outcome_on_both_paths(data: bytes) -> None:
    same(data)


def opened(protocol: type, data: bytes) -> Any:
    proto = factory(protocol).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    proto.requests, proto.opened = [], False
    proto.makeConnection(TCPLike())
    proto.dataReceived(data)
    return proto


@pytest.mark.parametrize("target, fired", [("/?userId=alice", True), ("/?userId=deny", False)])
def test_is_open_and_is_closed_fire_as_autobahns_do(target: str, fired: bool) -> None:
    """Ours are made when first read: is_open fired once the handshake succeeded (never
    when it failed), is_closed once the connection ended, on both paths alike."""
    seen = []
    for protocol in (Autobahn, Ours):
        proto = opened(protocol, head(*PLAIN, target=target))
        after_handshake = (proto.is_open.called, proto.is_closed.called)
        proto.connectionLost(Failure(ConnectionDone()))
        seen.append((after_handshake, proto.is_open.called, proto.is_closed.called))
        if proto.openHandshakeTimeoutCall is not None:
            proto.openHandshakeTimeoutCall.cancel()
    assert seen[0] == seen[1]
    assert seen[1][0][0] is fired and seen[1][2]


def test_is_open_read_before_the_handshake_fires_when_it_succeeds() -> None:
    proto = factory(Ours).buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
    proto.requests, proto.opened = [], False
    proto.makeConnection(TCPLike())
    waiting = proto.is_open
    assert not waiting.called
    proto.dataReceived(head(*PLAIN))
    assert waiting.called and proto.is_open is waiting
