"""The HTTP side of the opening handshake: an absolute deadline and a cap on header bytes.

Twisted's own idle timeout restarts on every byte, so a client that sends its request a
byte a second would hold a connection (and its parser state) forever. This channel gives
every request an absolute deadline from its first byte (from the connection's start for
the first request, so a TLS handshake counts too) until the whole request has arrived;
past it the connection is aborted. Request line plus headers are capped at
``max_header_bytes`` (one line included): more gets 400 and the connection is closed.
Once a request is complete (a WebSocket upgrade is handed to Autobahn at that point) the
deadline is off.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http

log = Logger()

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_HEADER_BYTES = 16384


class HandshakeChannel(http.HTTPChannel):
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    totalHeadersSize = DEFAULT_MAX_HEADER_BYTES
    MAX_LENGTH = DEFAULT_MAX_HEADER_BYTES  # LineReceiver: the longest line it buffers
    on_expired: Any = None  # called (no arguments) when a deadline drops a connection

    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest:
            self._arm()  # the first byte of the next request on a kept-alive connection
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        super().connectionLost(reason)

    def _arm(self) -> None:
        if self.handshake_timeout > 0:
            self._deadline = self.callLater(self.handshake_timeout, self._expired)

    def _disarm(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expired(self) -> None:
        self._deadline = None
        log.info(
            "dropped a connection: request not complete within {timeout}s",
            timeout=self.handshake_timeout,
        )
        if self.on_expired is not None:
            self.on_expired()
        if self.transport is not None:
            abort = getattr(self.transport, "abortConnection", self.transport.loseConnection)
            abort()
