"""Rooms across the cluster: this node's side.

The memberships live in Redis, changed atomically by the room scripts (``room_store``),
which publish each change of a room on its channel with the room's version. A node
SUBSCRIBEs to a room when its first local connection joins and UNSUBSCRIBEs when the last
one goes; per room it keeps a ``RoomReplica`` (core): the members as the cluster's stream
made them, and what this node's joined connections were last told. Like ``watches`` for
users: a new room subscribes first, then reads the snapshot; diffs arriving meanwhile are
buffered and those newer than the snapshot applied in order, older ones dropped. A joining
connection gets its ROOM_STATE once the replica holds its join, and is told of changes
after it; never of its own join.

This node's own memberships are also kept in a pure ``Rooms`` (``local``): it holds each
connection's rooms (the per-connection limit, NOT_IN_ROOM), what the next registration
gives Redis, and, while Redis is away, the members as this node alone sees them: the
replicas then take those users from it (members known only from elsewhere stay as last
known). Back on Redis the node re-registers its memberships (``room_resync.lua``, with the
ones that ended meanwhile), re-reads every room and tells each member connection the net
change since it was last told.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import wire
from ..core.model import Connection
from ..core.replica import RoomReplica
from ..core.rooms import Member, RoomRefused, Rooms
from ..hub import RoomPage, deliver_rooms, page_of, refused, room_state_message
from .link import RedisLink, RedisUnavailable
from .room_store import (
    FULL,
    ROOM_CHANNEL_PREFIX,
    EndedMembership,
    LiveMembership,
    RoomMessage,
    RoomStore,
    RoomTotals,
    parse_room_message,
    room_channel,
)

log = Logger()


@dataclass(eq=False)
class _Room:
    replica: RoomReplica
    pending: bool = True  # a snapshot is due: changes are buffered until it is read
    subscribed: bool = False
    adopted: bool = False  # a first snapshot was taken
    on_subscribed: list[Callable[[], None]] = field(default_factory=list)
    buffer: list[RoomMessage] = field(default_factory=list)
    # joiners waiting for their ROOM_STATE: the room's version once joined (None: no answer)
    waiting: dict[str, tuple[Connection, int | None]] = field(default_factory=dict)
    ours: set[str] = field(default_factory=set)  # users with memberships on this node


class ClusterRooms:
    def __init__(
        self,
        local: Rooms,
        link: RedisLink,
        store: RoomStore,
        clock: IReactorTime,
        errors: Callable[[Failure, str], None],
        connections: Callable[[], Iterable[Connection]],
    ) -> None:
        self.local = local
        self._connections = connections
        self.cap = local.max_room_members
        self._link = link
        self._store = store
        self._clock = clock
        self._errors = errors
        self._rooms: dict[str, _Room] = {}
        self._ended: list[EndedMembership] = []  # ended while Redis was away
        self._totals: RoomTotals | None = None  # cluster-wide, as of the last expiry
        self.sent_before = 0  # diffs of replicas dropped since
        self._joined_any = False

    # -- figures: cluster-wide (the last known while Redis is away), this node's until the
    # first expiry answered; diffs_sent is this node's --------------------------------------

    @property
    def room_count(self) -> int:
        totals = self._totals
        return self.local.room_count if totals is None else totals.rooms

    @property
    def membership_count(self) -> int:
        totals = self._totals
        return self.local.membership_count if totals is None else totals.memberships

    @property
    def diffs_sent(self) -> int:
        return self.sent_before + sum(r.replica.diffs_sent for r in self._rooms.values())

    # -- the protocol ------------------------------------------------------------------------

    def join(
        self,
        conn: Connection,
        name: str,
        metadata: Mapping[str, Any] | None,
        now: float,
        remote: bool,
    ) -> None:
        self.local.max_room_members = 0 if remote else self.cap  # Redis checks it atomically
        try:
            self.local.join(conn, name, metadata, now)
        except RoomRefused as e:
            raise refused(e) from None
        room = self._room(name, remote)
        room.ours.add(conn.user_id)
        self._joined_any = True
        if not remote:
            room.waiting[conn.id] = (conn, 0)
            self._local_view(name, now)
            return
        room.waiting[conn.id] = (conn, None)

        def send() -> None:
            d = self._store.join(conn.id, conn.user_id, name, metadata, now, self.cap)
            d.addCallbacks(answered, self._failed, errbackArgs=("room join",))

        def answered(reply: tuple[int, int]) -> None:
            code, version = reply
            current = self._rooms.get(name)
            if current is not room or conn.id not in room.waiting:
                return  # left or closed meanwhile, or Redis went away first
            if code == FULL:
                del room.waiting[conn.id]
                if conn.id not in room.replica.peers:
                    self.local.leave(conn, name, self._clock.seconds())
                    self._forget_if_unused(name)
                message = f"the room has {self.cap} members already"
                conn.peer.send(wire.error_message("ROOM_FULL", message, wire.iso(now)))
                return
            room.waiting[conn.id] = (conn, version)
            self._release(name, room)

        if room.subscribed:
            send()
        else:
            room.on_subscribed.append(send)

    def update(
        self, conn: Connection, name: str, metadata: Mapping[str, Any], now: float, remote: bool
    ) -> None:
        try:
            self.local.update(conn, name, metadata, now)
        except RoomRefused as e:
            raise refused(e) from None
        if remote:
            d = self._store.update(conn.id, conn.user_id, name, metadata, now)
            d.addErrback(self._failed, "room update")
        else:
            self._local_view(name, now)

    def leave(self, conn: Connection, name: str, now: float, remote: bool) -> None:
        if not conn.rooms or name not in conn.rooms:
            return
        self.local.leave(conn, name, now)
        room = self._rooms.get(name)
        if room is not None:
            room.replica.peers.pop(conn.id, None)
            room.waiting.pop(conn.id, None)
        if remote:
            d = self._store.leave(conn.id, conn.user_id, name, now)
            d.addErrback(self._failed, "room leave")
        else:
            self._ended.append((name, conn.id, now, True))
            self._local_view(name, now)
        self._forget_if_unused(name)

    def close(self, conn: Connection, now: float, clean: bool, remote: bool) -> None:
        """Before the user's own close reaches Redis (its status follows the rooms)."""
        names = list(conn.rooms or ())
        if not names:
            return
        self.local.closed(conn, now, clean)
        for name in names:
            room = self._rooms.get(name)
            if room is not None:
                room.replica.peers.pop(conn.id, None)
                room.waiting.pop(conn.id, None)
        if remote:
            d = self._store.close(conn.id, conn.user_id, names, now, clean)
            d.addErrback(self._failed, "room close")
        else:
            self._ended.extend((name, conn.id, now, clean) for name in names)
            for name in names:
                self._local_view(name, now)
        for name in names:
            self._forget_if_unused(name)

    def user_changed(self, user_id: str, now: float) -> None:
        """Off Redis: the user's presence changed as this node sees it."""
        for name in self.local.rooms_of(user_id):
            self._local_view(name, now)

    def tick(self, now: float, remote: bool) -> None:
        self.local.expire(now)
        if remote:
            d = self._store.expire(now)
            d.addCallbacks(self._counted, self._failed, errbackArgs=("room expire",))
        else:
            for name in list(self._rooms):
                self._local_view(name, now)
        for room in self._rooms.values():
            if not room.pending:
                deliver_rooms(room.replica.due(now), now)

    def page(self, name: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        d = self._store.snapshot(name)
        return d.addCallback(lambda snapshot: page_of(snapshot.members, limit, after))

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
            self._apply(name, room, message)
            self._release(name, room)
        return True

    def live(self) -> list[LiveMembership]:
        """This node's memberships, for a registration: the metadata set most recently last."""
        out: list[tuple[int, LiveMembership]] = []
        for conn in self._connections():
            for name, joined in (conn.rooms or {}).items():
                md = orjson.dumps(joined.metadata).decode() if joined.seq else ""
                out.append((joined.seq, (conn.id, conn.user_id, name, md)))
        return [item for _, item in sorted(out, key=lambda x: x[0])]

    def resync(self, now: float) -> defer.Deferred[Any]:
        if not self._rooms and not self._ended and not self._joined_any:
            return defer.succeed(None)  # no membership of this run's can be in Redis
        ended, self._ended = self._ended, []
        d = self._store.resync(now, self.live(), ended)

        def failed(failure: Failure) -> Failure:
            self._ended[:0] = ended
            return failure

        return d.addErrback(failed)

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
            for name in names:
                room = self._rooms.get(name)
                if room is not None:
                    room.subscribed = True
            reads = [self._read(name) for name in names]
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
            self._local_view(name, now)

    # -- internals -----------------------------------------------------------------------

    def _room(self, name: str, remote: bool) -> _Room:
        room = self._rooms.get(name)
        if room is not None:
            return room
        local = self.local
        replica = RoomReplica(name, local.batch_threshold, local.batch_interval, local.list_limit)
        room = self._rooms[name] = _Room(replica)
        if not remote:
            room.pending = False
            return room
        d = self._link.subscribe([room_channel(name)])

        def subscribed(_: Any) -> Any:
            if self._rooms.get(name) is not room or room.subscribed:
                return None
            room.subscribed = True
            callbacks, room.on_subscribed = room.on_subscribed, []
            for callback in callbacks:
                callback()
            return self._read(name)

        d.addCallback(subscribed).addErrback(self._failed, "room subscribe")
        return room

    def _read(self, name: str) -> defer.Deferred[Any]:
        room = self._rooms[name]

        def read(snapshot: Any) -> None:
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
                self._apply(name, room, message)
            self._release(name, room)

        return self._store.snapshot(name).addCallback(read)

    def _apply(self, name: str, room: _Room, message: RoomMessage) -> None:
        replica = room.replica
        if message.version <= replica.version:
            return
        replica.version = message.version
        now = self._clock.seconds()
        at = now if message.at is None else message.at
        diffs = replica.apply(
            message.user_id, message.member, at, now, message.origin, message.force
        )
        deliver_rooms(diffs, now)

    def _release(self, name: str, room: _Room) -> None:
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

    def _local_view(self, name: str, now: float) -> None:
        """Off Redis: the users with memberships here, as this node alone sees them."""
        room = self._rooms.get(name)
        if room is None:
            return
        mine = self.local.members(name)
        room.ours.update(mine)
        members: dict[str, Member] = {
            u: m for u, m in room.replica.members.items() if u not in room.ours
        }
        members.update(mine)
        deliver_rooms(room.replica.reset(members, now), now)
        self._release(name, room)

    def _forget_if_unused(self, name: str) -> None:
        room = self._rooms.get(name)
        if room is None or room.replica.peers or room.waiting:
            return
        del self._rooms[name]
        self.sent_before += room.replica.diffs_sent
        if room.subscribed:
            self._link.unsubscribe([room_channel(name)])

    def _counted(self, totals: RoomTotals) -> None:
        self._totals = totals

    def _failed(self, failure: Failure, what: str) -> None:
        self._errors(failure, what)
        if not failure.check(RedisUnavailable):
            self._link.abort(f"{what} failed: {failure.getErrorMessage()}")
