"""Rooms' atomic steps: one Lua script each (``lua/room_*.lua``, keys in ``lua/_rooms.lua``),
and parsing what they answer and publish.

Every step recomputes the memberships it touches inside Redis and, when what a member sees
changed, bumps the room's version and publishes the change on the room's channel, so every
node sees each room's changes in one order. A user's own presence changing (``settle`` in
``_common.lua``) publishes an update in each of their rooms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from twisted.internet import defer

from ..core.rooms import Member
from ..hub import RoomPage
from .store import PREFIX, Scripts, _text, load_script, stamp

ROOM_CHANNEL_PREFIX = PREFIX + "rch:"
ROOM_SCRIPTS = (
    "room_join",
    "room_update",
    "room_leave",
    "room_close",
    "room_expire",
    "room_snapshot",
    "room_page",
    "room_resync",
)
FULL = -1  # room_join: the room is at its cap and the user is not a member

_SCRIPT_TEXT = {name: load_script(name) for name in ROOM_SCRIPTS}


def room_channel(room: str) -> str:
    return ROOM_CHANNEL_PREFIX + room


@dataclass(frozen=True, slots=True)
class RoomMessage:
    """One published change of a room: the user's membership now (None: they left at
    ``at``); ``origin`` is the joining connection (told nothing of its own join)."""

    version: int
    origin: str
    user_id: str
    member: Member | None
    at: float | None
    force: bool


def parse_room_message(payload: str) -> RoomMessage:
    version, origin, user_id, kind, status, connections, at, metadata = payload.split("\n", 7)
    member = None
    if kind != "l":
        member = Member(status, orjson.loads(metadata), int(connections))
    return RoomMessage(
        int(version), origin, user_id, member, float(at) if at else None, kind == "f"
    )


@dataclass(frozen=True, slots=True)
class RoomSnapshot:
    version: int
    members: dict[str, Member]


@dataclass(frozen=True, slots=True)
class RoomTotals:
    ended: int
    rooms: int
    memberships: int


LiveMembership = tuple[str, str, str, str]  # connectionId, userId, room, metadata JSON or ''
EndedMembership = tuple[str, str, float, bool]  # room, connectionId, when, clean


class RoomStore(Scripts):
    scripts = _SCRIPT_TEXT

    def join(
        self,
        connection_id: str,
        user_id: str,
        room: str,
        metadata: Mapping[str, Any] | None,
        now: float,
        cap: int,
    ) -> defer.Deferred[tuple[int, int]]:
        """(1 or ``FULL``, the room's version once joined)."""
        has, encoded = ("0", "") if metadata is None else ("1", orjson.dumps(metadata).decode())
        args = [self.node, connection_id, user_id, room, has, encoded, stamp(now), cap, self.ttl]
        return self._run("room_join", args).addCallback(lambda r: (int(r[0]), int(r[1])))

    def update(
        self, connection_id: str, user_id: str, room: str, metadata: Mapping[str, Any], now: float
    ) -> defer.Deferred[tuple[int, int]]:
        encoded = orjson.dumps(metadata).decode()
        args = [connection_id, user_id, room, encoded, stamp(now), self.ttl]
        return self._run("room_update", args).addCallback(lambda r: (int(r[0]), int(r[1])))

    def leave(self, connection_id: str, user_id: str, room: str, now: float) -> defer.Deferred[Any]:
        args = [self.node, connection_id, user_id, room, stamp(now), self.ttl]
        return self._run("room_leave", args)

    def close(
        self, connection_id: str, user_id: str, rooms: Iterable[str], now: float, clean: bool
    ) -> defer.Deferred[Any]:
        args = [self.node, connection_id, user_id, stamp(now), int(clean), self.grace, self.ttl]
        return self._run("room_close", [*args, *rooms])

    def expire(self, now: float, limit: int = 500) -> defer.Deferred[RoomTotals]:
        d = self._run("room_expire", [stamp(now), self.ttl, limit])
        return d.addCallback(lambda r: RoomTotals(*(int(x) for x in r)))

    def snapshot(self, room: str) -> defer.Deferred[RoomSnapshot]:
        def parse(reply: list[Any]) -> RoomSnapshot:
            values = [_text(v) for v in reply]
            members = {}
            for i in range(1, len(values), 4):
                user_id, status, connections, metadata = values[i : i + 4]
                members[user_id] = Member(status, orjson.loads(metadata), int(connections))
            return RoomSnapshot(int(values[0]), members)

        return self._run("room_snapshot", [room]).addCallback(parse)

    def page(self, room: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        """One page of members in userId order: Redis sends only that page."""

        def parse(reply: list[Any]) -> RoomPage:
            values = [_text(v) for v in reply]
            members = {}
            for i in range(2, len(values), 4):
                user_id, status, connections, metadata = values[i : i + 4]
                members[user_id] = Member(status, orjson.loads(metadata), int(connections))
            return RoomPage(members, int(values[0]), values[1] or None)

        return self._run("room_page", [room, limit, after or ""]).addCallback(parse)

    def resync(
        self, now: float, live: Sequence[LiveMembership], ended: Sequence[EndedMembership]
    ) -> defer.Deferred[Any]:
        args: list[Any] = [self.node, stamp(now), self.grace, self.ttl, len(live)]
        for item in live:
            args.extend(item)
        for room, connection_id, at, clean in ended:
            args.extend((room, connection_id, stamp(at), int(clean)))
        return self._run("room_resync", args)
