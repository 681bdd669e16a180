"""The admission half of the protocol: what is checked before a connection may count
(origin, capacity, userId, token) and, with tokens, how long it may stay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autobahn.websocket.types import ConnectionDeny
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ..core import wire
from ..core.auth import JwtVerifier, TokenRejected, bearer
from ..core.grants import ALL, Grants
from .fastpath import NO_QUEUE
from .upgrade import UpgradeProtocol

if TYPE_CHECKING:
    from .factory import PresenceFactory

log = Logger()


class AdmittingProtocol(UpgradeProtocol):
    factory: PresenceFactory

    user_id: str | None = None
    refusal: str | None = None
    refusal_code: int = wire.CLOSE_PROTOCOL_ERROR
    token_expires: float | None = None
    expiry_call: IDelayedCall | None = None
    grants: Grants = ALL  # what the token lets this connection observe (all without tokens)

    def _cid(self) -> str:
        raise NotImplementedError

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
        self.grants = verified.grants

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

    # -- the token's lifetime --------------------------------------------------------------

    def refresh_token(self, token: str, user_id: str, now: float) -> Grants:
        """A new token for the same sub moves the deadline (no reply when it is good);
        returns its grants, which apply from now on."""
        verifier = self.factory.config.verifier
        if verifier is None:
            raise wire.WireError("AUTH_DISABLED", "this server does not use tokens")
        try:
            verified = verifier.verify(token, user_id, now)
        except TokenRejected as e:
            self.factory.metrics.errors["auth"].inc()
            raise wire.WireError("INVALID_TOKEN", e.reason) from None
        self.token_expires = verified.expires
        self.grants = verified.grants
        self.arm_expiry(now)
        return verified.grants

    def arm_expiry(self, now: float) -> None:
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

    def forget_token(self) -> None:
        if self.expiry_call is not None:
            if self.expiry_call.active():
                self.expiry_call.cancel()
            self.expiry_call = None
