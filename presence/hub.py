"""The hub: what the protocol and the web resources call, and the single-node hub.

The hub drives the model and delivers its changes: each diff is encoded once and handed to
every watcher as one shared message. The cluster has a hub of its own with the same
methods, so the server edges never know which one they talk to. Each method has one kind
of result: ``open`` and ``lookup`` always answer with a Deferred (already fired here, on one
node), the others return at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from twisted.internet import defer

from .core import policy, wire
from .core.model import (
    Change,
    Connection,
    Peer,
    PresenceModel,
    Stats,
    TooManySubscriptions,
    UserView,
)


class Figures(Protocol):
    """What the metrics read of this node's connections at scrape time."""

    @property
    def connection_count(self) -> int: ...

    @property
    def connected_user_count(self) -> int: ...

    @property
    def subscription_count(self) -> int: ...

    @property
    def stats(self) -> Stats: ...


class PresenceHub(Protocol):
    diffs_sent: int

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        """Fires once the connection counts (cluster-wide, or on this node while Redis is
        away): the moment to send CONNECT. Fails with ``policy.OverCapacity`` for a
        connection over --max-connections-per-user, which then never counted."""

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None: ...

    def close(self, conn: Connection, now: float, clean: bool) -> None: ...

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
        """Raises ``wire.WireError`` (nothing subscribed); sends PRESENCE_STATE itself."""

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None: ...

    def tick(self, now: float) -> None:
        """Expire offline grace deadlines that passed."""

    def lookup(self, user_ids: Iterable[str]) -> defer.Deferred[dict[str, UserView]]:
        """What a watcher would be told of each user."""

    def users_present(self) -> int:
        """Users anyone would see as present (offline grace included), across the cluster."""

    def connections(self) -> list[Connection]:
        """This node's open connections."""

    def stale(self, now: float, timeout: float) -> list[Connection]:
        """This node's connections with no inbound frame for ``timeout`` seconds."""

    def health_problem(self) -> str | None:
        """Why this node is degraded, or None."""

    @property
    def figures(self) -> Figures: ...


def user_json(view: UserView) -> dict[str, Any]:
    return wire.user_object(view.status, view.metadata, view.last_seen, view.connections)


def diff_message(user_id: str, view: UserView, now: float) -> bytes:
    return wire.encode(
        {
            "type": "PRESENCE_DIFF",
            "userId": user_id,
            **user_json(view),
            "timestamp": wire.iso(now),
        }
    )


def state_message(views: Mapping[str, UserView], now: float) -> bytes:
    return wire.encode(
        {
            "type": "PRESENCE_STATE",
            "users": {user_id: user_json(view) for user_id, view in views.items()},
            "timestamp": wire.iso(now),
        }
    )


def subscribe_model(
    model: PresenceModel, conn: Connection, ids: Iterable[str]
) -> dict[str, UserView]:
    try:
        return model.subscribe(conn, ids)
    except TooManySubscriptions as e:
        raise wire.WireError("TOO_MANY_SUBSCRIPTIONS", str(e)) from None


class LocalHub:
    """The single-node hub: the model holds everything, in memory."""

    def __init__(self, model: PresenceModel, max_connections_per_user: int = 0) -> None:
        self._model = model
        self.max_connections_per_user = max_connections_per_user
        self.diffs_sent = 0

    @property
    def figures(self) -> Figures:
        return self._model

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        rank = self._model.connections_of(user_id) + 1
        if policy.over_user_cap(rank, self.max_connections_per_user):
            return defer.fail(policy.OverCapacity("too many connections for this user"))
        conn, changes = self._model.open(connection_id, user_id, peer, now)
        self.deliver(changes, now)
        return defer.succeed(conn)

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        self.deliver(self._model.update(conn, status, metadata, now), now)

    def close(self, conn: Connection, now: float, clean: bool) -> None:
        self.deliver(self._model.close(conn, now, clean), now)

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
        views = subscribe_model(self._model, conn, user_ids)
        conn.peer.send(state_message(views, now))

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        self._model.unsubscribe(conn, user_ids)

    def tick(self, now: float) -> None:
        self.deliver(self._model.expire(now), now)

    def lookup(self, user_ids: Iterable[str]) -> defer.Deferred[dict[str, UserView]]:
        return defer.succeed({user_id: self._model.view(user_id) for user_id in user_ids})

    def users_present(self) -> int:
        return self._model.online_user_count

    def connections(self) -> list[Connection]:
        return self._model.all_connections()

    def stale(self, now: float, timeout: float) -> list[Connection]:
        return self._model.stale(now, timeout)

    def health_problem(self) -> str | None:
        return None

    def deliver(self, changes: list[Change], now: float) -> None:
        for change in changes:
            if not change.watchers:
                continue
            message = wire.Shared(diff_message(change.user_id, change.view, now))
            for peer in change.watchers:
                peer.send_shared(message)
            self.diffs_sent += len(change.watchers)
