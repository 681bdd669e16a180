"""Rooms that also note whose membership began or ended: what the single-node hub turns
into room.joined / room.left / room.occupied / room.vacated webhook events.

Pure, like ``rooms``. The diffs ``Rooms`` returns cannot say this (a room nobody else is
in gets no diff, a batched room tells the net change late, a room past the list limit only
its count), so the membership itself is watched: a user joins a room when their first
connection joins it and leaves when their last joined connection left and its grace ran
out, exactly as the other members see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .model import Connection
from .rooms import Member, RoomDiff, Rooms, RoomState, _Room


@dataclass(frozen=True, slots=True)
class Membership:
    """One user's membership of one room began (``joined``) or ended; ``member`` is what
    the room sees of them (on leaving: what the room was last told, connections 0);
    ``count`` the room's members just after."""

    room: str
    user_id: str
    joined: bool
    member: Member
    count: int


class RoomJournal(Rooms):
    """``Rooms`` noting every membership that began or ended, in order, in ``journal``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal: list[Membership] = []

    def take(self) -> list[Membership]:
        journal, self.journal = self.journal, []
        return journal

    def join(
        self, conn: Connection, name: str, metadata: Mapping[str, Any] | None, now: float
    ) -> tuple[RoomState, list[RoomDiff]]:
        room = self._rooms.get(name)
        before = room is not None and conn.user_id in room.users
        state, diffs = super().join(conn, name, metadata, now)
        room = self._rooms.get(name)
        if not before and room is not None and conn.user_id in room.users:
            member = self._member(conn.user_id, room.users[conn.user_id])
            self.journal.append(Membership(name, conn.user_id, True, member, len(room.users)))
        return state, diffs

    def _touch(self, name: str, room: _Room, user_id: str, at: float) -> None:
        was = user_id in room.users
        told = room.told.get(user_id)
        super()._touch(name, room, user_id, at)
        if was and user_id not in room.users:
            if told is None:
                member = Member(self.status_of(user_id), {}, 0)
            else:
                member = Member(told.status, told.metadata, 0)
            self.journal.append(Membership(name, user_id, False, member, len(room.users)))
