"""Rooms: who is here. Pure, like the model: time comes in as ``now``, every change is
returned as the diffs to send, and connections are reached only through ``Peer``.

A user is a member of a room while one of their connections is joined to it, and for the
offline grace after a joined connection ended without saying goodbye (a user who comes back
and joins again within it is never seen leaving). What the other members see of a member
is a ``Member``: the user's own aggregate status, the room metadata most recently set by
any of the user's connections in this room, and how many of them are joined.

Every room remembers what its members were last told of each user (``told``). A change
marks the users it touched; a small room is told at once, a room of more than
``batch_threshold`` members at most once per ``batch_interval`` (the net change since the
last diff). A room of more than ``list_limit`` members is only told its count.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import wire
from .model import Connection, Peer
from .roomdiff import Member, RoomDiff, RoomState, Told, flush, hold

__all__ = ["Member", "RoomDiff", "RoomRefused", "RoomState", "Rooms"]


class RoomRefused(Exception):
    """A JOIN or ROOM_UPDATE refused; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Joined:
    """One connection's membership of one room."""

    metadata: Mapping[str, Any]
    seq: int  # 0: never set; higher: set more recently


@dataclass(slots=True)
class _Presence:
    """One user in one room: the joined connections, and those ended within the grace."""

    joined: dict[str, _Joined] = field(default_factory=dict)
    lingering: dict[str, tuple[_Joined, float]] = field(default_factory=dict)  # ended at


@dataclass(slots=True)
class _Room(Told):
    users: dict[str, _Presence] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)  # joined connections: who is told
    # What ROOM_STATE lists, and its encoding: kept until a listed member changes (in a
    # join storm into a room past the list limit the listing stays the same).
    listed: tuple[dict[str, Member], Any] | None = None


NO_METADATA: Final[Mapping[str, Any]] = {}


