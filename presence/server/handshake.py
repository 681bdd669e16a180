"""The HTTP side of the opening handshake: an absolute deadline and a cap on header bytes.

Twisted's own idle timeout restarts on every byte, so a client that sends its request a
byte a second would hold a connection (and its parser state) forever. This channel gives
every request an absolute deadline from its first byte (from the connection's start for
the first request, so a TLS handshake counts too) until the whole request has arrived;
past it the connection is aborted. Request line plus headers are capped at
``max_header_bytes`` (one line included): more gets 400 and the connection is closed.
Once a request is complete (a WebSocket upgrade is handed to Autobahn at that point) the
deadline is off.

The upgrade at "/" (``websocket`` set: the WebSocket factory) skips twisted.web: Autobahn
parses the opening handshake itself, and twisted.web's parse (a Request, its headers, the
resource lookup, and the request re-serialised for Autobahn) was done for nothing. Only a
first request that twisted.web would take as it is, send to "/" and hand to Autobahn
unchanged goes this way: ``GET /`` or ``GET /?query`` over HTTP/1.1, within the header
cap, well-formed header lines (token names, printable ASCII values), no header twice, no
body or ``Expect``, ``Upgrade: websocket``, and nothing after the blank line. Anything else
(other paths, a plain GET, anything odd or malformed) is fed to twisted.web as it came,
which answers it exactly as before.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import http

from .upgrade import PlainUpgrade, plain_request, read_head

log = Logger()

DEFAULT_HANDSHAKE_TIMEOUT = 5.0
DEFAULT_MAX_HEADER_BYTES = 16384


_PREFIXES = (b"GET / ", b"GET /?")
_NOT_DIRECT = frozenset(("content-length", "transfer-encoding", "expect"))


def _may_be_upgrade(data: bytes | bytearray) -> bool:
    start = bytes(data[:6])
    return any(prefix.startswith(start) for prefix in _PREFIXES)


def direct_upgrade(data: bytes, max_bytes: int, max_headers: int) -> bool | None:
    """Is ``data`` (a connection's first bytes) an opening handshake for "/" that
    twisted.web would pass to Autobahn unchanged? None: cannot tell yet."""
    found = upgrade_request(data, max_bytes, max_headers)
    return found if found is None or isinstance(found, bool) else True


def upgrade_request(data: bytes, max_bytes: int, max_headers: int) -> PlainUpgrade | bool | None:
    """As ``direct_upgrade``, but a plain upgrade (the handshake nearly every client sends)
    comes back read: a ``PlainUpgrade``, so that the protocol does not read it again."""
    if not _may_be_upgrade(data):
        return False
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None if len(data) <= max_bytes else False
    if end + 4 != len(data) or end + 4 > max_bytes:
        return False
    # The opening handshake the direct upgrade takes: request line, then header lines
    # (token name, colon, printable ASCII or HTAB), then the blank line, and nothing else.
    read = read_head(data)
    if read is None:
        return False
    target, headers = read
    if (
        (target != "/" and not target.startswith("/?"))
        or len(headers) > max_headers
        or not _NOT_DIRECT.isdisjoint(headers)
        or headers.get("upgrade", "").lower() != "websocket"
    ):
        return False
    return plain_request(target, headers) or True


def release_channel(channel: Any) -> None:
    """The WebSocket protocol takes the transport over. Without this, the HTTP channel
    that carried the handshake (and its request) lived on for the whole connection: held
    by the Site's idle timer (12 hours by default) and as the transport's registered
    producer, a place the WebSocket protocol takes for itself."""
    channel.setTimeout(None)
    # HTTPChannel registers itself with the transport (TCP, or TLS which wraps it) when
    # the connection is made; a transport that is no producer got a no-op stand-in.
    channel._networkProducer.unregisterProducer()
    channel._networkProducer = None


def hand_over(transport: Any, protocol: Any) -> None:
    """Connect ``protocol`` to the transport an HTTP channel had, as Autobahn's
    WebSocketResource does (under TLS the wrapper's inner protocol is replaced)."""
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(transport.protocol, ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    # As WebSocketResource: resume the transport, in case the HTTP side paused it.
    if hasattr(transport, "_networkProducer"):
        transport._networkProducer.resumeProducing()
    elif hasattr(transport, "resumeProducing"):
        transport.resumeProducing()


class HandshakeChannel(http.HTTPChannel):
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    totalHeadersSize = DEFAULT_MAX_HEADER_BYTES
    MAX_LENGTH = DEFAULT_MAX_HEADER_BYTES  # LineReceiver: the longest line it buffers
    on_expired: Any = None  # called (no arguments) when a deadline drops a connection
    websocket: Any = None  # the WebSocket factory: a direct upgrade for "/" (see above)

    _deadline: IDelayedCall | None = None
    _sniffing = False  # the first request, while it may still be a direct upgrade
    _sniffed: bytearray | None = None  # what came of it so far, when not all at once

    _http_started = False  # HTTPChannel's own connectionMade has run

    def connectionMade(self) -> None:
        # While the first request may still be a direct upgrade, HTTPChannel's set-up (its
        # idle timer, its producer on the transport, Nagle off) waits: a direct upgrade
        # never needs it, and the deadline above covers a client that sends nothing. With
        # no deadline the idle timer is what ends such a client: it starts at once.
        self._sniffing = self.websocket is not None
        if not self._sniffing or self.handshake_timeout <= 0:
            self._start_http()
        self._arm()

    def _start_http(self) -> None:
        self._http_started = True
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest:
            self._arm()  # the first byte of the next request on a kept-alive connection
        if self._sniffing:
            sniffed = self._sniffed
            if sniffed is not None:  # linear however the request is cut up
                searched = max(0, len(sniffed) - 3)  # the blank line may start there
                sniffed += data
                if (
                    len(sniffed) <= self.totalHeadersSize
                    and sniffed.find(b"\r\n\r\n", searched) < 0
                    and _may_be_upgrade(sniffed)
                ):
                    self.resetTimeout()  # as HTTPChannel.dataReceived
                    return
                data = bytes(sniffed)
                self._sniffed = None
            direct = upgrade_request(data, self.totalHeadersSize, self.maxHeaders)
            if direct is None:
                self._sniffed = bytearray(data)
                self.resetTimeout()
                return
            self._sniffing = False
            if direct:
                self._upgrade(data, None if direct is True else direct)
                return
            if not self._http_started:
                self._start_http()
        super().dataReceived(data)

    def _upgrade(self, head: bytes, plain: PlainUpgrade | None) -> None:
        """What WebSocketEntry and WebSocketResource do, without the Request."""
        self._disarm()
        if self._http_started:
            release_channel(self)
        transport: Any = self.transport
        self.transport = None
        protocol = self.websocket.buildProtocol(transport.getPeer())
        protocol.head_complete = True
        hand_over(transport, protocol)
        protocol.upgrade(head, plain)

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
