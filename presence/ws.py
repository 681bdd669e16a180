"""The Autobahn protocol and factory: parse a frame, call the hub, turn errors into wire
errors and close codes. Nothing about presence is decided here."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from txaio._common import _BatchedTimer

from . import wire
from .hub import PresenceHub
from .metrics import Metrics
from .model import Connection

log = Logger()

STATE_OPEN = WebSocketProtocol.STATE_OPEN


@dataclass(frozen=True)
class ProtocolConfig:
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 45.0
    max_message_size: int = 65536
    close_handshake_timeout: float = 3.0
    open_handshake_timeout: float = 5.0
    allowed_origins: tuple[str, ...] = ("*",)
    compression: bool = False


def _close_code(proto: WebSocketServerProtocol) -> int | None:
    return proto.localCloseCode if proto.closedByMe else proto.remoteCloseCode


def text_frame(payload: bytes) -> bytes:
    """An unmasked, unfragmented server text frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


ZERO_MASK = b"\x00\x00\x00\x00"


def unmask(payload: bytes, mask: bytes) -> bytes:
    if mask == ZERO_MASK:  # what many load generators and some clients send
        return payload
    length = len(payload)
    key = (mask * ((length >> 2) + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
        length, "little"
    )


def _close_reason(proto: WebSocketServerProtocol) -> str | None:
    reason = proto.localCloseReason if proto.closedByMe else proto.remoteCloseReason
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason


class PresenceProtocol(WebSocketServerProtocol):
    factory: PresenceFactory

    conn: Connection | None = None
    user_id: str | None = None
    refusal: str | None = None
    disconnect_requested = False

    # -- handshake -------------------------------------------------------------------------

    def onConnect(self, request: Any) -> None:
        values = request.params.get("userId")
        user_id = values[0] if values else ""
        if not user_id:
            self.refusal = "missing userId"
        elif not wire.valid_user_id(user_id):
            self.refusal = "invalid userId"
        else:
            self.user_id = user_id

    def onOpen(self) -> None:
        factory = self.factory
        if self.refusal is not None or self.user_id is None:
            factory.metrics.errors["handshake"].inc()
            log.info("refused connection: {reason}", reason=self.refusal)
            self.close(wire.CLOSE_PROTOCOL_ERROR, self.refusal or "missing userId")
            return
        now = factory.clock.seconds()
        connection_id = os.urandom(9).hex()
        self.conn = factory.hub.open(connection_id, self.user_id, self, now)
        factory.metrics.connections_total.inc()
        config = factory.config
        self.send(
            wire.connect_message(
                self.user_id,
                connection_id,
                config.heartbeat_interval,
                config.heartbeat_timeout,
                wire.iso(now),
            )
        )
        log.info(
            "connect {connection_id} user={user_id!r}",
            connection_id=connection_id,
            user_id=self.user_id,
        )

    # -- messages --------------------------------------------------------------------------

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        started = perf_counter()
        conn = self.conn
        if conn is None:
            return
        factory = self.factory
        metrics = factory.metrics
        now = factory.clock.seconds()
        conn.last_active = now
        metrics.message_size.observe(len(payload))
        if isBinary:
            metrics.messages["INVALID"].inc()
            metrics.errors["binary_frame"].inc()
            self.close(wire.CLOSE_UNSUPPORTED_DATA, "binary frames are not supported")
            return
        try:
            message = wire.parse(payload)
            kind, handler = self._handlers[type(message)]
            metrics.messages[kind].inc()
            handler(self, conn, message, now)
        except wire.WireError as e:
            metrics.messages["INVALID"].inc()
            metrics.errors["invalid_message"].inc()
            self.send(wire.error_message(e.code, e.message, wire.iso(now)))
        except Exception:
            metrics.errors["internal"].inc()
            log.failure("error handling a message on {connection_id}", connection_id=conn.id)
            self.close(wire.CLOSE_INTERNAL_ERROR, "internal server error")
        metrics.latency.observe(perf_counter() - started)

    def on_HEARTBEAT(self, conn: Connection, message: wire.Heartbeat, now: float) -> None:
        self.send(wire.heartbeat_ack(wire.iso(now)))

    def on_PRESENCE_UPDATE(
        self, conn: Connection, message: wire.PresenceUpdate, now: float
    ) -> None:
        self.factory.hub.update(conn, message.status, message.metadata, now)

    def on_DISCONNECT(self, conn: Connection, message: wire.Disconnect, now: float) -> None:
        self.disconnect_requested = True
        self.close(wire.CLOSE_NORMAL, "disconnect")

    def on_SUBSCRIBE(self, conn: Connection, message: wire.Subscribe, now: float) -> None:
        self.factory.hub.subscribe(conn, message.user_ids, now)

    def on_UNSUBSCRIBE(self, conn: Connection, message: wire.Unsubscribe, now: float) -> None:
        self.factory.hub.unsubscribe(conn, message.user_ids)

    def on_REFRESH_TOKEN(self, conn: Connection, message: wire.RefreshToken, now: float) -> None:
        raise wire.WireError("AUTH_DISABLED", "this server does not use tokens")

    _handlers: dict[type, tuple[str, Callable[..., None]]] = {
        wire.Heartbeat: ("HEARTBEAT", on_HEARTBEAT),
        wire.PresenceUpdate: ("PRESENCE_UPDATE", on_PRESENCE_UPDATE),
        wire.Disconnect: ("DISCONNECT", on_DISCONNECT),
        wire.Subscribe: ("SUBSCRIBE", on_SUBSCRIBE),
        wire.Unsubscribe: ("UNSUBSCRIBE", on_UNSUBSCRIBE),
        wire.RefreshToken: ("REFRESH_TOKEN", on_REFRESH_TOKEN),
    }

    def onPing(self, payload: bytes) -> None:
        if self.conn is not None:
            self.conn.last_active = self.factory.clock.seconds()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self.conn is not None:
            self.conn.last_active = self.factory.clock.seconds()

    # -- the end -------------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        # Offline at once only when the client said goodbye; anything else gets the grace.
        clean = self.disconnect_requested or (
            not self.closedByMe and self.remoteCloseCode == wire.CLOSE_NORMAL
        )
        self.factory.hub.close(conn, self.factory.clock.seconds(), clean)
        log.info(
            "disconnect {connection_id} user={user_id!r} code={code} reason={reason!r}",
            connection_id=conn.id,
            user_id=conn.user_id,
            code=_close_code(self),
            reason=_close_reason(self),
        )

    # -- Autobahn's per-message path, trimmed ---------------------------------------------
    # Its versions format debug-log arguments for every frame and fire a Deferred-backed
    # observer per message; we use neither, and these run once per frame.

    def dataReceived(self, data: bytes) -> None:
        if (
            self.state == STATE_OPEN
            and self.current_frame is None
            and not self.data
            and not self.inside_message
            and self._perMessageCompress is None
        ):
            data = self._small_text_frames(data)
            if not data:
                return
        self._dataReceived(data)

    def _small_text_frames(self, data: bytes) -> bytes:
        """Complete, masked, unfragmented text frames (nearly every frame we get) go straight
        to onMessage; whatever else is left (control frames, partial or large frames, bad
        UTF-8) is returned for Autobahn's own parser, which enforces the rules."""
        offset, end, limit = 0, len(data), self.factory.config.max_message_size
        while self.state == STATE_OPEN and end - offset >= 6:
            first, second = data[offset], data[offset + 1]
            length = second & 0x7F
            header = 6
            if length == 126:
                if end - offset < 8:
                    break
                length = int.from_bytes(data[offset + 2 : offset + 4], "big")
                header = 8
                if length < 126:  # not the minimal encoding: Autobahn fails it
                    break
            if first != 0x81 or second < 0x80 or length == 127 or length > limit:
                break
            start = offset + header
            if end - start < length:
                break
            payload = unmask(data[start : start + length], data[start - 4 : start])
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                break
            offset = start + length
            self.onMessage(payload, False)
        return data[offset:] if offset else data

    def onMessageEnd(self) -> None:
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data), self.message_is_binary)
        self.message_data = None  # type: ignore[assignment]

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if sync or chopsize or self.send_queue:
            super().sendData(data, sync, chopsize)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    # -- the Peer interface the model and hub use ------------------------------------------

    def send(self, data: bytes) -> None:
        if self.state == STATE_OPEN:
            if self._perMessageCompress is None:
                self.transport.write(text_frame(data))  # type: ignore[union-attr]
            else:
                self.sendMessage(data)

    def send_shared(self, message: wire.Shared) -> None:
        if self.state != STATE_OPEN:
            return
        prepared = message.prepared
        if prepared is None:
            prepared = message.prepared = self.factory.prepareMessage(message.payload)
        self.sendPreparedMessage(prepared)  # type: ignore[arg-type]

    def close(self, code: int, reason: str) -> None:
        """Close with any code, 1001-1013 included: sendClose only takes 1000 and 3000-4999."""
        if self.state == STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123], isReply=False)


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
        # Autobahn's defaults are open; every option is set here on purpose.
        self.setProtocolOptions(
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
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=0,
            autoPingTimeout=0,
            serveFlashSocketPolicy=False,
            allowedOrigins=list(config.allowed_origins),
            allowNullOrigin="*" in config.allowed_origins,
            maxConnections=0,
            trustXForwardedFor=0,
        )
