"""The Autobahn protocol and factory: parse a frame, call the hub, turn errors into wire
errors and close codes. Nothing about presence is decided here."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from txaio._common import _BatchedTimer

from ..core import wire
from ..core.auth import JwtVerifier, TokenRejected, bearer
from ..core.model import Connection
from ..core.origins import OriginPolicy
from ..core.ratelimit import ALLOWED, EXCEEDED, TokenBucket
from ..hub import PresenceHub
from .frames import text_frame, unmask, unsent_bytes
from .metrics import Metrics

log = Logger()

STATE_OPEN = WebSocketProtocol.STATE_OPEN
NO_QUEUE: Any = ()  # see _forget_handshake


@dataclass(frozen=True)
class ProtocolConfig:
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 45.0
    max_message_size: int = 65536
    close_handshake_timeout: float = 3.0
    open_handshake_timeout: float = 5.0
    allowed_origins: tuple[str, ...] = ("*",)
    compression: bool = False
    # Security (issue 4): None means --auth none (the userId is taken as given).
    verifier: JwtVerifier | None = None
    token_grace: float = 30.0
    rate_messages: int = 20
    rate_seconds: float = 10.0
    max_connections: int = 0  # 0: no cap of our own
    max_connections_per_user: int = 16  # 0: no cap
    max_send_buffer: int = 4 * 1024 * 1024


def _accept_deflate(max_message_size: int) -> Callable[[list[Any]], Any]:
    """--compression: accept permessage-deflate, inflated size bounded by the message cap."""

    def accept(offers: list[Any]) -> Any:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer):
                return PerMessageDeflateOfferAccept(offer, max_message_size=max_message_size)
        return None

    return accept


def _close_code(proto: WebSocketServerProtocol) -> int | None:
    return proto.localCloseCode if proto.closedByMe else proto.remoteCloseCode


def _close_reason(proto: WebSocketServerProtocol) -> str | None:
    reason = proto.localCloseReason if proto.closedByMe else proto.remoteCloseReason
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason


class PresenceProtocol(WebSocketServerProtocol):
    factory: PresenceFactory

    conn: Connection | None = None
    user_id: str | None = None
    refusal: str | None = None
    refusal_code: int = wire.CLOSE_PROTOCOL_ERROR
    disconnect_requested = False
    bucket: TokenBucket | None = None
    token_expires: float | None = None
    expiry_call: IDelayedCall | None = None

    # -- handshake -------------------------------------------------------------------------

    def onConnect(self, request: Any) -> None:
        factory = self.factory
        if not factory.origins.allows(request.origin):
            factory.metrics.errors["handshake"].inc()
            log.info("refused connection: origin not allowed")
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        if factory.at_capacity():
            factory.metrics.errors["capacity"].inc()
            log.info("refused connection: server at its connection limit")
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "too many connections")
        values = request.params.get("userId")
        user_id = values[0] if values else ""
        if not user_id:
            self.refusal = "missing userId"
        elif not wire.valid_user_id(user_id):
            self.refusal = "invalid userId"
        else:
            self.user_id = user_id
            verifier = factory.config.verifier
            if verifier is not None:
                self._authenticate(verifier, request, user_id)

    def _authenticate(self, verifier: JwtVerifier, request: Any, user_id: str) -> None:
        """?token= or Authorization: Bearer; a refusal closes 1008 naming the failed check."""
        tokens = request.params.get("token")
        token = tokens[0] if tokens else bearer(request.headers.get("authorization"))
        try:
            verified = verifier.verify(token or "", user_id, self.factory.clock.seconds())
        except TokenRejected as e:
            log.info(
                "refused connection for user={user_id!r}: {reason}",
                user_id=user_id,
                reason=e.reason,
            )
            self.user_id = None
            self.refusal = e.reason
            self.refusal_code = wire.CLOSE_POLICY_VIOLATION
            return
        self.token_expires = verified.expires

    def onOpen(self) -> None:
        self._forget_handshake()
        factory = self.factory
        if self.refusal is not None or self.user_id is None:
            auth = self.refusal_code == wire.CLOSE_POLICY_VIOLATION
            factory.metrics.errors["auth" if auth else "handshake"].inc()
            if not auth:  # a token refusal was logged, with its userId, when it was checked
                log.info("refused connection: {reason}", reason=self.refusal)
            self.close(self.refusal_code, self.refusal or "missing userId")
            return
        if factory.user_at_capacity(self.user_id):
            factory.metrics.errors["capacity"].inc()
            log.info("refused connection: user={user_id!r} at its limit", user_id=self.user_id)
            self.close(wire.CLOSE_TRY_AGAIN_LATER, "too many connections for this user")
            return
        now = factory.clock.seconds()
        config = factory.config
        self.bucket = TokenBucket(config.rate_messages, config.rate_seconds, now)
        if self.token_expires is not None:
            self._arm_expiry(now)
        connection_id = os.urandom(9).hex()
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.conn = factory.hub.open(connection_id, self.user_id, self, now)
        factory.metrics.connections_total.inc()
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
        # Checked above against this node's count; the cluster's count arrives just after
        # registration, and a connection ranked over the cap is the one to go.
        cap = config.max_connections_per_user
        if cap:
            rank = factory.hub.connection_rank(connection_id)
            if isinstance(rank, int):
                self._enforce_user_cap(rank, cap)
            else:
                rank.addCallback(self._enforce_user_cap, cap)

    def _enforce_user_cap(self, rank: int, cap: int) -> None:
        if rank > cap and self.conn is not None:
            self.factory.metrics.errors["capacity"].inc()
            log.info("closing {connection_id}: user over its limit", connection_id=self._cid())
            self.close(wire.CLOSE_TRY_AGAIN_LATER, "too many connections for this user")

    # Autobahn keeps the whole opening handshake on every protocol and never reads it after
    # processHandshake; at tens of thousands of connections that is real memory.
    _HANDSHAKE_ATTRIBUTES = (
        "http_request_data",
        "http_response_data",
        "http_headers",
        "http_request_params",
        "http_status_line",
        "http_request_uri",
        "http_request_host",
        "http_request_path",
        "_wskey",
    )

    def _forget_handshake(self) -> None:
        for name in self._HANDSHAKE_ATTRIBUTES:
            self.__dict__.pop(name, None)
        # Autobahn's queue for chopped or synchronous sends, which we never make: an empty
        # deque is 760 bytes a connection. sendData makes a real one if ever needed.
        self.send_queue = NO_QUEUE

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
        bucket = self.bucket
        if bucket is not None:
            verdict = bucket.take(now)
            if verdict != ALLOWED:
                self._rate_limited(verdict, now)
                return
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

    def _rate_limited(self, verdict: int, now: float) -> None:
        metrics = self.factory.metrics
        metrics.messages["INVALID"].inc()
        metrics.errors["rate_limited"].inc()
        if verdict == EXCEEDED:
            log.info("closing {connection_id}: rate limit exceeded", connection_id=self._cid())
            self.close(wire.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
        else:
            self.send(
                wire.error_message("RATE_LIMITED", "too many messages; dropped", wire.iso(now))
            )

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
        """A new token for the same sub moves the deadline; no reply when it is good."""
        verifier = self.factory.config.verifier
        if verifier is None:
            raise wire.WireError("AUTH_DISABLED", "this server does not use tokens")
        try:
            verified = verifier.verify(message.token, conn.user_id, now)
        except TokenRejected as e:
            self.factory.metrics.errors["auth"].inc()
            raise wire.WireError("INVALID_TOKEN", e.reason) from None
        self.token_expires = verified.expires
        self._arm_expiry(now)

    def _arm_expiry(self, now: float) -> None:
        """Close 1008 'token expired' --token-grace seconds after the token's exp."""
        assert self.token_expires is not None
        if self.expiry_call is not None and self.expiry_call.active():
            self.expiry_call.cancel()
        delay = max(0.0, self.token_expires + self.factory.config.token_grace - now)
        self.expiry_call = self.factory.clock.callLater(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.expiry_call = None
        self.factory.metrics.errors["auth"].inc()
        log.info("closing {connection_id}: token expired", connection_id=self._cid())
        self.close(wire.CLOSE_POLICY_VIOLATION, "token expired")

    def _cid(self) -> str:
        return self.conn.id if self.conn is not None else "-"

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
            now = self.factory.clock.seconds()
            self.conn.last_active = now
            # Pings count against the rate limit: over it they get no pong.
            bucket = self.bucket
            if bucket is not None:
                verdict = bucket.take(now)
                if verdict != ALLOWED:
                    self.factory.metrics.errors["rate_limited"].inc()
                    if verdict == EXCEEDED:
                        self.close(wire.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
                    return
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        if self.conn is not None:
            self.conn.last_active = self.factory.clock.seconds()

    # -- the end -------------------------------------------------------------------------

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None
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
            if self.send_queue is NO_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    # -- the Peer interface the model and hub use ------------------------------------------

    def send(self, data: bytes) -> None:
        if self.state == STATE_OPEN:
            if self._perMessageCompress is None:
                self.transport.write(text_frame(data))  # type: ignore[union-attr]
            else:
                self._send_compressed(data)
            self._check_send_buffer()

    def send_shared(self, message: wire.Shared) -> None:
        if self.state != STATE_OPEN:
            return
        if self._perMessageCompress is None:
            prepared = message.prepared
            if prepared is None:
                prepared = message.prepared = self.factory.prepareMessage(message.payload)
            # What sendPreparedMessage does uncompressed, without two calls per watcher.
            self.transport.write(prepared.payloadHybi)  # type: ignore[union-attr,attr-defined]
        else:  # compressed per connection: each has its own deflate context
            self._send_compressed(message.payload)
        self._check_send_buffer()

    def _send_compressed(self, data: bytes) -> None:
        # Autobahn applies --max-message-size to what we send as well (after compression);
        # it is a limit on clients, so the server's own messages are exempt.
        limit: int = self.maxMessagePayloadSize  # type: ignore[has-type]
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data)
        finally:
            self.maxMessagePayloadSize = limit

    def _check_send_buffer(self) -> None:
        if self.backed_up and unsent_bytes(self.transport) > self.factory.config.max_send_buffer:
            self._too_slow()

    # IPushProducer, registered with the transport when the connection opens: the transport
    # pauses us once its send buffer is full (64 KiB for TCP), i.e. the client is not keeping
    # up. Only then is the buffer measured, so a client that reads costs nothing per send.

    backed_up = False

    def pauseProducing(self) -> None:
        self.backed_up = True

    def resumeProducing(self) -> None:
        self.backed_up = False

    def stopProducing(self) -> None:
        pass

    def _too_slow(self) -> None:
        """A client that does not read: stop buffering for it (the close frame is the last
        thing queued; Autobahn drops the TCP connection after the close handshake timeout)."""
        self.factory.metrics.errors["slow_reader"].inc()
        log.info("closing {connection_id}: client is not reading", connection_id=self._cid())
        self.close(wire.CLOSE_POLICY_VIOLATION, "send buffer full: client is not reading")

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
        self.origins = OriginPolicy(config.allowed_origins)
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

    # -- admission: small methods so a cluster can swap in cluster-wide counts -----------

    def at_capacity(self) -> bool:
        """--max-connections: this process holds as many WebSockets as it may."""
        cap = self.config.max_connections
        return cap > 0 and self.hub.model.connection_count >= cap

    def user_at_capacity(self, user_id: str) -> bool:
        """--max-connections-per-user: this user already has as many as they may."""
        cap = self.config.max_connections_per_user
        return cap > 0 and self.hub.model.connections_of(user_id) >= cap
