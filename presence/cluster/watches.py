"""Watching users across the cluster: per-user versions, and the order watchers see.

The node SUBSCRIBEs to a user's channel when its first local client watches that user,
and UNSUBSCRIBEs when the last one goes. Per watched user it keeps a ``_Watch``: the last
version and view it delivered. A new watch subscribes first, then reads the snapshot (with
its version); diffs arriving meanwhile are buffered, then those newer than the snapshot
are applied in order; anything at or below the known version is dropped. So every watcher
gets its PRESENCE_STATE, then each later change once, in order. A connection waiting for
its PRESENCE_STATE receives no diff for those users: the state, built when it is sent,
already holds them.

Off Redis, watchers on this node get diffs of users connected to this node as this node
alone sees them (``deliver_local``); users elsewhere stay as last known. Back on Redis,
every watch is re-read and each watcher gets one diff where the cluster's view differs
from what it was last told (``reread``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import wire
from ..core.model import Change, Connection, PresenceModel, TooManySubscriptions, UserView
from ..hub import diff_message, state_message
from .link import RedisLink
from .store import CHANNEL_PREFIX, Store, channel, parse_message

log = Logger()

Snapshot = Mapping[str, tuple[int, UserView]]


def looks_like(view: UserView, other: UserView) -> bool:
    """``UserView.looks_like``, with times as Redis keeps them, to the millisecond: this
    node's own view of a user (off Redis) and Redis's view of the same change agree."""
    if view.last_seen is None or other.last_seen is None:
        return view.looks_like(other)
    return (
        view.status == other.status
        and abs(view.last_seen - other.last_seen) < 0.001
        and view.metadata == other.metadata
    )


@dataclass(eq=False)
class _Watch:
    """What this node last delivered of one watched user."""

    version: int = 0
    view: UserView | None = None
    pending: bool = True  # a snapshot is due: diffs are buffered until it is read
    buffer: list[tuple[int, UserView]] = field(default_factory=list)
    waiting: list[_StateRequest] = field(default_factory=list)


@dataclass(eq=False)
class _StateRequest:
    """A SUBSCRIBE whose PRESENCE_STATE is not sent yet."""

    conn: Connection
    ids: tuple[str, ...]
    idset: frozenset[str]
    snapshot: Snapshot | None = None
    read: bool = False  # the snapshot read finished (or failed)
    done: bool = False


class Watches:
    def __init__(
        self,
        model: PresenceModel,
        link: RedisLink,
        store: Store,
        clock: IReactorTime,
        errors: Callable[[Failure, str], None],
    ) -> None:
        self._model = model
        self._link = link
        self._store = store
        self._clock = clock
        self._errors = errors
        self.diffs_sent = 0
        self._watch: dict[str, _Watch] = {}
        self._requests: dict[str, list[_StateRequest]] = {}  # connectionId -> waiting

    def watched(self) -> list[str]:
        return list(self._watch)

    # -- subscribing -----------------------------------------------------------------------

    def subscribe(self, conn: Connection, user_ids: Iterable[str], remote: bool) -> None:
        """``remote``: read the users from Redis; else answer from this node's model."""
        ids = tuple(dict.fromkeys(user_ids))
        try:
            self._model.subscribe(conn, ids)
        except TooManySubscriptions as e:
            raise wire.WireError("TOO_MANY_SUBSCRIPTIONS", str(e)) from None
        new = [u for u in ids if u not in self._watch]
        for user_id in new:
            self._watch[user_id] = _Watch()
        request = _StateRequest(conn, ids, frozenset(ids))
        self._requests.setdefault(conn.id, []).append(request)
        for user_id in ids:
            watch = self._watch[user_id]
            if watch.pending:
                watch.waiting.append(request)
        if not remote:
            for user_id in new:
                self._settle_local(user_id)
            request.read = True
            self._try_finish(request)
            return
        d: defer.Deferred[Any]
        if new:
            d = self._link.subscribe([channel(u) for u in new])
            d.addCallback(lambda _: self._store.snapshot(ids))
        else:
            d = self._store.snapshot(ids)

        def read(snapshot: Snapshot) -> None:
            request.snapshot = snapshot
            self._apply_snapshot(new, snapshot, deliver=False)
            request.read = True
            self._try_finish(request)

        def failed(failure: Failure) -> None:
            self._errors(failure, "subscribe")
            for user_id in new:
                watch = self._watch.get(user_id)
                if watch is not None and watch.pending:
                    self._settle_local(user_id)
            request.read = True
            self._try_finish(request)

        d.addCallbacks(read, failed)

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        ids = [u for u in user_ids if u in conn.watching]
        self._model.unsubscribe(conn, ids)
        self.unwatch_unwatched(ids)

    def forget(self, conn: Connection) -> None:
        """A connection closed: its PRESENCE_STATEs are not sent."""
        self._requests.pop(conn.id, None)

    def unwatch_unwatched(self, user_ids: Iterable[str]) -> None:
        """Stop watching those of these users nobody on this node watches any more."""
        gone = []
        for user_id in user_ids:
            if not self._model.watcher_map(user_id) and user_id in self._watch:
                del self._watch[user_id]
                gone.append(channel(user_id))
        if gone:
            self._link.unsubscribe(gone)

    # -- Redis answers ---------------------------------------------------------------------

    def message(self, name: str, payload: str) -> None:
        """A message on a user's channel."""
        if not name.startswith(CHANNEL_PREFIX):
            return
        user_id = name[len(CHANNEL_PREFIX) :]
        watch = self._watch.get(user_id)
        if watch is None:
            return
        try:
            version, view = parse_message(payload)
        except (ValueError, orjson.JSONDecodeError):
            log.warn("unreadable message on {name}", name=name)
            return
        if watch.pending:
            watch.buffer.append((version, view))
        else:
            self._apply(user_id, watch, version, view)

    def hold_all(self) -> None:
        """A re-read is due for every watch: buffer diffs (and new states) until then."""
        for watch in self._watch.values():
            watch.pending = True

    def reread(self) -> defer.Deferred[None]:
        """Back on Redis: subscribe again, read every watched user, tell each watcher what
        changed since it was last told."""
        self.hold_all()
        ids = list(self._watch)
        d: defer.Deferred[Any] = self._link.subscribe([channel(u) for u in ids])
        d.addCallback(lambda _: self._store.snapshot(ids))
        d.addCallback(lambda snapshot: self._apply_snapshot(ids, snapshot, deliver=True))
        return d

    def settle_locally(self) -> None:
        """Redis went away: nobody will answer the pending reads, serve what this node
        knows."""
        for user_id, watch in list(self._watch.items()):
            if watch.pending:
                self._settle_local(user_id)

    # -- delivering ------------------------------------------------------------------------

    def deliver_local(self, changes: Sequence[Change]) -> None:
        """Off Redis: this node's own view of its users reaches its own watchers."""
        for change in changes:
            self._deliver_view(change.user_id, change.view)

    def deliver_views(self, user_ids: Iterable[str]) -> None:
        """These users as this node alone sees them, where that is not what their watchers
        were last told (their changes went to a Redis that is gone)."""
        for user_id in user_ids:
            self._deliver_view(user_id, self._model.view(user_id))

    def _deliver_view(self, user_id: str, view: UserView) -> None:
        watch = self._watch.get(user_id)
        if watch is None or watch.pending:
            return
        previous, watch.view = watch.view, view
        if previous is None or not looks_like(view, previous):
            self._send_diff(user_id, view)

    def _apply_snapshot(self, user_ids: Iterable[str], snapshot: Snapshot, deliver: bool) -> None:
        """Settle the watches still waiting for this snapshot (``deliver``: tell their
        watchers what changed; a new watch's PRESENCE_STATE does that itself)."""
        for user_id in user_ids:
            watch = self._watch.get(user_id)
            if watch is not None and watch.pending and user_id in snapshot:
                version, view = snapshot[user_id]
                self._settle(user_id, watch, version, view, deliver=deliver)

    def _settle(
        self, user_id: str, watch: _Watch, version: int, view: UserView, deliver: bool
    ) -> None:
        """A snapshot read after subscribing: take it, then the newer buffered diffs."""
        previous = watch.view
        watch.version, watch.view = version, view
        if deliver and previous is not None and not looks_like(view, previous):
            self._send_diff(user_id, view)
        buffered, watch.buffer = watch.buffer, []
        watch.pending = False
        for v, buffered_view in buffered:
            self._apply(user_id, watch, v, buffered_view)
        self._release(watch)

    def _settle_local(self, user_id: str) -> None:
        """No Redis to ask: what this node knows (kept until the next re-read)."""
        watch = self._watch[user_id]
        if watch.view is None:
            watch.view = self._model.view(user_id)
        watch.buffer = []
        watch.pending = False
        self._release(watch)

    def _release(self, watch: _Watch) -> None:
        waiting, watch.waiting = watch.waiting, []
        for request in waiting:
            self._try_finish(request)

    def _apply(self, user_id: str, watch: _Watch, version: int, view: UserView) -> None:
        if version <= watch.version:
            return  # already in the snapshot, or already delivered
        watch.version = version
        previous, watch.view = watch.view, view
        if previous is None or not looks_like(view, previous):
            self._send_diff(user_id, view)

    def _try_finish(self, request: _StateRequest) -> None:
        if request.done or not request.read:
            return
        for user_id in request.ids:
            watch = self._watch.get(user_id)
            if watch is not None and watch.pending:
                return
        request.done = True
        waiting = self._requests.get(request.conn.id)
        if waiting is not None:
            if request in waiting:
                waiting.remove(request)
            if not waiting:
                del self._requests[request.conn.id]
        if self._model.connection(request.conn.id) is None:
            return
        views = {u: self._state_view(u, request.snapshot) for u in request.ids}
        request.conn.peer.send(state_message(views, self._clock.seconds()))

    def _state_view(self, user_id: str, snapshot: Snapshot | None) -> UserView:
        watch = self._watch.get(user_id)
        read = snapshot.get(user_id) if snapshot else None
        if watch is None or watch.view is None:
            return read[1] if read else self._model.view(user_id)
        if read is None:
            return watch.view
        version, view = read
        if version == watch.version:
            return view  # the same version, with an exact connection count
        return replace(watch.view, connections=view.connections)

    def _send_diff(self, user_id: str, view: UserView) -> None:
        watchers = self._model.watcher_map(user_id)
        if not watchers:
            return
        message = wire.Shared(diff_message(user_id, view, self._clock.seconds()))
        requests = self._requests
        for connection_id, peer in watchers.items():
            waiting = requests.get(connection_id) if requests else None
            if waiting and any(user_id in r.idset for r in waiting):
                continue  # its PRESENCE_STATE is on the way and will hold this
            peer.send_shared(message)
            self.diffs_sent += 1
