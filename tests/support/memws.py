"""The whole server side in memory: the real Site (HandshakeChannel, resource tree,
WebSocketResource) and PresenceProtocol over a StringTransport, on a task.Clock.

Synchronous: a test writes bytes in and reads frames out, nothing waits. The transport
carries the buffer attributes of a real TCP transport so the slow-reader check can be
driven too (``stall()``: from now on written bytes stay "unsent")."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from presence.app import build
from presence.config import Config
from presence.server.ws import PresenceProtocol

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MASK = b"\x11\x22\x33\x44"


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


class MemTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 3000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.protocol: Any = None
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.stalled = False
        self.aborted = False

    bufferSize = 2**16  # as TCP's: past it a streaming producer is paused

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.stalled:
            self._tempDataLen += len(data)
            if self._tempDataLen > self.bufferSize and self.producer and self.streaming:
                self.producer.pauseProducing()

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()

    def unregisterProducer(self) -> None:
        # Like TCP's and TLS's transports, not StringTransport: none registered is fine.
        self.producer = None
        self.streaming = None


class Client:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport = MemTransport()
        self.channel = server.site.buildProtocol(self.transport.getPeer())
        assert self.channel is not None
        self.channel.makeConnection(self.transport)
        self._read = 0
        self.status: int | None = None
        self.response_headers: bytes = b""
        self.close_code: int | None = None
        self.close_reason: str | None = None

    # -- raw bytes ------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        target = self.transport.protocol or self.channel
        target.dataReceived(data)

    @property
    def ws(self) -> PresenceProtocol:
        proto = self.transport.protocol
        assert isinstance(proto, PresenceProtocol)
        return proto

    def request(self, path: str = "/?userId=alice", headers: dict[str, str] | None = None) -> int:
        """Send an upgrade request; return the HTTP status of the answer."""
        lines = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1:3000",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.feed(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self.read_status()

    def read_status(self) -> int:
        data = self.transport.value()
        head, sep, _ = data.partition(b"\r\n\r\n")
        if not sep:
            return 0
        self.response_headers = head
        self.status = int(head.split(b" ", 2)[1])
        self._read = len(head) + 4
        return self.status

    # -- frames -----------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        self.feed(client_frame(json.dumps(message).encode()))

    def send_text(self, data: bytes) -> None:
        self.feed(client_frame(data))

    def frames(self) -> list[tuple[int, bytes]]:
        data = self.transport.value()
        frames = []
        pos = self._read
        while pos + 2 <= len(data):
            opcode = data[pos] & 0x0F
            n = data[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                n, start = int.from_bytes(data[start : start + 2], "big"), start + 2
            elif n == 127:
                n, start = int.from_bytes(data[start : start + 8], "big"), start + 8
            if start + n > len(data):
                break
            payload = data[start : start + n]
            frames.append((opcode, payload))
            if opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else None
                self.close_reason = payload[2:].decode()
            pos = start + n
        self._read = pos
        return frames

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for op, p in self.frames() if op == 1]

    def message(self) -> dict[str, Any]:
        got = self.messages()
        assert len(got) == 1, got
        return got[0]


class Server:
    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.config = Config(ports=(), **config)
        self.daemon = build(self.config, self.clock)
        self.model, self.hub, self.metrics = self.daemon.model, self.daemon.hub, self.daemon.metrics
        self.factory, self.site = self.daemon.factory, self.daemon.site

    def connect(
        self, path: str = "/?userId=alice", headers: dict[str, str] | None = None
    ) -> Client:
        client = Client(self)
        client.request(path, headers)
        return client

    def error_count(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("ws_errors_total", {"reason": reason})
        return value or 0.0
