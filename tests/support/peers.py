"""A stand-in for a connection's sending side (``core.model.Peer``): records what it is
sent. Pure: no reactor, no transport."""

from __future__ import annotations

from presence.core.wire import Shared


class FakePeer:
    def __init__(self, name: str = "") -> None:
        self.name = name
        self.sent: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def send_shared(self, message: Shared) -> None:
        self.sent.append(message.payload)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))
