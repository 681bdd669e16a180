"""Rooms across the cluster: this node's side.

The memberships live in Redis, changed atomically by the room scripts (``room_store``),
which publish each change of a room on its channel with the room's version; this node
follows the rooms its own connections joined (``room_streams``) and tells them each change
in order, batched like on one node (``core.replica``).

This node's own memberships are also kept in a pure ``Rooms`` (``local``): it holds each
connection's rooms (the per-connection limit, NOT_IN_ROOM, the grace of its own closes),
what the next registration gives Redis, and, while Redis is away, the members as this node
alone sees them (the cap on a room's members is then checked against them too). Back on
Redis the node re-registers its memberships (``room_resync.lua``, ending the ones that ended
meanwhile with the time and cleanliness they ended with) and re-reads every room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..core import wire
from ..core.model import Connection
from ..core.rooms import RoomRefused, Rooms
from ..hub import RoomPage, refused
from .link import RedisLink, RedisUnavailable
from .room_store import FULL, EndedMembership, LiveMembership, RoomStore, RoomTotals
from .room_streams import RoomStreams


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
        self._streams = RoomStreams(local, link, store, clock, self._failed)
        self._ended: list[EndedMembership] = []  # ended while Redis was away
        self._totals: RoomTotals | None = None  # cluster-wide, as of the last expiry
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
        return self._streams.diffs_sent

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
        streams = self._streams
        room = streams.stream(name, remote)
        room.ours.add(conn.user_id)
        self._joined_any = True
        if not remote:
            room.waiting[conn.id] = (conn, 0)
            streams.local_view(name, now)
            return
        room.waiting[conn.id] = (conn, None)

        def send() -> None:
            d = self._store.join(conn.id, conn.user_id, name, metadata, now, self.cap)
            d.addCallbacks(answered, self._failed, errbackArgs=("room join",))

        def answered(reply: tuple[int, int]) -> None:
            code, version = reply
            if streams.get(name) is not room or conn.id not in room.waiting:
                return  # left or closed meanwhile, or Redis went away first
            if code == FULL:
                del room.waiting[conn.id]
                if conn.id not in room.replica.peers:
                    self.local.leave(conn, name, self._clock.seconds())
                    streams.forget_if_unused(name)
                message = f"the room has {self.cap} members already"
                conn.peer.send(wire.error_message("ROOM_FULL", message, wire.iso(now)))
                return
            room.waiting[conn.id] = (conn, version)
            streams.release(name, room)

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
            self._streams.local_view(name, now)

    def leave(self, conn: Connection, name: str, now: float, remote: bool) -> None:
        if not conn.rooms or name not in conn.rooms:
            return
        self.local.leave(conn, name, now)
        self._streams.drop(conn, name)
        if remote:
            d = self._store.leave(conn.id, conn.user_id, name, now)
            d.addErrback(self._failed, "room leave")
        else:
            self._ended.append((name, conn.id, now, True))
            self._streams.local_view(name, now)
        self._streams.forget_if_unused(name)

    def close(self, conn: Connection, now: float, clean: bool, remote: bool) -> None:
        """Before the user's own close reaches Redis (its status follows the rooms)."""
        names = list(conn.rooms or ())
        if not names:
            return
        self.local.closed(conn, now, clean)
        for name in names:
            self._streams.drop(conn, name)
        if remote:
            d = self._store.close(conn.id, conn.user_id, names, now, clean)
            d.addErrback(self._failed, "room close")
        else:
            self._ended.extend((name, conn.id, now, clean) for name in names)
            for name in names:
                self._streams.local_view(name, now)
        for name in names:
            self._streams.forget_if_unused(name)

    def user_changed(self, user_id: str, now: float) -> None:
        """Off Redis: the user's presence changed as this node sees it."""
        for name in self.local.rooms_of(user_id):
            self._streams.local_view(name, now)

    def tick(self, now: float, remote: bool) -> None:
        self.local.expire(now)
        if remote:
            d = self._store.expire(now)
            d.addCallbacks(self._counted, self._failed, errbackArgs=("room expire",))
        else:
            for name in self._streams.names():
                self._streams.local_view(name, now)
        self._streams.due(now)

    def page(self, name: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        return self._store.page(name, limit, after)

    # -- registering ----------------------------------------------------------------------

    def message(self, channel: str, payload: str) -> bool:
        return self._streams.message(channel, payload)

    def live(self) -> list[LiveMembership]:
        """This node's memberships, for a registration: the metadata set most recently last."""
        out: list[tuple[int, LiveMembership]] = []
        for conn in self._connections():
            for name, joined in (conn.rooms or {}).items():
                md = orjson.dumps(joined.metadata).decode() if joined.seq else ""
                out.append((joined.seq, (conn.id, conn.user_id, name, md)))
        return [item for _, item in sorted(out, key=lambda x: x[0])]

    def resync(self, now: float) -> defer.Deferred[Any]:
        if not self._streams and not self._ended and not self._joined_any:
            return defer.succeed(None)  # no membership of this run's can be in Redis
        ended, self._ended = self._ended, []
        d = self._store.resync(now, self.live(), ended)

        def failed(failure: Failure) -> Failure:
            self._ended[:0] = ended
            return failure

        return d.addErrback(failed)

    def reread(self) -> defer.Deferred[Any]:
        return self._streams.reread()

    def go_local(self) -> None:
        self._streams.go_local()

    # -- internals -----------------------------------------------------------------------

    def _counted(self, totals: RoomTotals) -> None:
        self._totals = totals

    def _failed(self, failure: Failure, what: str) -> None:
        self._errors(failure, what)
        if not failure.check(RedisUnavailable):
            self._link.abort(f"{what} failed: {failure.getErrorMessage()}")
