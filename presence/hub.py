"""The hub: what the protocol and the web resources call. It drives the model and delivers
its changes: each diff is encoded once and handed to every watcher as one shared message.

Pure like the model (time comes in as ``now``). The cluster has a hub of its own with the
same methods, so the protocol and web layers never know which one they talk to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .core import wire
from .core.model import Change, Connection, PresenceModel, TooManySubscriptions, UserView


class PresenceHub(Protocol):
    def open(self, connection_id: str, user_id: str, peer: Any, now: float) -> Connection: ...

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None: ...

    def close(self, conn: Connection, now: float, clean: bool) -> None: ...

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None: ...

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None: ...

    def tick(self, now: float) -> None: ...

    def users_present(self) -> int:
        """Users anyone would see as present (offline grace included), across the cluster."""

    def connection_rank(self, connection_id: str) -> Any:
        """The user's connection count right after this one registered: an int, or a
        Deferred of one (the cluster, counted atomically in Redis)."""

    def lookup(self, user_ids: Iterable[str]) -> Any:
        """dict userId -> UserView, or a Deferred of one (the cluster)."""

    @property
    def model(self) -> PresenceModel: ...


def user_json(view: UserView) -> dict[str, Any]:
    return wire.user_object(view.status, view.metadata, view.last_seen, view.connections)


def diff_message(change: Change, now: float) -> bytes:
    view = change.view
    return wire.encode(
        {
            "type": "PRESENCE_DIFF",
            "userId": change.user_id,
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


class LocalHub:
    """The single-node hub: the model holds everything, in memory."""

    def __init__(self, model: PresenceModel) -> None:
        self._model = model
        self.diffs_sent = 0

    @property
    def model(self) -> PresenceModel:
        return self._model

    def open(self, connection_id: str, user_id: str, peer: Any, now: float) -> Connection:
        conn, changes = self._model.open(connection_id, user_id, peer, now)
        self.deliver(changes, now)
        return conn

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        self.deliver(self._model.update(conn, status, metadata, now), now)

    def close(self, conn: Connection, now: float, clean: bool) -> None:
        self.deliver(self._model.close(conn, now, clean), now)

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
        try:
            views = self._model.subscribe(conn, user_ids)
        except TooManySubscriptions as e:
            raise wire.WireError("TOO_MANY_SUBSCRIPTIONS", str(e)) from None
        conn.peer.send(state_message(views, now))

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        self._model.unsubscribe(conn, user_ids)

    def tick(self, now: float) -> None:
        self.deliver(self._model.expire(now), now)

    def lookup(self, user_ids: Iterable[str]) -> dict[str, UserView]:
        return {user_id: self._model.view(user_id) for user_id in user_ids}

    def users_present(self) -> int:
        return self._model.online_user_count

    def connection_rank(self, connection_id: str) -> int:
        conn = self._model.connection(connection_id)
        return self._model.connections_of(conn.user_id) if conn else 0

    def deliver(self, changes: list[Change], now: float) -> None:
        for change in changes:
            if not change.watchers:
                continue
            message = wire.Shared(diff_message(change, now))
            for peer in change.watchers:
                peer.send_shared(message)
            self.diffs_sent += len(change.watchers)
