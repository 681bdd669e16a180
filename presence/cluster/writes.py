"""This node's changes on their way to Redis.

The hub applies every change (open, update, close, grace expiry) to the model at once and
writes it here. A write that fails leaves the node not knowing whether Redis applied it,
so the link is dropped: reconnecting re-registers everything.

With --max-connections-per-user, ``open`` answers the connection's rank: the user's
connection count cluster-wide right after it registered, counted atomically in Redis, so
with a cap of N exactly the connections ranked above N are the ones to refuse, however
many nodes race (this node's own count if Redis does not answer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.model import Change, Connection, PresenceModel
from .link import RedisLink
from .store import Store
from .watches import Watches

log = Logger()


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
        self._expiry: defer.Deferred[Any] | None = None

    def open(self, conn: Connection, now: float) -> defer.Deferred[int]:
        """Register an open connection; answers its rank."""
        d = self._store.open(conn.id, conn.user_id, now)

        def failed(failure: Failure) -> int:
            self._failed(failure, "open")
            return self._model.connections_of(conn.user_id)

        return d.addCallbacks(int, failed)

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
