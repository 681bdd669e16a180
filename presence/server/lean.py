"""Autobahn's per-connection state, kept lean: what its set-up gives every connection and
is the same for all of them lives once on the class, and what no one here reads (its
Deferreds, the transport description, the UTF-8 validator for fragmented messages) is
made when first read. The values Autobahn reads are the ones it would have set."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Any, Generic, TypeVar, cast

import txaio
from autobahn.twisted.util import create_transport_details, peer2str
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.utf8validator import Utf8Validator
from twisted.internet import tcp

from .fastpath import DIRECT, NO_QUEUE, FastPathProtocol

P = TypeVar("P")
T = TypeVar("T")


def _future() -> Any:
    return txaio.create_future()  # type: ignore[attr-defined]


class MadeWhenRead(Generic[P, T]):
    """An attribute Autobahn sets on every connection, made when first read instead (and
    kept in ``slot``); assigning one sets it, as before."""

    def __init__(self, slot: str, make: Callable[[P], T]) -> None:
        self.slot = slot
        self.make = make

    def __get__(self, protocol: P, owner: Any = None) -> T:
        if protocol is None:  # read on the class
            return self  # type: ignore[return-value]
        value: T | None = getattr(protocol, self.slot)
        if value is None:
            value = self.make(protocol)
            setattr(protocol, self.slot, value)
        return value

    def __set__(self, protocol: P, value: T) -> None:
        setattr(protocol, self.slot, value)


# Autobahn counts every connection's traffic into an object of its own that nothing here
# reads: one shared sink instead of one each.
_TRAFFIC_SINK = TrafficStats()


class LeanProtocol(FastPathProtocol):
    """Autobahn's protocol with its per-connection set-up trimmed (see above)."""

    # Protocol options read here (the factory sets them on the class).
    openHandshakeTimeout: float
    tcpNoDelay: bool

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
    # The request was whole when the connection was handed over (a direct upgrade): it is
    # answered at once, so no opening-handshake timer is armed for it (see upgrade.py).
    head_complete = False

    def __init__(self) -> None:
        # WebSocketProtocol.__init__ makes two Deferreds and a placeholder TransportDetails
        # for every connection; here they are made when first read (below).
        self.set_valid_events(["message"])

    def _open_future(self) -> Any:
        future = _future()
        if self._open_done:
            txaio.resolve(future, None)  # type: ignore[attr-defined]
        return future

    def _describe(self) -> TransportDetails:
        details = create_transport_details(cast(Any, self.transport), True)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        return details

    # Made when a fragmented message first needs it (the fast path validates in one step).
    _utf8validator: Utf8Validator | None = None
    utf8validator = MadeWhenRead["LeanProtocol", Utf8Validator](
        "_utf8validator", lambda protocol: Utf8Validator()
    )
    # Autobahn's Deferreds for whoever waits on the connection (no one here). Resolving one
    # reads it, so Autobahn's own paths work as before; a plain upgrade only remembers that
    # it opened (``_open_done``), and is_open is resolved when it is made.
    _is_open: Any = None
    _is_closed: Any = None
    _open_done = False
    is_open = MadeWhenRead["LeanProtocol", Any]("_is_open", _open_future)
    is_closed = MadeWhenRead["LeanProtocol", Any]("_is_closed", lambda protocol: _future())
    # Autobahn's description of the transport: over TCP and UNIX nothing reads it (TLS
    # reads it when the connection opens).
    _details: TransportDetails | None = None
    _transport_details = MadeWhenRead["LeanProtocol", TransportDetails]("_details", _describe)

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
