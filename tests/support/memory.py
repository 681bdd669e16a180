"""The whole daemon in memory: the real Site and Autobahn protocol, a tiny WebSocket client,
iosim transports pumped by hand, and a task.Clock for every timer. No reactor runs."""

from __future__ import annotations

import json
import struct
import weakref
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test import iosim
from zope.interface import alsoProvides

from presence.app import build
from presence.config import Config
from presence.server.services import ShutdownService


def frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x00\x00\x00\x00"
) -> bytes:
    """A client frame: always masked (by default with a zero key, which the RFC allows)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class Client(Protocol):
    def __init__(
        self, path: str, headers: dict[str, str] | None = None, answer_close: bool = True
    ) -> None:
        self.path = path
        self.answer_close = answer_close
        self.headers = headers or {}
        self.buffer = b""
        self.status: int | None = None
        self.response_headers = b""
        self.messages: list[Any] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.lost = False

    def connectionMade(self) -> None:
        lines = [
            f"GET {self.path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.status is None:
            if b"\r\n\r\n" not in self.buffer:
                return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.status = int(head.split(b" ", 2)[1])
            self.response_headers = head
        while len(self.buffer) >= 2:
            opcode, length, start = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                (length,), start = struct.unpack("!H", self.buffer[2:4]), 4
            elif length == 127:
                (length,), start = struct.unpack("!Q", self.buffer[2:10]), 10
            if len(self.buffer) < start + length:
                return
            payload = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            if opcode == 1:
                self.messages.append(json.loads(payload))
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else None
                self.close_reason = payload[2:].decode()
                if self.answer_close:  # as a real client does: echo the close
                    self.transport.write(frame(8, payload[:2]))

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

    def send(self, message: Any) -> None:
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, payload: bytes, opcode: int = 1) -> None:
        self.transport.write(frame(opcode, payload))

    def of_type(self, kind: str) -> list[Any]:
        return [m for m in self.messages if m.get("type") == kind]


class Pump:
    """Moves bytes between two in-memory transports. Unlike iosim's pump, a connection
    closed by either side is reported lost to both, as TCP does."""

    def __init__(self, server: Protocol, client: Protocol) -> None:
        self.first_server_protocol = weakref.ref(server)  # the HTTP channel, before an upgrade
        self.server = iosim.FakeTransport(server, isServer=True)
        # A TCP transport is a push producer, and the HTTP channel registers with it.
        alsoProvides(self.server, IPushProducer)
        self.client = iosim.FakeTransport(client, isServer=False)
        server.makeConnection(self.server)
        client.makeConnection(self.client)
        self.done = False

    def flush(self) -> bool:
        """Move everything pending; True if anything moved."""
        for step in range(10_000):
            if not self._step():
                return step > 0
        raise AssertionError("the connection never went quiet")

    def _step(self) -> bool:
        if self.done:
            return False
        from_server, from_client = self.server.getOutBuffer(), self.client.getOutBuffer()
        self.server._checkProducer()
        self.client._checkProducer()
        if from_client:
            self.server.bufferReceived(from_client)
        if from_server:
            self.client.bufferReceived(from_server)
        if from_client or from_server:
            return True
        if self.server.disconnecting or self.client.disconnecting:
            self.done = True
            for transport in (self.server, self.client):
                transport.disconnected = True
                transport.reportDisconnect()
            return True
        return False


class MemoryDaemon:
    def __init__(
        self,
        heartbeat_timeout: float = 45.0,
        offline_grace: float = 10.0,
        max_message_size: int = 65536,
        max_subscriptions: int = 1000,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # a plausible wall-clock time
        config = Config(
            ports=(),
            heartbeat_interval=heartbeat_timeout / 3,
            heartbeat_timeout=heartbeat_timeout,
            max_message_size=max_message_size,
            offline_grace=offline_grace,
            max_subscriptions=max_subscriptions,
        )
        self.daemon = build(config, self.clock)
        self.model, self.hub, self.metrics = self.daemon.model, self.daemon.hub, self.daemon.metrics
        self.factory, self.site, self.reaper = (
            self.daemon.factory,
            self.daemon.site,
            self.daemon.reaper,
        )
        self.reaper.startService()
        self.shutdown = ShutdownService(self.hub, self.clock)
        self.pumps: list[Pump] = []

    def connect(
        self, query: str = "", headers: dict[str, str] | None = None, answer_close: bool = True
    ) -> Client:
        client = Client("/" + query, headers, answer_close)
        self.open(client)
        return client

    def open(self, client: Protocol) -> Pump:
        server = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 3000))
        pump = Pump(server, client)
        self.pumps.append(pump)
        self.flush()
        return pump

    def flush(self) -> None:
        """Until every connection is quiet: one connection's bytes can cause another's."""
        while any([pump.flush() for pump in self.pumps]):
            pass

    def advance(self, seconds: float, step: float = 0.25) -> None:
        """Let time pass in small steps, moving bytes after each."""
        remaining = seconds
        while remaining > 1e-9:
            delta = min(step, remaining)
            self.clock.advance(delta)
            self.flush()
            remaining -= delta

    def user(
        self, user_id: str, *, subscribe: list[str] | None = None, answer_close: bool = True
    ) -> Client:
        client = self.connect(f"?userId={user_id}", answer_close=answer_close)
        if subscribe:
            client.send({"type": "SUBSCRIBE", "payload": {"userIds": subscribe}})
            self.flush()
        return client
