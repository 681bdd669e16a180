"""The presence model: users, their connections, statuses, subscriptions, offline grace.

Pure: imports nothing from Twisted or Autobahn, takes time as ``now``, sends nothing.
Every mutating method returns the visible changes it caused; the hub above encodes and
delivers them. Connections are reached only through the small ``Peer`` interface.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .wire import Shared

ONLINE: Final = "online"
AWAY: Final = "away"
BUSY: Final = "busy"
OFFLINE: Final = "offline"
TRANSITION_TARGETS: Final = (ONLINE, AWAY, BUSY, OFFLINE)


class Peer(Protocol):
    """What the model and hub need of a connection."""

    def send(self, data: bytes) -> None: ...

    def send_shared(self, message: Shared) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class TooManySubscriptions(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UserView:
    """What a watcher can see of one user."""

    status: str
    metadata: Mapping[str, Any]
    last_seen: float | None
    connections: int

    def looks_like(self, other: UserView) -> bool:
        """Same visible state: a change of ``connections`` alone is not a visible change."""
        return (
            self.status == other.status
            and self.last_seen == other.last_seen
            and self.metadata == other.metadata
        )


NEVER_SEEN: Final = UserView(OFFLINE, {}, None, 0)
_NO_WATCHERS: Final[Mapping[str, Peer]] = {}
_NOT_WATCHING: Final[AbstractSet[str]] = frozenset()


class Connection:
    """One open WebSocket of a user; ``last_active`` is written by the protocol per frame."""

    __slots__ = (
        "id",
        "last_active",
        "metadata",
        "metadata_seq",
        "peer",
        "rooms",
        "status",
        "user_id",
        "watching",
    )

    def __init__(self, connection_id: str, user_id: str, peer: Peer, now: float) -> None:
        self.id = connection_id
        self.user_id = user_id
        self.peer = peer
        self.status = ONLINE
        self.metadata: Mapping[str, Any] = {}
        self.metadata_seq = 0  # 0: never set; higher: set more recently
        self.last_active = now
        # Who this connection watches: one shared empty set until the first SUBSCRIBE (an
        # empty set of its own is 216 bytes, on every connection that never watches).
        self.watching: AbstractSet[str] = _NOT_WATCHING
        self.rooms: dict[str, Any] | None = None  # room -> its membership (core.rooms)


@dataclass(frozen=True, slots=True)
class Change:
    """A visible change of one user, and who watches them."""

    user_id: str
    view: UserView
    watchers: tuple[Peer, ...]
    appeared: bool = False  # the user was offline before this change: present now


@dataclass(slots=True)
class Stats:
    """Counters the metrics layer reads at scrape time; cheap to keep on the hot path."""

    transitions: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(TRANSITION_TARGETS, 0)
    )
    offline_suppressed: int = 0


class _User:
    __slots__ = ("connections", "ended_at", "grace_deadline", "view")

    def __init__(self, view: UserView) -> None:
        self.connections: dict[str, Connection] = {}
        self.view = view
        self.grace_deadline: float | None = None
        self.ended_at = 0.0


def aggregate(connections: Iterable[Connection]) -> tuple[str, Mapping[str, Any]]:
    """busy if any is busy, else online if any is online, else away; newest metadata wins."""
    statuses = set()
    newest: Connection | None = None
    for conn in connections:
        statuses.add(conn.status)
        if conn.metadata_seq and (newest is None or conn.metadata_seq > newest.metadata_seq):
            newest = conn
    status = BUSY if BUSY in statuses else ONLINE if ONLINE in statuses else AWAY
    return status, ({} if newest is None else newest.metadata)


class PresenceModel:
    def __init__(self, offline_grace: float = 10.0, max_subscriptions: int = 1000) -> None:
        self.offline_grace = offline_grace
        self.max_subscriptions = max_subscriptions
        self.stats = Stats()
        self._connections: dict[str, Connection] = {}
        self._users: dict[str, _User] = {}  # users with an open connection or in grace
        self._last_seen: dict[str, float] = {}
        self._watchers: dict[str, dict[str, Peer]] = {}  # userId -> connectionId -> peer
        self._grace_heap: list[tuple[float, str]] = []
        self._metadata_seq = 0
        self.subscription_count = 0
        self.present_version = 0  # bumped whenever a user becomes present or stops being

    # -- reading -------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def connected_user_count(self) -> int:
        """Distinct users with at least one open connection (grace excluded)."""
        return sum(1 for user in self._users.values() if user.connections)

    @property
    def online_user_count(self) -> int:
        """Users anyone would see as present (grace included)."""
        return len(self._users)

    def present(self) -> Iterable[str]:
        """The userIds anyone would see as present (grace included), in no order."""
        return self._users.keys()

    def connections_of(self, user_id: str) -> int:
        user = self._users.get(user_id)
        return len(user.connections) if user else 0

    def connection(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def all_connections(self) -> list[Connection]:
        return list(self._connections.values())

    def view(self, user_id: str) -> UserView:
        user = self._users.get(user_id)
        if user is not None:
            return user.view
        last_seen = self._last_seen.get(user_id)
        return NEVER_SEEN if last_seen is None else UserView(OFFLINE, {}, last_seen, 0)

    def stale(self, now: float, timeout: float) -> list[Connection]:
        """Connections with no inbound frame for ``timeout`` seconds."""
        cutoff = now - timeout
        return [c for c in self._connections.values() if c.last_active <= cutoff]

    # -- changing ------------------------------------------------------------------------

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> tuple[Connection, list[Change]]:
        if connection_id in self._connections:
            raise ValueError(f"connection {connection_id!r} is already open")
        conn = Connection(connection_id, user_id, peer, now)
        self._connections[connection_id] = conn
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(self.view(user_id))
            self.present_version += 1
        elif user.grace_deadline is not None:
            # Back within the grace: the offline nobody saw is never sent.
            user.grace_deadline = None
            self.stats.offline_suppressed += 1
        user.connections[connection_id] = conn
        return conn, self._refresh(user_id, user)

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> list[Change]:
        conn.status = status
        if metadata is not None:
            self._metadata_seq += 1
            conn.metadata = metadata
            conn.metadata_seq = self._metadata_seq
        user = self._users[conn.user_id]
        return self._refresh(conn.user_id, user)

    def close(self, conn: Connection, now: float, clean: bool) -> list[Change]:
        """End a connection. ``clean`` (DISCONNECT, client close 1000) skips the grace."""
        if self._connections.pop(conn.id, None) is None:
            return []
        if conn.watching:
            self.unsubscribe(conn, tuple(conn.watching))
        user = self._users[conn.user_id]
        del user.connections[conn.id]
        if user.connections:
            return self._refresh(conn.user_id, user)
        if clean or self.offline_grace <= 0:
            return self._end(conn.user_id, user, now)
        user.ended_at = now
        user.grace_deadline = now + self.offline_grace
        heapq.heappush(self._grace_heap, (user.grace_deadline, conn.user_id))
        user.view = UserView(user.view.status, user.view.metadata, user.view.last_seen, 0)
        return []

    def expire(self, now: float) -> list[Change]:
        """Users whose grace has run out go offline; lastSeen is when their presence ended."""
        changes: list[Change] = []
        heap = self._grace_heap
        while heap and heap[0][0] <= now:
            deadline, user_id = heapq.heappop(heap)
            user = self._users.get(user_id)
            if user is not None and user.grace_deadline == deadline and not user.connections:
                changes.extend(self._end(user_id, user, user.ended_at))
        return changes

    def subscribe(self, conn: Connection, user_ids: Iterable[str]) -> dict[str, UserView]:
        """Watch these users; all or nothing. Returns the snapshot of exactly these ids."""
        wanted = list(dict.fromkeys(user_ids))
        new = [u for u in wanted if u not in conn.watching]
        if len(conn.watching) + len(new) > self.max_subscriptions:
            raise TooManySubscriptions(
                f"a connection may watch at most {self.max_subscriptions} users"
            )
        watching = conn.watching if isinstance(conn.watching, set) else set()
        if new:
            conn.watching = watching
        for user_id in new:
            watching.add(user_id)
            self._watchers.setdefault(user_id, {})[conn.id] = conn.peer
        self.subscription_count += len(new)
        return {user_id: self.view(user_id) for user_id in wanted}

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            watching = conn.watching
            if user_id not in watching or not isinstance(watching, set):
                continue  # (the shared empty one holds no one)
            watching.discard(user_id)
            self.subscription_count -= 1
            watchers = self._watchers[user_id]
            del watchers[conn.id]
            if not watchers:
                del self._watchers[user_id]

    def watched_users(self) -> Iterable[str]:
        return self._watchers.keys()

    def watcher_map(self, user_id: str) -> Mapping[str, Peer]:
        """connectionId -> peer of the connections watching this user (read only)."""
        return self._watchers.get(user_id) or _NO_WATCHERS

    def watchers(self, user_id: str) -> tuple[Peer, ...]:
        watchers = self._watchers.get(user_id)
        return tuple(watchers.values()) if watchers else ()

    # -- internals -----------------------------------------------------------------------

    def _refresh(self, user_id: str, user: _User) -> list[Change]:
        status, metadata = aggregate(user.connections.values())
        view = UserView(status, metadata, None, len(user.connections))
        previous, user.view = user.view, view
        if view.looks_like(previous):
            return []
        if view.status != previous.status:
            self.stats.transitions[view.status] += 1
        appeared = previous.status == OFFLINE
        return [Change(user_id, view, self.watchers(user_id), appeared)]

    def _end(self, user_id: str, user: _User, ended_at: float) -> list[Change]:
        del self._users[user_id]
        self.present_version += 1
        self._last_seen[user_id] = ended_at
        self.stats.transitions[OFFLINE] += 1
        view = UserView(OFFLINE, {}, ended_at, 0)
        return [Change(user_id, view, self.watchers(user_id))]
