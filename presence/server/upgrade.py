"""The opening handshake of a plain WebSocket client, without Autobahn's general parse.

Autobahn's ``processHandshake`` handles every kind of request (status pages, Hixie,
subprotocols, extensions, proxies, repeated headers) and formats debug arguments on the
way; for the handshake nearly every client sends it is most of what accepting a connection
costs. ``plain_upgrade`` takes only a request that Autobahn would take exactly as it
comes: ``GET`` of an absolute path over HTTP/1.1, token header names, printable ASCII
values, no header twice, ``Host``, ``Upgrade: websocket``, ``Connection: upgrade``,
``Sec-WebSocket-Version: 13`` and a well-formed key, and none of
``Sec-WebSocket-Protocol``, ``Sec-WebSocket-Extensions`` or ``X-Forwarded-For``. It reads
out of it what Autobahn would, and ``onConnect`` and Autobahn's own ``succeedHandshake``
and ``failHandshake`` take it from there. Anything else, and any request Autobahn would
refuse, goes to Autobahn's ``processHandshake``, which answers it as before.
"""

from __future__ import annotations

import re
from binascii import b2a_base64
from contextlib import suppress
from dataclasses import dataclass
from hashlib import sha1
from typing import Any, cast
from urllib.parse import parse_qs

import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats, _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import tcp
from twisted.logger import Logger

from .fastpath import DIRECT, NO_QUEUE, FastPathProtocol

log = Logger()

# Request line, then header lines: a token name, a colon, printable ASCII or HTAB.
_PLAIN_HEAD = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t -~]*\r\n)*)\r\n"
)
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
# Autobahn would read these differently, or they need its general path.
_GENERAL = frozenset(("sec-websocket-protocol", "sec-websocket-extensions", "x-forwarded-for"))


@dataclass(frozen=True, slots=True)
class PlainUpgrade:
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    host: str
    origin: str
    key: str


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


def plain_upgrade(head: bytes) -> PlainUpgrade | None:
    """``head``: a request up to and including its blank line. What Autobahn's
    processHandshake would read from it, or None when it is not a plain upgrade (Autobahn
    then decides)."""
    match = _PLAIN_HEAD.fullmatch(head)
    if match is None:
        return None
    uri = match.group(1).decode("ascii")
    if uri.startswith("//") or "#" in uri or ";" in uri:
        return None  # a netloc, a fragment or path parameters: urlparse's to split
    headers: dict[str, str] = {}
    for line in match.group(2).decode("ascii").split("\r\n")[:-1]:
        name, _, value = line.partition(":")
        name = name.lower()
        if name in headers or name in _GENERAL:
            return None
        headers[name] = value.strip(" \t")
    host = headers.get("host")
    upgrade = headers.get("upgrade")
    connection = headers.get("connection")
    key = headers.get("sec-websocket-key")
    if (
        host is None
        or upgrade is None
        or connection is None
        or key is None
        or headers.get("sec-websocket-version") != "13"
        or not _has_token(upgrade, "websocket")
        or not _has_token(connection, "upgrade")
        or len(key) != 24
        or not key.endswith("==")
        or not _BASE64.issuperset(key[:-2].encode("ascii"))
    ):
        return None
    if ":" in host and not host.endswith("]"):
        name, _, port = host.rpartition(":")
        if not port.isdigit() or not port.isascii():
            return None
        host = name
    path, _, query = uri.partition("?")
    return PlainUpgrade(path, parse_qs(query), headers, host, headers.get("origin", ""), key)


# Autobahn counts every connection's traffic into an object of its own that nothing here
# reads: one shared sink instead of one each.
_TRAFFIC_SINK = TrafficStats()


