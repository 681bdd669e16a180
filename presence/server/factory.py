"""The Autobahn factory: every protocol option set on purpose, the timers on the injected
clock, and the admission check that answers before the upgrade."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from twisted.internet.interfaces import IReactorTime
from txaio._common import _BatchedTimer

from ..core import policy
from ..core.auth import JwtVerifier
from ..core.origins import OriginPolicy
from ..hub import PresenceHub
from .metrics import Metrics
from .ws import PresenceProtocol


@dataclass(frozen=True)
class ProtocolConfig:
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 45.0
    max_message_size: int = 65536
    close_handshake_timeout: float = 3.0
    open_handshake_timeout: float = 5.0
    allowed_origins: tuple[str, ...] = ("*",)
    compression: bool = False
    # None means --auth none (the userId is taken as given).
    verifier: JwtVerifier | None = None
    token_grace: float = 30.0
    rate_messages: int = 20
    rate_seconds: float = 10.0
    max_connections: int = 0  # 0: no cap of our own
    max_send_buffer: int = 4 * 1024 * 1024
    # The debug line per connection opened and closed: made only when --log-level debug
    # would write it (at 1,000 connections a second, building events nobody reads costs).
    log_connections: bool = True


def _accept_deflate(max_message_size: int) -> Callable[[list[Any]], Any]:
    """--compression: accept permessage-deflate, inflated size bounded by the message cap."""

    def accept(offers: list[Any]) -> Any:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer, max_message_size=max_message_size)
        return None

    return accept


def protocol_options(config: ProtocolConfig) -> dict[str, Any]:
    """Autobahn's defaults are open; every option is set here on purpose."""
    return dict(
        versions=[13],
        webStatus=False,
        utf8validateIncoming=True,
        maskServerFrames=False,
        requireMaskedClientFrames=True,
        applyMask=True,
        maxFramePayloadSize=config.max_message_size,
        maxMessagePayloadSize=config.max_message_size,
        autoFragmentSize=0,
        failByDrop=False,
        echoCloseCodeReason=False,
        openHandshakeTimeout=config.open_handshake_timeout,
        closeHandshakeTimeout=config.close_handshake_timeout,
        tcpNoDelay=True,
        perMessageCompressionAccept=(
            _accept_deflate(config.max_message_size) if config.compression else lambda o: None
        ),
        autoPingInterval=0,
        autoPingTimeout=0,
        serveFlashSocketPolicy=False,
        # Origins are decided in onConnect (a 403; Autobahn's own check answers 400).
        allowedOrigins=["*"],
        allowNullOrigin=True,
        maxConnections=0,
        trustXForwardedFor=0,
    )


class PresenceFactory(WebSocketServerFactory):
    protocol = PresenceProtocol  # type: ignore[assignment]

    def __init__(
        self, hub: PresenceHub, metrics: Metrics, config: ProtocolConfig, clock: IReactorTime
    ) -> None:
        super().__init__(reactor=clock)
        # Autobahn's handshake and close timers otherwise run on txaio's global reactor.
        self._batched_timer = _BatchedTimer(
            200.0, 1000, seconds_provider=clock.seconds, delayed_call_creator=clock.callLater
        )
        self.hub = hub
        self.metrics = metrics
        self.config = config
        self.clock = clock
        self.origins = OriginPolicy(config.allowed_origins)
        self.setProtocolOptions(**protocol_options(config))
        # What every connection reads on the hot path, once on a class of this factory's.
        self.protocol = type(  # type: ignore[assignment]
            "PresenceProtocol",
            (PresenceProtocol,),
            {
                "max_message_size": config.max_message_size,
                "max_send_buffer": config.max_send_buffer,
            },
        )
        self._bake_options()

    def setProtocolOptions(self, *args: Any, **options: Any) -> None:
        super().setProtocolOptions(*args, **options)
        self._bake_options()

    def _bake_options(self) -> None:
        """Autobahn copies every protocol option from the factory onto each new protocol
        (and pformats the list for a debug line nobody sees). They are the same for every
        connection, so they live once on this factory's protocol class instead, and the
        copy has nothing left to do. The values are the factory's own objects, as the copy
        would have set them (a function, perMessageCompressionAccept, as a staticmethod,
        so that it is not bound to the connection)."""
        protocol = self.protocol
        if protocol is PresenceProtocol:  # setProtocolOptions before the class exists
            return
        for name in WebSocketServerProtocol.CONFIG_ATTRS:
            value = getattr(self, name)
            if hasattr(type(value), "__get__"):  # a function would bind as a method
                value = staticmethod(value)
            setattr(protocol, name, value)
        protocol.CONFIG_ATTRS = []

    def at_capacity(self) -> bool:
        """--max-connections: this process holds as many WebSockets as it may."""
        return policy.at_capacity(self.hub.figures.connection_count, self.config.max_connections)
