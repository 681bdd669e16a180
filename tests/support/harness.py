"""The whole daemon in memory: ``presence.app.build(Config(ports=(), ...), clock)`` on a
``task.Clock``, its real Site and Autobahn protocol, and a small WebSocket client. No
reactor runs and nothing sleeps: time passes only through ``Harness.advance``.

One client API over two transports (``Harness(transport=...)``):

``"direct"`` (the default)
    Synchronous. What the client sends reaches the server at once and what the server
    writes reaches the client at once, so a test writes bytes in and reads frames out with
    nothing in between. Only what happens on its own waits for ``flush()``: the client's
    automatic answer to a close frame, and reporting a connection lost to both sides.

``"pumped"``
    Two-sided, like iosim: bytes wait in each direction until ``flush()`` moves them, one
    side's output at a time, until every connection is quiet. A connection closed by
    either side is reported lost to both, as TCP does.

Either way the server's end is a TCP-like transport: a push producer with a 64 KiB send
buffer, so a client that stops reading (``Client.stop_reading``) pauses the server's
protocol and what it writes counts as unsent, as the slow-reader check expects.

The wire helpers are the only ones the tests use: ``client_frame`` (the one encoder),
``FrameDecoder`` (the one decoder) and ``upgrade_request`` (the one opening handshake)."""

from __future__ import annotations

import itertools
import json
import weakref
import zlib
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from presence.app import Daemon, build
from presence.config import Config
from presence.server.services import ShutdownService
from presence.server.ws import PresenceProtocol

T0 = 1_700_000_000.0  # the clock's start: a plausible wall-clock time
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample Sec-WebSocket-Key
MASK = b"\x11\x22\x33\x44"
ZERO_MASK = b"\x00\x00\x00\x00"  # allowed by the RFC; the server has a shortcut for it
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10

Transport = Literal["direct", "pumped"]

# -- the wire --------------------------------------------------------------------------------


def client_frame(
    payload: bytes,
    opcode: int = TEXT,
    *,
    fin: bool = True,
    rsv1: bool = False,
    mask: bytes = MASK,
) -> bytes:
    """A client frame (RFC 6455 5.2): always masked, the shortest length form."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + length.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(
    path: str = "/?userId=alice", headers: Mapping[str, str] | None = None
) -> bytes:
    """The opening handshake a browser sends (RFC 6455 4.1), with any extra headers."""
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1:3000",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_request(path: str, headers: Mapping[str, str] | None = None) -> bytes:
    """A plain GET that asks the server to close the connection after answering."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1:3000", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Frame(NamedTuple):
    opcode: int
    payload: bytes  # unmasked and, for a compressed message, inflated


class FrameDecoder:
    """Frames out of a byte stream cut anywhere. With ``inflate`` (permessage-deflate was
    negotiated), a frame with RSV1 set is inflated in the connection's one context."""

    def __init__(self) -> None:
        self.buffer = b""
        self.inflater: Any = None

    def feed(self, data: bytes) -> list[Frame]:
        self.buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        data = self.buffer
        if len(data) < 2:
            return None
        first, second = data[0], data[1]
        length, start = second & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        mask = b""
        if second & 0x80:
            mask, start = data[start : start + 4], start + 4
        if len(data) < start + length:
            return None
        payload = data[start : start + length]
        self.buffer = data[start + length :]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        if first & 0x40 and self.inflater is not None:
            payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        return Frame(first & 0x0F, payload)


# -- the server's end of a connection ------------------------------------------------------


class ServerTransport(StringTransport):
    """What the Site and Autobahn see: a TCP-like transport (a push producer, the buffer
    attributes ``frames.unsent_bytes`` reads, abort). ``value()`` keeps every byte written."""

    bufferSize = 2**16  # as TCP's: past it a streaming producer is paused

    def __init__(self, link: Link, peer_port: int) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 3000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", peer_port),
            lenient=True,
        )
        self.link = link
        self.protocol: Any = None
        self.pending: list[bytes] = []  # written, not yet received by the client
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        if self.aborted or self.link.lost:
            return  # what TCP does with writes after an abort
        super().write(data)
        self.pending.append(data)
        self._tempDataLen += len(data)
        if self.link.direct and not self.link.client.stalled:
            self.link.to_client()
        elif self._tempDataLen > self.bufferSize and self.streaming and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def take(self) -> bytes:
        data, self.pending, self._tempDataLen = b"".join(self.pending), [], 0
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return data

    def abortConnection(self) -> None:
        self.aborted = True
        self.pending, self._tempDataLen = [], 0
        super().abortConnection()

    def unregisterProducer(self) -> None:
        # Like TCP's and TLS's transports, not StringTransport: none registered is fine.
        self.producer = None
        self.streaming = None


