"""The webhook events of the single-node hub: users' from the model's changes, rooms' from
a ``RoomJournal``, rooms that also note whose membership began or ended.

Pure, like ``rooms``. The diffs ``Rooms`` returns cannot say this (a room nobody else is
in gets no diff, a batched room tells the net change late, a room past the list limit only
its count), so the membership itself is watched: a user joins a room when their first
connection joins it and leaves when their last joined connection left and its grace ran
out, exactly as the other members see it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import webhooks
from .model import OFFLINE, Change, Connection
from .rooms import Member, RoomDiff, Rooms, RoomState, _Room
from .webhooks import Event


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
