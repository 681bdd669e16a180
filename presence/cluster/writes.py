"""This node's changes on their way to Redis, with CONNECT as the commit point.

Opening. A connection is registered in Redis first: ``open.lua`` checks the cluster-wide
cap and registers it, atomically, or refuses it having changed nothing (no diff, no
count). Only then does the model hold it and ``open``'s Deferred fire, which is when the
protocol sends CONNECT. If the node goes off Redis before the answer, the connection
counts on this node alone and the local count decides the cap (``open_pending_locally``).

Everything else (update, close, grace expiry) the hub applies to the model at once and
writes here. A write that fails leaves the node not knowing whether Redis applied it, so
the link is dropped: reconnecting re-registers everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import policy
from ..core.model import Change, Connection, Peer, PresenceModel
from .link import RedisLink
from .store import REFUSED, Live, Store
from .watches import Watches

log = Logger()

TOO_MANY = "too many connections for this user"


@dataclass(eq=False)
class _Opening:
    """A connection waiting for Redis to count it."""

    connection_id: str
    user_id: str
    peer: Peer
    deferred: defer.Deferred[Connection]
    counted: bool = False  # a re-registration sent meanwhile registered it as well


class Writes:
    def __init__(
        self,
        model: PresenceModel,
        store: Store,
        link: RedisLink,
        watches: Watches,
        clock: IReactorTime,
        errors: Callable[[Failure, str], None],
        resync_needed: Callable[[], None],
        max_connections_per_user: int = 0,
    ) -> None:
        self._model = model
        self._store = store
        self._link = link
        self._watches = watches
        self._clock = clock
        self._errors = errors
        self._resync_needed = resync_needed
        self.cap = max_connections_per_user
        self._openings: dict[str, _Opening] = {}
        self._expiry: defer.Deferred[Any] | None = None

    # -- opening ---------------------------------------------------------------------------

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        opening = _Opening(connection_id, user_id, peer, defer.Deferred())
        self._openings[connection_id] = opening
        d = self._store.open(connection_id, user_id, now, self.cap)
        d.addCallbacks(self._counted, self._failed, callbackArgs=(opening,), errbackArgs=("open",))
        return opening.deferred

    def open_locally(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        """Off Redis: the connection counts on this node, against this node's count."""
        if policy.over_user_cap(self._model.connections_of(user_id) + 1, self.cap):
            return defer.fail(policy.OverCapacity(TOO_MANY))
        conn, changes = self._model.open(connection_id, user_id, peer, now)
        self._watches.deliver_local(changes)
        return defer.succeed(conn)

    def _counted(self, count: int, opening: _Opening) -> None:
        if self._openings.get(opening.connection_id) is not opening:
            return  # settled already: the node went off Redis meanwhile
        del self._openings[opening.connection_id]
        if count == REFUSED:
            if opening.counted:  # the re-registration resurrected it: take it back
                self.close_registered(opening.connection_id, opening.user_id)
            opening.deferred.errback(policy.OverCapacity(TOO_MANY))
            return
        conn, _ = self._model.open(
            opening.connection_id, opening.user_id, opening.peer, self._clock.seconds()
        )
        opening.deferred.callback(conn)  # its diff, if any, comes from Redis

    def close_registered(self, connection_id: str, user_id: str) -> None:
        d = self._store.close(connection_id, user_id, self._clock.seconds(), True)
        d.addErrback(self._failed, "close")

    def openings(self) -> list[Live]:
        """The connections still waiting for Redis, for a re-registration to include
        (registered there, they would otherwise be ended by it)."""
        for opening in self._openings.values():
            opening.counted = True
        return [(o.connection_id, o.user_id, "online", "") for o in self._openings.values()]

    def open_pending_locally(self) -> None:
        """Off Redis before it answered: each waiting connection counts on this node."""
        openings, self._openings = self._openings, {}
        for opening in openings.values():
            d = self.open_locally(
                opening.connection_id, opening.user_id, opening.peer, self._clock.seconds()
            )
            d.chainDeferred(opening.deferred)

    # -- the other changes -----------------------------------------------------------------

    def update(
        self,
        conn: Connection,
        status: str,
        metadata: Mapping[str, Any] | None,
        now: float,
        changes: Sequence[Change],
    ) -> None:
        d = self._store.update(conn.id, conn.user_id, status, metadata, now)
        d.addCallbacks(self._updated, self._failed, errbackArgs=("update",))

    def close(self, conn: Connection, now: float, clean: bool, changes: Sequence[Change]) -> None:
        d = self._store.close(conn.id, conn.user_id, now, clean)
        d.addErrback(self._failed, "close")

    def expire(self, now: float, changes: Sequence[Change]) -> None:
        """Grace deadlines that passed, cluster-wide: one expiry in flight at a time."""
        if self._expiry is not None:
            return
        d = self._expiry = self._store.expire(now)
        d.addErrback(self._failed, "expire")

        def done(result: Any) -> Any:
            if self._expiry is d:
                self._expiry = None
            return result

        d.addBoth(done)

    def _updated(self, result: Any) -> None:
        if isinstance(result, int) and result < 0:
            log.warn("redis did not know a connection of this node: re-registering")
            self._resync_needed()

    def _failed(self, failure: Failure, what: str) -> None:
        self._errors(failure, what)
        # Not knowing whether it was applied, drop the link: reconnecting re-registers.
        self._link.abort(f"{what} failed: {failure.getErrorMessage()}")