class Link:
    """One connection between a Client and the Site."""

    ports = itertools.count(50000)

    def __init__(self, harness: Harness, client: Client, direct: bool) -> None:
        self.client = client
        self.direct = direct
        self.to_server: list[bytes] = []  # bytes on their way (pumped; direct: answers only)
        self.client_closed = False
        self.lost = False
        self.server = ServerTransport(self, next(self.ports))
        channel = harness.site.buildProtocol(self.server.getPeer())
        assert channel is not None
        self.http_channel = weakref.ref(channel)  # until the upgrade, the server's protocol
        self.server.protocol = channel  # Autobahn replaces it with the WebSocket protocol
        channel.makeConnection(self.server)

    def from_client(self, data: bytes, at_once: bool) -> None:
        if self.lost or self.client_closed:
            return  # written to a closed socket
        if self.direct and at_once:
            self.to_server_now(data)
        else:
            self.to_server.append(data)

    def to_server_now(self, data: bytes) -> None:
        # A transport that is closing reads no more (Twisted's TCP stops reading).
        if not self.server.disconnecting:
            self.server.protocol.dataReceived(data)

    def to_client(self) -> None:
        data = self.server.take()
        if data:
            self.client.received(data)

    def drop(self) -> None:
        """The client's end goes away without a word."""
        self.client_closed = True
        if self.direct:
            self.report_lost()

    def step(self) -> bool:
        """Move what is pending one way and the other; True if anything happened."""
        if self.lost:
            return False
        moved = False
        if self.to_server:
            data, self.to_server = b"".join(self.to_server), []
            self.to_server_now(data)
            moved = True
        if self.server.pending and not self.client.stalled:
            self.to_client()
            moved = True
        if moved:
            return True
        # A closing transport first sends what it holds (to a client that reads).
        closing = self.server.disconnecting and not self.server.pending
        if closing or self.server.aborted or self.client_closed:
            self.report_lost()
            return True
        return False

    def report_lost(self) -> None:
        if self.lost:
            return
        self.lost = True
        clean = self.server.disconnecting and not self.server.aborted and not self.client_closed
        reason = ConnectionDone("closed") if clean else ConnectionLost("dropped")
        self.server.protocol.connectionLost(Failure(reason))
        self.client.connection_lost()


# -- the client ------------------------------------------------------------------------------


class Client:
    """A WebSocket (or plain HTTP) client on one connection.

    ``frames`` and ``messages`` hold everything received so far; ``read_frames()``,
    ``read_messages()`` and ``read_message()`` return only what arrived since the last
    read. Close codes are known as soon as the close frame arrives."""

    def __init__(self, harness: Harness, *, answer_close: bool = True) -> None:
        self.harness = harness
        self.answer_close = answer_close
        self.stalled = False
        self.raw = b""  # every byte received
        self.status: int | None = None
        self.response_headers = b""
        self.body = b""  # after the head of a response that is not an upgrade
        self.frames: list[Frame] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.lost = False
        self.sent_close = False
        self._head = b""
        self._decoder = FrameDecoder()
        self._read = 0
        self._parsed: list[Any] = []
        self._parsed_upto = 0
        self.link = Link(harness, self, direct=harness.transport == "direct")

    # -- the server's side -------------------------------------------------------------------

    @property
    def ws(self) -> PresenceProtocol:
        protocol = self.link.server.protocol
        assert isinstance(protocol, PresenceProtocol), protocol
        return protocol

    @property
    def http_channel(self) -> Any:
        """The HTTP channel that carried the handshake, while anything still holds it."""
        return self.link.http_channel()

    @property
    def disconnecting(self) -> bool:
        """The server has begun to close the connection."""
        return bool(self.link.server.disconnecting)

    @property
    def aborted(self) -> bool:
        """The server aborted the connection (an RST, no goodbye)."""
        return self.link.server.aborted

    # -- sending -----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Raw bytes to the server."""
        self.link.from_client(data, at_once=True)

    def request(
        self, path: str = "/?userId=alice", headers: Mapping[str, str] | None = None
    ) -> int:
        """Send an opening handshake; the HTTP status of the answer (0: none yet)."""
        self.feed(upgrade_request(path, headers))
        self.harness.settle()
        return self.status or 0

    def send_frame(
        self, payload: bytes, opcode: int = TEXT, *, fin: bool = True, mask: bytes = MASK
    ) -> None:
        self.sent_close = self.sent_close or opcode == CLOSE
        self.feed(client_frame(payload, opcode, fin=fin, mask=mask))

    def send(self, message: Any) -> None:
        self.send_frame(json.dumps(message).encode())

    def drop(self) -> None:
        """The client's TCP connection goes away, no close frame (pumped: at the next flush)."""
        self.link.drop()

    def stop_reading(self) -> None:
        """From now on what the server writes stays in its send buffer, unsent."""
        self.stalled = True

    def start_reading(self) -> None:
        self.stalled = False
        if self.link.direct:
            self.link.to_client()

    # -- receiving ---------------------------------------------------------------------------

    def received(self, data: bytes) -> None:
        self.raw += data
        if self.status is None:
            self._head += data
            head, sep, rest = self._head.partition(b"\r\n\r\n")
            if not sep:
                return
            self.response_headers = head
            self.status = int(head.split(b" ", 2)[1])
            if b"permessage-deflate" in head.lower():
                self._decoder.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = rest
        if self.status != 101:
            self.body += data
            return
        for frame in self._decoder.feed(data):
            self.frames.append(frame)
            if frame.opcode == CLOSE:
                payload = frame.payload
                self.close_code = int.from_bytes(payload[:2], "big") if payload else None
                self.close_reason = payload[2:].decode()
                if self.answer_close and not self.sent_close:  # as a real client: echo it
                    self.sent_close = True
                    self.link.from_client(client_frame(payload[:2], CLOSE), at_once=False)

    def connection_lost(self) -> None:
        self.lost = True

    @property
    def messages(self) -> list[Any]:
        """Every text message so far, parsed."""
        for opcode, payload in self.frames[self._parsed_upto :]:
            if opcode == TEXT:
                self._parsed.append(json.loads(payload))
        self._parsed_upto = len(self.frames)
        return self._parsed

    def of_type(self, kind: str) -> list[Any]:
        return [m for m in self.messages if isinstance(m, dict) and m.get("type") == kind]

    def read_frames(self) -> list[Frame]:
        """The frames received since the last read."""
        new, self._read = self.frames[self._read :], len(self.frames)
        return new

    def read_messages(self) -> list[Any]:
        """The text messages received since the last read."""
        return [json.loads(payload) for opcode, payload in self.read_frames() if opcode == TEXT]

    def read_message(self) -> Any:
        """The one text message received since the last read."""
        got = self.read_messages()
        assert len(got) == 1, got
        return got[0]


