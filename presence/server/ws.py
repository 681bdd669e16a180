"""The Autobahn protocol: parse a message, call the hub, turn errors into wire errors and
close codes. Nothing about presence is decided here."""

from __future__ import annotations

import os
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import policy, wire
from ..core.model import Connection
from ..core.ratelimit import ALLOWED, EXCEEDED, TokenBucket
from .admission import AdmittingProtocol
from .frames import text_frame

if TYPE_CHECKING:
    from .factory import PresenceFactory

log = Logger()


# The HEARTBEAT_ACK of the current millisecond, as (second, millisecond, payload, frame):
# every heartbeat answered in that millisecond gets the same bytes, formatted and framed once.
_heartbeat_ack: list[Any] = [-1, -1, b"", b""]


def _close_code(proto: WebSocketServerProtocol) -> int | None:
    return proto.localCloseCode if proto.closedByMe else proto.remoteCloseCode


def _close_reason(proto: WebSocketServerProtocol) -> str | None:
    reason = proto.localCloseReason if proto.closedByMe else proto.remoteCloseReason
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else reason


def _names(names: list[str], most: int = 10) -> str:
    """A readable list for an ERROR message, escaped, and bounded however many there are."""
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class PresenceProtocol(AdmittingProtocol):
    factory: PresenceFactory

    conn: Connection | None = None
    disconnect_requested = False
    bucket: TokenBucket | None = None
    # Between the handshake and CONNECT (the hub is registering the connection): what the
    # client sends meanwhile waits here, and an end is remembered as (time, clean).
    early: list[tuple[bytes, bool]] | None = None
    ended_early: tuple[float, bool] | None = None

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
        now = factory.clock.seconds()
        config = factory.config
        self.bucket = TokenBucket(config.rate_messages, config.rate_seconds, now)
        if self.token_expires is not None:
            self.arm_expiry(now)
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.early = []
        d = factory.hub.open(os.urandom(9).hex(), self.user_id, self, now)
        d.addCallbacks(self._opened, self._refused)
        d.addErrback(self._internal_error, "opening a connection")

    def _opened(self, conn: Connection) -> None:
        """The connection counts now: CONNECT, then what the client sent meanwhile."""
        early, self.early = self.early or [], None
        factory = self.factory
        if self.ended_early is not None:  # gone before it counted
            factory.hub.close(conn, *self.ended_early)
            return
        self.conn = conn
        factory.metrics.connections_total.inc()
        config = factory.config
        self.send(
            wire.connect_message(
                conn.user_id,
                conn.id,
                config.heartbeat_interval,
                config.heartbeat_timeout,
                wire.iso(factory.clock.seconds()),
            )
        )
        if config.log_connections:
            log.debug(
                "connect {connection_id} user={user_id!r}",
                connection_id=conn.id,
                user_id=conn.user_id,
            )
        for payload, binary in early:
            self.on_text(payload, binary)

    def _refused(self, failure: Failure) -> None:
        failure.trap(policy.OverCapacity)
        self.early = None
        self.factory.metrics.errors["capacity"].inc()
        log.info("refused connection: user={user_id!r} at its limit", user_id=self.user_id)
        self.close(wire.CLOSE_TRY_AGAIN_LATER, "too many connections for this user")

    def _internal_error(self, failure: Failure, what: str) -> None:
        self.factory.metrics.errors["internal"].inc()
        log.failure("error {what}", failure=failure, what=what)
        self.close(wire.CLOSE_INTERNAL_ERROR, "internal server error")

    # -- messages --------------------------------------------------------------------------

    def on_text(self, payload: bytes, isBinary: bool) -> None:
        started = perf_counter()
        conn = self.conn
        if conn is None:
            early = self.early
            if early is not None:
                if len(early) >= 3 * self.factory.config.rate_messages:  # as the rate limit
                    self.early = None
                    self.close(wire.CLOSE_POLICY_VIOLATION, "rate limit exceeded")
                else:
                    early.append((payload, isBinary))
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
        # The key is what wire.iso formats (the second, then the millisecond in it).
        second = int(now)
        milli = int((now - second) * 1000)
        ack = _heartbeat_ack
        if ack[1] != milli or ack[0] != second:
            payload = wire.heartbeat_ack(wire.iso(now))
            ack[:] = (second, milli, payload, text_frame(payload))
        self.send_framed(ack[2], ack[3])

    def on_PRESENCE_UPDATE(
        self, conn: Connection, message: wire.PresenceUpdate, now: float
    ) -> None:
        self.factory.hub.update(conn, message.status, message.metadata, now)

    def on_DISCONNECT(self, conn: Connection, message: wire.Disconnect, now: float) -> None:
        self.disconnect_requested = True
        self.close(wire.CLOSE_NORMAL, "disconnect")

    def on_SUBSCRIBE(self, conn: Connection, message: wire.Subscribe, now: float) -> None:
        refused = self.grants.unwatchable(conn.user_id, message.user_ids)
        if refused:
            raise wire.WireError("FORBIDDEN", f"not granted: {_names(refused)}")
        self.factory.hub.subscribe(conn, message.user_ids, now)

    def on_UNSUBSCRIBE(self, conn: Connection, message: wire.Unsubscribe, now: float) -> None:
        self.factory.hub.unsubscribe(conn, message.user_ids)

    def on_REFRESH_TOKEN(self, conn: Connection, message: wire.RefreshToken, now: float) -> None:
        """Narrower grants end, at once, what they no longer grant (one ERROR names it)."""
        grants = self.refresh_token(message.token, conn.user_id, now)
        hub = self.factory.hub
        users = grants.unwatchable(conn.user_id, sorted(conn.watching))
        rooms = grants.rooms.refused(sorted(conn.rooms or ()))
        if users:
            hub.unsubscribe(conn, users)
        for room in rooms:
            hub.leave(conn, room, now)
        if users or rooms:
            ended = [f"user {u}" for u in users] + [f"room {r}" for r in rooms]
            raise wire.WireError("FORBIDDEN", f"no longer granted: {_names(ended)}")

    def on_JOIN(self, conn: Connection, message: wire.Join, now: float) -> None:
        if not self.grants.rooms.allows(message.room):
            raise wire.WireError("FORBIDDEN", f"not granted: room {message.room}")
        self.factory.hub.join(conn, message.room, message.metadata, now)

    def on_ROOM_UPDATE(self, conn: Connection, message: wire.RoomUpdate, now: float) -> None:
        self.factory.hub.room_update(conn, message.room, message.metadata, now)

    def on_LEAVE(self, conn: Connection, message: wire.Leave, now: float) -> None:
        self.factory.hub.leave(conn, message.room, now)

    def _cid(self) -> str:
        return self.conn.id if self.conn is not None else "-"

    _handlers: dict[type, tuple[str, Callable[..., None]]] = {
        wire.Heartbeat: ("HEARTBEAT", on_HEARTBEAT),
        wire.PresenceUpdate: ("PRESENCE_UPDATE", on_PRESENCE_UPDATE),
        wire.Disconnect: ("DISCONNECT", on_DISCONNECT),
        wire.Subscribe: ("SUBSCRIBE", on_SUBSCRIBE),
        wire.Unsubscribe: ("UNSUBSCRIBE", on_UNSUBSCRIBE),
        wire.RefreshToken: ("REFRESH_TOKEN", on_REFRESH_TOKEN),
        wire.Join: ("JOIN", on_JOIN),
        wire.RoomUpdate: ("ROOM_UPDATE", on_ROOM_UPDATE),
        wire.Leave: ("LEAVE", on_LEAVE),
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
        self.forget_token()
        conn, self.conn = self.conn, None
        clean = policy.ends_at_once(
            self.disconnect_requested, bool(self.closedByMe), self.remoteCloseCode
        )
        now = self.factory.clock.seconds()
        if conn is None:
            if self.early is not None:  # the hub is still registering it
                self.ended_early = (now, clean)
            return
        self.factory.hub.close(conn, now, clean)
        if not self.factory.config.log_connections:
            return
        log.debug(
            "disconnect {connection_id} user={user_id!r} code={code} reason={reason!r}",
            connection_id=conn.id,
            user_id=conn.user_id,
            code=_close_code(self),
            reason=_close_reason(self),
        )

    def too_slow(self) -> None:
        """A client that does not read: stop buffering for it (the close frame is the last
        thing queued; Autobahn drops the TCP connection after the close handshake timeout)."""
        self.factory.metrics.errors["slow_reader"].inc()
        log.info("closing {connection_id}: client is not reading", connection_id=self._cid())
        self.close(wire.CLOSE_POLICY_VIOLATION, "send buffer full: client is not reading")

    def prepare(self, payload: bytes) -> Any:
        return self.factory.prepareMessage(payload)