class Rooms:
    def __init__(
        self,
        status_of: Callable[[str], str],
        offline_grace: float = 10.0,
        max_rooms_per_connection: int = 100,
        max_room_members: int = 0,
        batch_threshold: int = 100,
        batch_interval: float = 1.0,
        list_limit: int = 1000,
    ) -> None:
        self.status_of = status_of
        self.offline_grace = offline_grace
        self.max_rooms_per_connection = max_rooms_per_connection
        self.max_room_members = max_room_members
        self.batch_threshold = batch_threshold
        self.batch_interval = batch_interval
        self.list_limit = list_limit
        self._rooms: dict[str, _Room] = {}
        self._of_user: dict[str, set[str]] = {}  # userId -> rooms they are a member of
        self._grace: list[tuple[float, str, str, str]] = []  # deadline, room, user, conn
        self._due: list[tuple[float, str]] = []  # batched rooms: flush time, room
        self._seq = 0
        self.diffs_sent = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def membership_count(self) -> int:
        """Distinct (user, room) pairs."""
        return sum(len(room.users) for room in self._rooms.values())

    def rooms_of(self, user_id: str) -> frozenset[str]:
        return frozenset(self._of_user.get(user_id, ()))

    def members(self, name: str) -> dict[str, Member]:
        room = self._rooms.get(name)
        if room is None:
            return {}
        return {user_id: self._member(user_id, p) for user_id, p in room.users.items()}

    def state(self, name: str) -> RoomState:
        room = self._rooms.get(name)
        if room is None:
            return RoomState(name, {}, 0, True)
        if room.listed is None:
            listed: dict[str, Member] = {}
            for user_id, presence in room.users.items():
                if len(listed) >= self.list_limit:
                    break
                listed[user_id] = self._member(user_id, presence)
            encoded = {
                u: wire.member_object(m.status, m.metadata, m.connections)
                for u, m in listed.items()
            }
            room.listed = listed, wire.fragment(encoded)
        members, encoded = room.listed
        count = len(room.users)
        return RoomState(name, members, count, len(members) == count, encoded)

    def next_flush(self) -> float | None:
        """When the earliest batched diff is due (None: none is pending)."""
        while self._due:
            at, name = self._due[0]
            room = self._rooms.get(name)
            if room is not None and room.flush_at == at:
                return at
            heapq.heappop(self._due)
        return None

    def next_expiry(self) -> float | None:
        return self._grace[0][0] if self._grace else None

    # -- changing ------------------------------------------------------------------------

    def join(
        self, conn: Connection, name: str, metadata: Mapping[str, Any] | None, now: float
    ) -> tuple[RoomState, list[RoomDiff]]:
        joined = conn.rooms.get(name) if conn.rooms else None
        room = self._rooms.get(name)
        if joined is None:
            if len(conn.rooms or ()) >= self.max_rooms_per_connection:
                raise RoomRefused(
                    "TOO_MANY_ROOMS",
                    f"a connection may join at most {self.max_rooms_per_connection} rooms",
                )
            cap = self.max_room_members
            if (
                cap
                and room is not None
                and conn.user_id not in room.users
                and len(room.users) >= cap
            ):
                raise RoomRefused("ROOM_FULL", f"the room has {cap} members already")
            if room is None:
                room = self._rooms[name] = _Room()
            joined = _Joined(NO_METADATA, 0)
            if conn.rooms is None:
                conn.rooms = {}
            conn.rooms[name] = joined
            presence = room.users.get(conn.user_id)
            if presence is None:
                presence = room.users[conn.user_id] = _Presence()
                self._of_user.setdefault(conn.user_id, set()).add(name)
            presence.joined[conn.id] = joined
            room.peers[conn.id] = conn.peer
        assert room is not None
        room.users[conn.user_id].lingering.clear()  # back within the grace: never seen leaving
        if metadata is not None:
            self._set(joined, metadata)
        self._touch(name, room, conn.user_id, now)
        diffs = self._settle(name, room, now, skip=conn.id)
        return self.state(name), diffs

    def update(
        self, conn: Connection, name: str, metadata: Mapping[str, Any], now: float
    ) -> list[RoomDiff]:
        joined = conn.rooms.get(name) if conn.rooms else None
        if joined is None:
            raise RoomRefused("NOT_IN_ROOM", "this connection has not joined the room")
        self._set(joined, metadata)
        room = self._rooms[name]
        self._touch(name, room, conn.user_id, now)
        return self._settle(name, room, now)

    def leave(self, conn: Connection, name: str, now: float) -> list[RoomDiff]:
        if not conn.rooms or name not in conn.rooms:
            return []
        del conn.rooms[name]
        room = self._rooms[name]
        del room.peers[conn.id]
        presence = room.users[conn.user_id]
        del presence.joined[conn.id]
        self._touch(name, room, conn.user_id, now)
        return self._settle(name, room, now)

    def closed(self, conn: Connection, now: float, clean: bool) -> list[RoomDiff]:
        """A connection ended: at once from every room when ``clean``, else after the grace."""
        if not conn.rooms:
            return []
        diffs: list[RoomDiff] = []
        rooms, conn.rooms = conn.rooms, None
        for name, joined in rooms.items():
            room = self._rooms[name]
            del room.peers[conn.id]
            presence = room.users[conn.user_id]
            del presence.joined[conn.id]
            if not clean and self.offline_grace > 0:
                presence.lingering[conn.id] = (joined, now)
                deadline = now + self.offline_grace
                heapq.heappush(self._grace, (deadline, name, conn.user_id, conn.id))
            self._touch(name, room, conn.user_id, now)
            diffs.extend(self._settle(name, room, now))
        return diffs

    def user_changed(self, user_id: str, now: float) -> list[RoomDiff]:
        """The user's visible presence changed: an ``updates`` entry in each of their rooms."""
        diffs: list[RoomDiff] = []
        for name in self._of_user.get(user_id, ()):
            room = self._rooms[name]
            self._unlist(room, user_id)
            room.dirty[user_id] = now
            diffs.extend(self._settle(name, room, now, force=user_id))
        return diffs

    def expire(self, now: float) -> list[RoomDiff]:
        """Memberships whose grace ran out end; batched rooms whose window passed are told."""
        touched: dict[str, _Room] = {}
        heap = self._grace
        while heap and heap[0][0] <= now:
            _, name, user_id, connection_id = heapq.heappop(heap)
            room = self._rooms.get(name)
            presence = room.users.get(user_id) if room else None
            if room is None or presence is None or connection_id not in presence.lingering:
                continue
            _, ended_at = presence.lingering.pop(connection_id)
            self._touch(name, room, user_id, ended_at)
            touched[name] = room
        diffs: list[RoomDiff] = []
        for name, room in touched.items():
            diffs.extend(self._settle(name, room, now))
        while self._due and self._due[0][0] <= now:
            at, name = heapq.heappop(self._due)
            room = self._rooms.get(name)
            if room is not None and room.flush_at == at:
                diffs.extend(self._flush(name, room, now))
        return diffs

    # -- internals -----------------------------------------------------------------------

    def _set(self, joined: _Joined, metadata: Mapping[str, Any]) -> None:
        self._seq += 1
        joined.metadata, joined.seq = metadata, self._seq

    def _member(self, user_id: str, presence: _Presence) -> Member:
        newest: _Joined | None = None
        for joined in (*presence.joined.values(), *(j for j, _ in presence.lingering.values())):
            if joined.seq and (newest is None or joined.seq > newest.seq):
                newest = joined
        metadata = NO_METADATA if newest is None else newest.metadata
        return Member(self.status_of(user_id), metadata, len(presence.joined))

    def _unlist(self, room: _Room, user_id: str) -> None:
        """A change to ``user_id`` in ``room``: drop the listing if it could show it."""
        listed = room.listed
        if listed is not None and (user_id in listed[0] or len(listed[0]) < self.list_limit):
            room.listed = None

    def _touch(self, name: str, room: _Room, user_id: str, at: float) -> None:
        self._unlist(room, user_id)
        room.dirty[user_id] = at
        presence = room.users.get(user_id)
        if presence is not None and not presence.joined and not presence.lingering:
            del room.users[user_id]  # no longer a member
            rooms = self._of_user[user_id]
            rooms.discard(name)
            if not rooms:
                del self._of_user[user_id]

    def _settle(
        self, name: str, room: _Room, now: float, skip: str | None = None, force: str = ""
    ) -> list[RoomDiff]:
        """Tell the room now, or when its batch window ends."""
        scheduled = room.flush_at is not None
        if hold(room, len(room.users), self.batch_threshold, self.batch_interval, now):
            if not scheduled and room.flush_at is not None:
                heapq.heappush(self._due, (room.flush_at, name))
            self._forget_if_empty(name, room)
            return []
        if not scheduled and room.flush_at is not None:
            heapq.heappush(self._due, (room.flush_at, name))
        return self._flush(name, room, now, skip, force)

    def _flush(
        self, name: str, room: _Room, now: float, skip: str | None = None, force: str = ""
    ) -> list[RoomDiff]:
        users = room.users

        def member_of(user_id: str) -> Member | None:
            presence = users.get(user_id)
            return None if presence is None else self._member(user_id, presence)

        changes = flush(room, member_of, len(users), self.list_limit, now, force)
        count = len(users)
        recipients = tuple(p for cid, p in room.peers.items() if cid != skip)
        self._forget_if_empty(name, room)
        if changes is None or not recipients:
            return []
        self.diffs_sent += len(recipients)
        return [RoomDiff(name, *changes, count, recipients)]

    def _forget_if_empty(self, name: str, room: _Room) -> None:
        if not room.users and not room.dirty and room.flush_at is None:
            self._rooms.pop(name, None)