# -- the daemon ------------------------------------------------------------------------------


class Harness:
    """``build(Config(ports=(), **config), Clock())`` with its reaper running, as twistd
    runs it, and clients connected to its Site."""

    def __init__(self, *, transport: Transport = "direct", **config: Any) -> None:
        self.transport = transport
        self.clock = Clock()
        self.clock.advance(T0)
        self.config = Config(ports=(), **config)
        self.daemon: Daemon = build(self.config, self.clock)
        self.model, self.hub, self.metrics = self.daemon.model, self.daemon.hub, self.daemon.metrics
        self.factory, self.site, self.reaper = (
            self.daemon.factory,
            self.daemon.site,
            self.daemon.reaper,
        )
        self.reaper.startService()
        self.clients: list[Client] = []

    # -- connections -------------------------------------------------------------------------

    def open(self, *, answer_close: bool = True) -> Client:
        """A connection made, nothing sent yet."""
        client = Client(self, answer_close=answer_close)
        self.clients.append(client)
        self.settle()
        return client

    def connect(
        self,
        path: str = "/?userId=alice",
        headers: Mapping[str, str] | None = None,
        *,
        answer_close: bool = True,
    ) -> Client:
        """A WebSocket client that has sent its opening handshake (and, pumped, got the
        answer)."""
        client = self.open(answer_close=answer_close)
        client.request(path, headers)
        return client

    def user(
        self, user_id: str, *, subscribe: list[str] | None = None, answer_close: bool = True
    ) -> Client:
        client = self.connect(f"/?userId={user_id}", answer_close=answer_close)
        if subscribe:
            client.send({"type": "SUBSCRIBE", "payload": {"userIds": subscribe}})
            self.settle()
        return client

    def http(self, path: str, headers: Mapping[str, str] | None = None) -> Client:
        """A plain HTTP GET; the answer is in ``status``, ``response_headers`` and ``body``."""
        client = self.open()
        client.feed(http_request(path, headers))
        self.settle()
        return client

    # -- time and bytes ----------------------------------------------------------------------

    def settle(self) -> None:
        """Pumped: flush. Direct: nothing (everything already arrived)."""
        if self.transport == "pumped":
            self.flush()

    def flush(self) -> None:
        """Until every connection is quiet: one connection's bytes can cause another's."""
        for _ in range(10_000):
            if not any([client.link.step() for client in self.clients]):
                self.clients = [c for c in self.clients if not c.link.lost]
                return
        raise AssertionError("the connections never went quiet")

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass in steps, flushing after each, ending exactly ``seconds`` later."""
        target = self.clock.seconds() + seconds
        while (left := target - self.clock.seconds()) > 0:
            self.clock.advance(min(step, left))
            self.flush()

    # -- the daemon's parts ------------------------------------------------------------------

    def shutdown(self) -> defer.Deferred[None]:
        """What SIGTERM does first: the daemon's ShutdownService says goodbye to everyone."""
        (service,) = [s for s in self.daemon if isinstance(s, ShutdownService)]
        return service.stopService()

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def error_count(self, reason: str) -> float:
        return self.sample("ws_errors_total", reason=reason)
