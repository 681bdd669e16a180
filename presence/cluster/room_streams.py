"""The rooms this node's connections joined, as streams: one ``RoomReplica`` (core) each.

The node SUBSCRIBEs to a room's channel when its first local connection joins, and
UNSUBSCRIBEs when the last one goes. Like ``watches`` for users: a new room subscribes
first, then reads the snapshot; changes arriving meanwhile are buffered, then those newer
than the snapshot are applied in order, and anything at or below the known version is
dropped. A joining connection gets its ROOM_STATE once the replica holds its join (the
version its join script answered), and is told of the changes after it; never of its own
join. While Redis is away a room's members are taken, for the users with memberships here,
from this node's own ``Rooms`` (``local_view``); back on Redis every room is re-read and each
member connection is told the net change since it was last told (``reread``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.model import Connection
from ..core.replica import RoomReplica
from ..core.rooms import Member, Rooms
from ..hub import deliver_rooms, room_state_message
from .link import RedisLink
from .room_store import (
    ROOM_CHANNEL_PREFIX,
    RoomMessage,
    RoomSnapshot,
    RoomStore,
    parse_room_message,
    room_channel,
)

log = Logger()


@dataclass(eq=False)
class Stream:
    replica: RoomReplica
    pending: bool = True  # a snapshot is due: changes are buffered until it is read
    subscribed: bool = False
    adopted: bool = False  # a first snapshot was taken (or the room was told locally)
    on_subscribed: list[Callable[[], None]] = field(default_factory=list)
    buffer: list[RoomMessage] = field(default_factory=list)
    # joiners waiting for their ROOM_STATE: the room's version once joined (None: no answer)
    waiting: dict[str, tuple[Connection, int | None]] = field(default_factory=dict)
    ours: set[str] = field(default_factory=set)  # users with memberships on this node


class RoomStreams:
    def __init__(
        self,
        local: Rooms,
        link: RedisLink,
        store: RoomStore,
        clock: IReactorTime,
        failed: Callable[[Failure, str], None],
    ) -> None:
        self._local = local
        self._link = link
        self._store = store
        self._clock = clock
        self._failed = failed
        self._rooms: dict[str, Stream] = {}
        self._sent_before = 0  # diffs of replicas dropped since

    @property
    def diffs_sent(self) -> int:
        return self._sent_before + sum(r.replica.diffs_sent for r in self._rooms.values())

    def __bool__(self) -> bool:
        return bool(self._rooms)

    def get(self, name: str) -> Stream | None:
        return self._rooms.get(name)

    def names(self) -> list[str]:
        return list(self._rooms)

    def stream(self, name: str, remote: bool) -> Stream:
        """The room's stream, subscribing to it (``remote``) if it is new."""
        room = self._rooms.get(name)
        if room is not None:
            return room
        local = self._local
        replica = RoomReplica(name, local.batch_threshold, local.batch_interval, local.list_limit)
        room = self._rooms[name] = Stream(replica)
        if not remote:
            room.pending = False
            room.adopted = True  # told as this node sees it: a re-read tells what differs
            return room
        d = self._link.subscribe([room_channel(name)])

        def subscribed(_: Any) -> Any:
            if self._rooms.get(name) is not room or room.subscribed:
                return None
            room.subscribed = True
            callbacks, room.on_subscribed = room.on_subscribed, []
            for callback in callbacks:
                callback()
            return self._read(name, room)

        d.addCallback(subscribed).addErrback(self._failed, "room subscribe")
        return room

    def drop(self, conn: Connection, name: str) -> None:
        """The connection is told nothing more of the room."""
        room = self._rooms.get(name)
        if room is not None:
            room.replica.peers.pop(conn.id, None)
            room.waiting.pop(conn.id, None)

    def forget_if_unused(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is None or room.replica.peers or room.waiting:
            return
        del self._rooms[name]
        self._sent_before += room.replica.diffs_sent
        if room.subscribed:
            self._link.unsubscribe([room_channel(name)])

    def due(self, now: float) -> None:
        for room in self._rooms.values():
            if not room.pending:
                deliver_rooms(room.replica.due(now), now)

    # -- Redis answers ---------------------------------------------------------------------

    def message(self, channel: str, payload: str) -> bool:
        """A message on a room's channel (False: not a room's)."""
        if not channel.startswith(ROOM_CHANNEL_PREFIX):
            return False
        name = channel[len(ROOM_CHANNEL_PREFIX) :]
        room = self._rooms.get(name)
        if room is None:
            return True
        try:
            message = parse_room_message(payload)
        except (ValueError, orjson.JSONDecodeError):
            log.warn("unreadable message on {name}", name=channel)
            return True
        if room.pending:
            room.buffer.append(message)
        else:
            self._apply(room, message)
            self.release(name, room)
        return True

    def reread(self) -> defer.Deferred[Any]:
        """Back on Redis: subscribe again, read every room, tell each member connection what
        changed since it was last told."""
        for room in self._rooms.values():
            room.pending = True
        names = list(self._rooms)
        if not names:
            return defer.succeed(None)
        d: defer.Deferred[Any] = self._link.subscribe([room_channel(n) for n in names])

        def read(_: Any) -> defer.Deferred[Any]:
            reads = []
            for name in names:
                room = self._rooms.get(name)
                if room is not None:
                    room.subscribed = True
                    callbacks, room.on_subscribed = room.on_subscribed, []
                    for callback in callbacks:  # joins sent since the registration
                        callback()
                    reads.append(self._read(name, room))
            return defer.gatherResults(reads, consumeErrors=True)

        return d.addCallback(read)

    def go_local(self) -> None:
        """Redis went away: nobody will answer; serve what this node knows."""
        now = self._clock.seconds()
        for name, room in list(self._rooms.items()):
            room.on_subscribed.clear()
            room.subscribed = False
            room.pending = False
            room.buffer = []
            room.waiting = {cid: (conn, 0) for cid, (conn, _) in room.waiting.items()}
            self.local_view(name, now)

    def local_view(self, name: str, now: float) -> None:
        """Off Redis: the users with memberships here, as this node alone sees them (the
        others stay as last known)."""
        room = self._rooms.get(name)
        if room is None:
            return
        mine = self._local.members(name)
        room.ours.update(mine)
        members: dict[str, Member] = {
            u: m for u, m in room.replica.members.items() if u not in room.ours
        }
        members.update(mine)
        deliver_rooms(room.replica.reset(members, now), now)
        self.release(name, room)

    def release(self, name: str, room: Stream) -> None:
        """Joiners whose join the replica holds: their ROOM_STATE, then its changes."""
        if room.pending or not room.waiting:
            return
        replica = room.replica
        now = self._clock.seconds()
        for cid, (conn, version) in list(room.waiting.items()):
            if version is None or version > replica.version:
                continue
            del room.waiting[cid]
            if conn.rooms and name in conn.rooms:
                replica.peers[conn.id] = conn.peer
                conn.peer.send(room_state_message(replica.state(), now))

    # -- internals -----------------------------------------------------------------------

    def _read(self, name: str, room: Stream) -> defer.Deferred[Any]:
        def read(snapshot: RoomSnapshot) -> None:
            if self._rooms.get(name) is not room or not room.pending:
                return
            now = self._clock.seconds()
            if not room.adopted:
                room.adopted = True
                room.replica.adopt(snapshot.members, snapshot.version)
            else:
                room.replica.version = snapshot.version
                deliver_rooms(room.replica.reset(snapshot.members, now), now)
            room.pending = False
            buffered, room.buffer = room.buffer, []
            for message in buffered:
                self._apply(room, message)
            self.release(name, room)

        return self._store.snapshot(name).addCallback(read)

    def _apply(self, room: Stream, message: RoomMessage) -> None:
        replica = room.replica
        if message.version <= replica.version:
            return  # in the snapshot already, or applied already
        replica.version = message.version
        now = self._clock.seconds()
        at = now if message.at is None else message.at
        user_id, member = message.user_id, message.member
        deliver_rooms(replica.apply(user_id, member, at, now, message.origin, message.force), now)
