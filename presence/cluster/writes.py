"""This node's changes on their way to Redis, with CONNECT as the commit point.

Opening. A connection is registered in Redis first: ``open.lua`` checks the cluster-wide
cap and registers it, atomically, or refuses it having changed nothing (no diff, no
count). Only then does the model hold it and ``open``'s Deferred fire, which is when the
protocol sends CONNECT. If the node goes off Redis before the answer, the connection
counts on this node alone and the local count decides the cap (``open_pending_locally``).

Everything else (update, close, grace expiry) the hub applies to the model at once and
writes here. Until Redis answers, the users it changed are unconfirmed: if the link goes
first, the change may never have reached Redis and nobody would publish it, so
``take_unanswered`` hands those users to the node, which tells its own watchers what it
alone sees of them, as for any change made while Redis is away; and the closes among
them, for the next registration to end with the time and cleanliness they closed with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass
class Unanswered:
    """What Redis never answered when the link went."""

    users: list[str] = field(default_factory=list)  # their changes
    closed: dict[str, tuple[str, float, bool]] = field(default_factory=dict)  # id -> end


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
        self._unconfirmed: dict[str, int] = {}  # userId -> writes Redis has not answered
        self._closing: dict[str, tuple[str, float, bool]] = {}  # unanswered closes
        self._epoch = 0  # one per stretch on one link: answers from an older one are stale
        self._expiry: defer.Deferred[Any] | None = None
        self._expiring: list[str] = []  # the users the expiry in flight answers for

    # -- opening ---------------------------------------------------------------------------

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        opening = _Opening(connection_id, user_id, peer, defer.Deferred())
        self._openings[connection_id] = opening
        epoch = self._epoch
        d = self._store.open(connection_id, user_id, now, self.cap)
        d.addCallbacks(
            self._counted,
            self._failed,
            callbackArgs=(opening,),
            errbackArgs=("open", epoch),
        )
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
        d.addErrback(self._failed, "close", self._epoch)

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
        self._track(d, changes, "update").addCallback(self._updated)

    def close(self, conn: Connection, now: float, clean: bool, changes: Sequence[Change]) -> None:
        self._closing[conn.id] = (conn.user_id, now, clean)
        epoch = self._epoch

        def answered(result: Any) -> Any:
            if epoch == self._epoch:
                self._closing.pop(conn.id, None)
            return result

        d = self._store.close(conn.id, conn.user_id, now, clean).addCallback(answered)
        self._track(d, changes, "close")

    def expire(self, now: float, changes: Sequence[Change]) -> None:
        """Grace deadlines that passed, cluster-wide: one expiry in flight at a time (the
        users a skipped tick ended locally wait for the answer to the one in flight)."""
        if self._expiry is not None:
            self._count(self._expiring, [change.user_id for change in changes])
            return
        self._expiring = []
        d = self._expiry = self._track(self._store.expire(now), changes, "expire", self._expiring)

        def done(result: Any) -> Any:
            if self._expiry is d:
                self._expiry = None
            return result

        d.addBoth(done)

    def _updated(self, result: Any) -> None:
        if isinstance(result, int) and result < 0:
            log.warn("redis did not know a connection of this node: re-registering")
            self._resync_needed()

    def take_unanswered(self) -> Unanswered:
        """Off Redis: what Redis never answered; answers still to come belong to a link
        that is gone."""
        unanswered = Unanswered(list(self._unconfirmed), self._closing)
        self._unconfirmed, self._closing = {}, {}
        self._epoch += 1
        return unanswered

    def _count(self, users: list[str], more: Iterable[str]) -> None:
        for user_id in more:
            users.append(user_id)
            self._unconfirmed[user_id] = self._unconfirmed.get(user_id, 0) + 1

    def _track(
        self,
        d: defer.Deferred[Any],
        changes: Iterable[Change],
        what: str,
        users: list[str] | None = None,
    ) -> defer.Deferred[Any]:
        """Until ``d`` answers, the users of ``changes`` (and any added to ``users``
        meanwhile) are unconfirmed; if it fails, the link is dropped."""
        users = [] if users is None else users
        self._count(users, (change.user_id for change in changes))
        unconfirmed = self._unconfirmed
        epoch = self._epoch

        def answered(result: Any) -> Any:
            if epoch == self._epoch:
                for user_id in users:
                    left = unconfirmed[user_id] - 1
                    if left:
                        unconfirmed[user_id] = left
                    else:
                        del unconfirmed[user_id]
            return result

        d.addCallbacks(answered, self._failed, errbackArgs=(what, epoch))
        return d

    def _failed(self, failure: Failure, what: str, epoch: int) -> None:
        self._errors(failure, what)
        if epoch == self._epoch:
            # Not knowing whether it was applied, drop the link: reconnecting re-registers.
            self._link.abort(f"{what} failed: {failure.getErrorMessage()}")