class UpgradeProtocol(FastPathProtocol):
    """``processHandshake`` for plain upgrades, and Autobahn's per-connection set-up with
    what is the same for every connection kept once on the class."""

    # Protocol options read here (the factory sets them on the class).
    openHandshakeTimeout: float
    tcpNoDelay: bool
    maxConnections: int
    autoPingInterval: float
    allowedOriginsPatterns: Any

    # What Autobahn's _connectionMade sets on every connection, where it is the same for
    # all of them (assigning one later makes it the connection's own, as before).
    _perMessageCompress = None
    trackedTimings: Any = None
    send_state = FastPathProtocol.SEND_STATE_GROUND
    data = b""
    triggered = False
    wasMaxFramePayloadSizeExceeded = False
    wasMaxMessagePayloadSizeExceeded = False
    closedByMe = False
    failedByMe = False
    droppedByMe = False
    wasClean = False
    wasNotCleanReason: Any = None
    wasServerConnectionDropTimeout = False
    wasOpenHandshakeTimeout = False
    wasCloseHandshakeTimeout = False
    wasServingFlashSocketPolicyFile = False
    localCloseCode = None
    localCloseReason = None
    remoteCloseCode = None
    remoteCloseReason = None
    openHandshakeTimeoutCall = None
    closeHandshakeTimeoutCall = None
    autoPingTimeoutCall = None
    autoPingPending = None
    autoPingPendingCall = None
    autoPingPendingSeq = 0
    autoPingPendingSent = None
    trafficStats = _TRAFFIC_SINK
    # What a plain upgrade leaves as it is (Autobahn's own path sets them for each).
    websocket_version = 13  # the only version the factory takes
    websocket_protocols: Any = ()
    websocket_extensions: Any = ()
    websocket_origin = ""
    websocket_protocol_in_use = None
    websocket_extensions_in_use: Any = ()
    inside_message = False
    current_frame: Any = None
    # The request was whole when the connection was handed over (a direct upgrade): the
    # handshake is answered at once, so no opening-handshake timer is armed for it.
    head_complete = False

    _utf8validator: Utf8Validator | None = None
    _plain: PlainUpgrade | None = None  # the head was read already (a direct upgrade)

    @property
    def utf8validator(self) -> Utf8Validator:
        """Made when a message first needs it (the fast path validates in one step)."""
        validator = self._utf8validator
        if validator is None:
            validator = self._utf8validator = Utf8Validator()
        return validator

    @utf8validator.setter
    def utf8validator(self, validator: Utf8Validator) -> None:
        self._utf8validator = validator

    _details: TransportDetails | None = None

    def __init__(self) -> None:
        # WebSocketProtocol.__init__ makes two Deferreds and a placeholder TransportDetails
        # for every connection; here they are made when first read (see below).
        self.set_valid_events(["message"])

    # is_open and is_closed: Autobahn's Deferreds for whoever waits on the connection (no
    # one here). Made when first read; resolving one reads it, so Autobahn's own paths
    # work as before. A plain upgrade only remembers that it opened (see _succeed).
    _is_open: Any = None
    _is_closed: Any = None
    _open_done = False

    @property
    def is_open(self) -> Any:
        future = self._is_open
        if future is None:
            future = self._is_open = txaio.create_future()  # type: ignore[attr-defined]
            if self._open_done:
                txaio.resolve(future, None)  # type: ignore[attr-defined]
        return future

    @is_open.setter
    def is_open(self, future: Any) -> None:
        self._is_open = future

    @property
    def is_closed(self) -> Any:
        future = self._is_closed
        if future is None:
            future = self._is_closed = txaio.create_future()  # type: ignore[attr-defined]
        return future

    @is_closed.setter
    def is_closed(self, future: Any) -> None:
        self._is_closed = future

    @property
    def _transport_details(self) -> TransportDetails:
        """Autobahn's description of the transport, made when first read: over plain TCP
        nothing reads it (TLS reads it when the connection opens)."""
        details = self._details
        if details is None:
            details = self._details = create_transport_details(cast(Any, self.transport), True)
            details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

    @_transport_details.setter
    def _transport_details(self, details: TransportDetails) -> None:
        self._details = details

    def connectionMade(self) -> None:
        """Autobahn's, with the transport details left until read, for TCP and UNIX."""
        transport: Any = self.transport
        if transport.__class__ not in DIRECT:
            super().connectionMade()
            return
        self.peer = peer2str(transport)
        if transport.__class__ is tcp.Server:  # a UNIX socket has no Nagle
            with suppress(OSError):  # as Autobahn: a socket already gone is no error here
                transport.setTcpNoDelay(self.tcpNoDelay)
        self._connectionMade()

    def _onOpen(self) -> None:
        if self._details is None:  # TCP or UNIX: nothing secure to describe
            self.onOpen()
        else:
            super()._onOpen()

    def _connectionMade(self) -> None:
        """Autobahn's, without what every connection shares (above) and the debug lines."""
        for name in self.CONFIG_ATTRS:  # none with PresenceFactory (it bakes them in)
            if not hasattr(self, name):
                setattr(self, name, getattr(self.factory, name))
        self.state = self.STATE_CONNECTING
        self.send_queue = NO_QUEUE  # a real one when a chopped or synchronous send needs it
        self.factory.countConnections += 1
        if self.openHandshakeTimeout > 0 and not self.head_complete:
            self.arm_open_handshake_timeout()

    def arm_open_handshake_timeout(self) -> None:
        self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(
            self.openHandshakeTimeout, self.onOpenHandshakeTimeout
        )

    def upgrade(self, head: bytes, plain: PlainUpgrade | None = None) -> None:
        """A whole opening handshake (and nothing after it), taken at once: the response
        and what opening the connection sends go out in one send(). ``plain``: what
        ``plain_upgrade(head)`` gave, when the caller read it already."""
        self._plain = plain
        if self.transport.__class__ not in DIRECT:  # TLS: Autobahn's writes, as they were
            self.dataReceived(head)
        else:
            self._cork = []
            try:
                self.dataReceived(head)
            finally:
                if self._cork is not None:
                    self._uncork()
        if self.state == self.STATE_CONNECTING and self.openHandshakeTimeout > 0:
            self.arm_open_handshake_timeout()  # onConnect is still deciding

    def dropConnection(self, abort: bool = False) -> None:
        if self._cork is not None:  # what is held back goes first, as it was sent first
            self._uncork(check=False)
        super().dropConnection(abort)

    def processHandshake(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n") + 4
        request, self._plain = self._plain, None
        if request is None and end > 3:
            request = plain_upgrade(data[:end])
        factory = self.factory
        if (
            request is None
            or self.maxConnections > 0
            or factory.externalPort
            or not self._origin_allowed(request.origin)
        ):
            super().processHandshake()
            return
        self.data = data[end:]
        if request.origin:
            self.websocket_origin = request.origin
        connection_request = ConnectionRequest(
            self.peer,
            request.headers,
            request.host,
            request.path,
            request.params,
            13,
            request.origin,
            [],
            [],
        )
        try:
            accepted = self.onConnect(connection_request)
        except ConnectionDeny as e:
            self.failHandshake(e.reason, e.code)  # type: ignore[arg-type]
            return
        except Exception as e:
            log.failure("unexpected error in onConnect")
            self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
            return
        if accepted is not None or factory.headers or self.autoPingInterval:
            self._wskey = request.key
            self.succeedHandshake(accepted)  # a subprotocol or headers: Autobahn's answer
        else:
            self._succeed(request.key)

    def _succeed(self, key: str) -> None:
        """Autobahn's succeedHandshake with no subprotocol, extension, header of our own or
        automatic ping: the same response, and the connection open."""
        server = self.factory.server
        accept = b2a_base64(sha1(key.encode("ascii") + self._WS_MAGIC).digest(), newline=False)
        self.sendData(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            + (f"Server: {server}\r\n".encode() if server else b"")
            + b"Upgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept
            + b"\r\n\r\n"
        )
        self.state = self.STATE_OPEN
        call = self.openHandshakeTimeoutCall
        if call is not None:
            call.cancel()
            self.openHandshakeTimeoutCall = None
        self._onOpen()
        if self._is_open is None:
            self._open_done = True  # is_open, when first read, is resolved
        else:
            txaio.resolve(self._is_open, None)  # type: ignore[attr-defined]
        if self.data:
            self.consumeData()

    def _origin_allowed(self, origin: str) -> bool:
        """Autobahn's own origin check (its own functions), where it would pass."""
        if not origin:
            return True
        try:
            parsed: Any = _url_to_origin(origin)
        except ValueError:
            return False
        if parsed == "null" and self.factory.allowNullOrigin:
            return True
        factory = self.factory
        return bool(
            _is_same_origin(
                parsed,
                "https" if factory.isSecure else "http",
                factory.externalPort or factory.port,
                self.allowedOriginsPatterns,
            )
        )
