"""The presence a client was sent, as plain values, and the changes each message makes.

Pure: no asyncio, no sockets. ``PresenceState.apply(message)`` takes one decoded server
message (a dict) and returns the changes it made, in order; reading the state is
synchronous."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

# The connection states of the API document.
CONNECTING: Final = "CONNECTING"
OPEN: Final = "OPEN"
CLOSING: Final = "CLOSING"
CLOSED: Final = "CLOSED"


@dataclass(frozen=True, eq=True)
class User:
    """A watched user as the server last described them (``status`` may be ``offline``)."""

    status: str
    metadata: Mapping[str, Any]
    last_seen: str | None
    connections: int

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "metadata": dict(self.metadata),
            "lastSeen": self.last_seen,
            "connections": self.connections,
        }


@dataclass(frozen=True, eq=True)
class Member:
    """A room member: the user's status, their room metadata, their joined connections."""

    status: str
    metadata: Mapping[str, Any]
    connections: int

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "metadata": dict(self.metadata),
            "connections": self.connections,
        }


@dataclass(frozen=True, eq=True)
class Room:
    """Who is in a room. ``complete`` is false for a room too large to list (the server
    then sends only ``count``; page the members with ``GET /rooms/{room}``)."""

    name: str
    members: Mapping[str, Member]
    count: int
    complete: bool = True


@dataclass(frozen=True)
class UserChange:
    """A watched user's state changed; ``previous`` is None the first time it is known."""

    user_id: str
    user: User
    previous: User | None


@dataclass(frozen=True)
class RoomChange:
    """A room's members changed. ``snapshot`` is true for a ``ROOM_STATE`` (after a join or
    a reconnect): its joins, leaves and updates are then what differs from what was known
    before. ``leaves`` maps each userId to its ``lastSeen`` (None for a snapshot)."""

    room: str
    joins: Mapping[str, Member]
    leaves: Mapping[str, str | None]
    updates: Mapping[str, Member]
    count: int
    snapshot: bool
    state: Room


@dataclass(frozen=True)
class ConnectionChange:
    """The connection's state. On ``CLOSED``: the close ``code`` and ``reason``, and
    either ``retry_in`` (seconds until the next attempt) or ``final`` (no more attempts;
    ``reason`` says why)."""

    state: str
    code: int | None = None
    reason: str | None = None
    retry_in: float | None = None
    final: bool = False


@dataclass(frozen=True)
class ErrorChange:
    """An ``ERROR`` the server sent (the connection stays open)."""

    code: str
    message: str


Change = UserChange | RoomChange | ConnectionChange | ErrorChange


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def user_from(view: Any) -> User:
    view = _object(view)
    last_seen = view.get("lastSeen")
    return User(
        status=str(view.get("status", "offline")),
        metadata=_object(view.get("metadata")),
        last_seen=last_seen if isinstance(last_seen, str) else None,
        connections=_int(view.get("connections")),
    )


def member_from(view: Any) -> Member:
    view = _object(view)
    return Member(
        status=str(view.get("status", "online")),
        metadata=_object(view.get("metadata")),
        connections=_int(view.get("connections")),
    )


@dataclass
class PresenceState:
    """The watched users and joined rooms, updated one server message at a time."""

    users: dict[str, User] = field(default_factory=dict)
    rooms: dict[str, Room] = field(default_factory=dict)

    def apply(self, message: Mapping[str, Any]) -> list[Change]:
        kind = message.get("type")
        if kind == "PRESENCE_STATE":
            changes: list[Change] = []
            for user_id, view in _object(message.get("users")).items():
                changes.extend(self._set_user(str(user_id), user_from(view)))
            return changes
        if kind == "PRESENCE_DIFF":
            diff_user = message.get("userId")
            if not isinstance(diff_user, str):
                return []
            return self._set_user(diff_user, user_from(message))
        if kind == "ROOM_STATE":
            return self._room_state(message)
        if kind == "ROOM_DIFF":
            return self._room_diff(message)
        if kind == "ERROR":
            return [ErrorChange(str(message.get("code", "")), str(message.get("message", "")))]
        return []

    def _set_user(self, user_id: str, user: User) -> list[Change]:
        previous = self.users.get(user_id)
        self.users[user_id] = user
        if previous == user:
            return []
        return [UserChange(user_id, user, previous)]

    def _room_state(self, message: Mapping[str, Any]) -> list[Change]:
        name = message.get("room")
        if not isinstance(name, str):
            return []
        members = {str(k): member_from(v) for k, v in _object(message.get("members")).items()}
        count = _int(message.get("count")) if "count" in message else len(members)
        room = Room(name, members, count, message.get("complete", True) is not False)
        before = self.rooms.get(name)
        self.rooms[name] = room
        old = dict(before.members) if before is not None else {}
        joins = {u: m for u, m in members.items() if u not in old}
        leaves: dict[str, str | None] = {u: None for u in old if u not in members}
        updates = {u: m for u, m in members.items() if u in old and old[u] != m}
        if before is not None and not (joins or leaves or updates) and before.count == count:
            return []
        return [RoomChange(name, joins, leaves, updates, count, True, room)]

    def _room_diff(self, message: Mapping[str, Any]) -> list[Change]:
        name = message.get("room")
        before = self.rooms.get(name) if isinstance(name, str) else None
        if before is None or not isinstance(name, str):
            return []  # not joined (or left already): nothing to keep
        members = dict(before.members)
        joins = {str(k): member_from(v) for k, v in _object(message.get("joins")).items()}
        updates = {str(k): member_from(v) for k, v in _object(message.get("updates")).items()}
        leaves: dict[str, str | None] = {}
        for user_id, view in _object(message.get("leaves")).items():
            last_seen = _object(view).get("lastSeen")
            leaves[str(user_id)] = last_seen if isinstance(last_seen, str) else None
            members.pop(str(user_id), None)
        members.update(joins)
        members.update(updates)
        count = _int(message.get("count")) if "count" in message else len(members)
        room = Room(name, members, count, before.complete)
        self.rooms[name] = room
        return [RoomChange(name, joins, leaves, updates, count, False, room)]

    def forget_users(self, user_ids: list[str]) -> None:
        for user_id in user_ids:
            self.users.pop(user_id, None)

    def forget_room(self, name: str) -> None:
        self.rooms.pop(name, None)
