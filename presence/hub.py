"""The hub: what the protocol and the web resources call, and the single-node hub.

The hub drives the model and delivers its changes: each diff is encoded once and handed to
every watcher as one shared message. The cluster has a hub of its own with the same
methods, so the server edges never know which one they talk to. Each method has one kind
of result: ``open`` and ``lookup`` always answer with a Deferred (already fired here, on one
node), the others return at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from twisted.internet import defer

from .core import policy, webhooks, wire
from .core.model import (
    OFFLINE,
    Change,
    Connection,
    Peer,
    PresenceModel,
    Stats,
    TooManySubscriptions,
    UserView,
)
from .core.room_events import RoomJournal
from .core.rooms import Member, RoomDiff, RoomRefused, Rooms, RoomState
from .core.webhooks import Event


class EventSink(Protocol):
    """Where the webhook events a hub decided go (a memory queue, a Redis Stream)."""

    def emit(self, events: Sequence[Event]) -> None:
        """These events, in the order they happened."""


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

    def join(
        self, conn: Connection, room: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        """Raises ``wire.WireError`` (nothing joined); sends ROOM_STATE itself."""

    def room_update(
        self, conn: Connection, room: str, metadata: Mapping[str, Any], now: float
    ) -> None: ...

    def leave(self, conn: Connection, room: str, now: float) -> None: ...

    def room_page(self, room: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        """A page of the room's members in userId order, from just after ``after``."""

    @property
    def figures(self) -> Figures: ...

    @property
    def room_figures(self) -> RoomFigures: ...


class RoomFigures(Protocol):
    @property
    def room_count(self) -> int: ...

    @property
    def membership_count(self) -> int: ...

    @property
    def diffs_sent(self) -> int: ...


class RoomPage:
    __slots__ = ("count", "members", "next")

    def __init__(self, members: dict[str, Member], count: int, next: str | None) -> None:
        self.members, self.count, self.next = members, count, next


def page_of(members: Mapping[str, Member], limit: int, after: str | None) -> RoomPage:
    ids = sorted(u for u in members if after is None or u > after)
    page = ids[:limit]
    more = len(ids) > limit
    return RoomPage({u: members[u] for u in page}, len(members), page[-1] if more else None)


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


def member_json(member: Member) -> dict[str, Any]:
    return wire.member_object(member.status, member.metadata, member.connections)


def room_state_message(state: RoomState, now: float) -> bytes:
    return wire.encode(
        {
            "type": "ROOM_STATE",
            "room": state.room,
            "members": {u: member_json(m) for u, m in state.members.items()},
            "count": state.count,
            "complete": state.complete,
            "timestamp": wire.iso(now),
        }
    )


def room_diff_message(diff: RoomDiff, now: float) -> bytes:
    return wire.encode(
        {
            "type": "ROOM_DIFF",
            "room": diff.room,
            "joins": {u: member_json(m) for u, m in diff.joins.items()},
            "leaves": {u: {"lastSeen": wire.iso(at)} for u, at in diff.leaves.items()},
            "updates": {u: member_json(m) for u, m in diff.updates.items()},
            "count": diff.count,
            "timestamp": wire.iso(now),
        }
    )


def deliver_rooms(diffs: list[RoomDiff], now: float) -> None:
    for diff in diffs:
        message = wire.Shared(room_diff_message(diff, now))
        for peer in diff.recipients:
            peer.send_shared(message)


def refused(e: RoomRefused) -> wire.WireError:
    return wire.WireError(e.code, e.message)


def subscribe_model(
    model: PresenceModel, conn: Connection, ids: Iterable[str]
) -> dict[str, UserView]:
    try:
        return model.subscribe(conn, ids)
    except TooManySubscriptions as e:
        raise wire.WireError("TOO_MANY_SUBSCRIPTIONS", str(e)) from None


class LocalHub:
    """The single-node hub: the model holds everything, in memory."""

    def __init__(
        self,
        model: PresenceModel,
        max_connections_per_user: int = 0,
        rooms: Rooms | None = None,
        sink: EventSink | None = None,
    ) -> None:
        self._model = model
        self.max_connections_per_user = max_connections_per_user
        # With a sink, room events need the rooms to note memberships (a RoomJournal).
        self._rooms = rooms or (RoomJournal if sink else Rooms)(
            lambda user_id: model.view(user_id).status, model.offline_grace
        )
        self._sink = sink
        self.diffs_sent = 0

    @property
    def figures(self) -> Figures:
        return self._model

    @property
    def room_figures(self) -> RoomFigures:
        return self._rooms

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
        rooms = self._rooms.closed(conn, now, clean)
        self.deliver(self._model.close(conn, now, clean), now)
        deliver_rooms(rooms, now)

    def join(
        self, conn: Connection, room: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        try:
            state, diffs = self._rooms.join(conn, room, metadata, now)
        except RoomRefused as e:
            raise refused(e) from None
        conn.peer.send(room_state_message(state, now))
        deliver_rooms(diffs, now)
        self.emit([], now)

    def room_update(
        self, conn: Connection, room: str, metadata: Mapping[str, Any], now: float
    ) -> None:
        try:
            diffs = self._rooms.update(conn, room, metadata, now)
        except RoomRefused as e:
            raise refused(e) from None
        deliver_rooms(diffs, now)

    def leave(self, conn: Connection, room: str, now: float) -> None:
        deliver_rooms(self._rooms.leave(conn, room, now), now)
        self.emit([], now)

    def room_page(self, room: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        return defer.succeed(page_of(self._rooms.members(room), limit, after))

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
        views = subscribe_model(self._model, conn, user_ids)
        conn.peer.send(state_message(views, now))

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        self._model.unsubscribe(conn, user_ids)

    def tick(self, now: float) -> None:
        deliver_rooms(self._rooms.expire(now), now)
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

    def emit(self, changes: list[Change], now: float) -> None:
        """Tell the sink what happened: memberships first (a close ends them before the
        user's presence), then the users' visible changes."""
        if self._sink is None:
            return
        events = room_events(self._rooms, now)
        events.extend(user_events(changes, now))
        if events:
            self._sink.emit(events)

    def deliver(self, changes: list[Change], now: float) -> None:
        self.emit(changes, now)
        for change in changes:
            deliver_rooms(self._rooms.user_changed(change.user_id, now), now)
            if not change.watchers:
                continue
            message = wire.Shared(diff_message(change.user_id, change.view, now))
            for peer in change.watchers:
                peer.send_shared(message)
            self.diffs_sent += len(change.watchers)


def user_events(changes: Iterable[Change], now: float) -> list[Event]:
    events = []
    for change in changes:
        if change.view.status == OFFLINE:
            kind = webhooks.USER_OFFLINE
        elif change.appeared:
            kind = webhooks.USER_ONLINE
        else:
            kind = webhooks.USER_UPDATED
        events.append(webhooks.user_event(kind, change.user_id, change.view, now))
    return events


def room_events(rooms: Rooms, now: float) -> list[Event]:
    if not isinstance(rooms, RoomJournal) or not rooms.journal:
        return []
    events = []
    for m in rooms.take():
        if m.joined and m.count == 1:
            events.append(webhooks.room_event(webhooks.ROOM_OCCUPIED, m.room, now))
        kind = webhooks.ROOM_JOINED if m.joined else webhooks.ROOM_LEFT
        member = m.member
        events.append(
            webhooks.member_event(
                kind, m.room, m.user_id, member.status, member.metadata, member.connections, now
            )
        )
        if not m.joined and m.count == 0:
            events.append(webhooks.room_event(webhooks.ROOM_VACATED, m.room, now))
    return events
