"""The cluster hub: many daemons, one presence, on Redis.

Same methods as ``LocalHub``, so the protocol and web layers never know which one they talk
to. The pure model still holds this node's connections, their liveness and the index
userId -> watching connections; the user aggregate lives in Redis and is recomputed there,
atomically, by Lua scripts (``redis_store``), which PUBLISH a versioned diff on the user's
channel when what a watcher sees changed.

Watching. The node SUBSCRIBEs to a user's channel when its first local client watches that
user, and UNSUBSCRIBEs when the last one goes. Per watched user it keeps a ``_Watch``: the
last version and view it delivered. A new watch subscribes first, then reads the snapshot
(with its version); diffs arriving meanwhile are buffered, then those newer than the
snapshot are applied in order; anything at or below the known version is dropped. So every
watcher gets its PRESENCE_STATE, then each later change once, in order. A connection waiting
for its PRESENCE_STATE receives no diff for those users: the state, built when it is sent,
already holds them.

Redis away (see the README). Local clients keep being served: heartbeats, updates, closes
and subscriptions all work on the node's own model, and watchers on this node get diffs of
users connected to this node as this node alone sees them; users elsewhere stay as last
known. Writes are not queued: on reconnect the node re-registers every live connection (and
ends the ones that closed meanwhile, with the time and cleanliness they closed with), then
re-reads every watched user and sends each watcher one diff where the cluster's view
differs from what it was last told.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import policy, wire
from ..core.model import Change, Connection, PresenceModel, TooManySubscriptions, UserView
from ..hub import Figures, diff_message, state_message
from .metrics import ClusterMetrics
from .options import ClusterConfig
from .store import (
    CHANNEL_PREFIX,
    RedisLink,
    RedisUnavailable,
    Store,
    Sweep,
    channel,
    parse_message,
)

log = Logger()

LEAVE_TIMEOUT = 2.0


@dataclass(eq=False)
class _Watch:
    """What this node last delivered of one watched user."""

    version: int = 0
    view: UserView | None = None
    pending: bool = True  # subscribed, snapshot not read yet: diffs are buffered
    buffer: list[tuple[int, UserView]] = field(default_factory=list)
    waiting: list[_StateRequest] = field(default_factory=list)


@dataclass(eq=False)
class _StateRequest:
    """A SUBSCRIBE whose PRESENCE_STATE is not sent yet."""

    conn: Connection
    ids: tuple[str, ...]
    idset: frozenset[str]
    snapshot: dict[str, tuple[int, UserView]] | None = None
    read: bool = False  # the snapshot read finished (or failed)
    done: bool = False


class _NoRooms:
    room_count = membership_count = diffs_sent = 0


_NO_ROOMS = _NoRooms()


class ClusterHub(Service):
    def __init__(
        self,
        model: PresenceModel,
        config: ClusterConfig,
        reactor: Any,
        metrics: ClusterMetrics | None = None,
        max_connections_per_user: int = 0,
    ) -> None:
        self._model = model
        self.max_connections_per_user = max_connections_per_user
        self.config = config
        self.reactor = reactor
        self.metrics = metrics
        self.incarnation = os.urandom(4).hex()
        self._users_present: int | None = None
        self.node = f"{config.node_name}#{self.incarnation}"
        timeout = config.node_timeout
        self.link = RedisLink(
            config.redis,
            reactor,
            self._redis_up,
            self._redis_down,
            self._message,
            self._link_error,
            reply_timeout=config.reply_timeout,
            max_backoff=config.max_backoff,
        )
        self.store = Store(self.link, self.node, model.offline_grace, config.last_seen_ttl)
        self.diffs_sent = 0
        self._watch: dict[str, _Watch] = {}
        self._requests: dict[str, list[_StateRequest]] = {}  # connectionId -> waiting
        self._writable = False  # writes go to Redis (up and re-registered)
        self._synced = False  # re-registered and every watch re-read
        self._ended: dict[str, tuple[str, float, bool]] = {}  # closed while Redis was away
        # connectionId -> its rank once Redis answered the open, or who waits for it
        self._ranks: dict[str, int | list[defer.Deferred[int]]] = {}
        self._resyncing = False
        self._resync_again = False
        self._first_sweep = True
        self._expiring = False
        self._beating = False
        self._stopping = False
        self._loop: LoopingCall | None = None
        self.loop_interval = min(1.0, timeout / 4)

    # -- the PresenceHub interface ---------------------------------------------------------

    @property
    def figures(self) -> Figures:
        return self._model

    def connections(self) -> list[Connection]:
        return self._model.all_connections()

    def stale(self, now: float, timeout: float) -> list[Connection]:
        return self._model.stale(now, timeout)

    def open(
        self, connection_id: str, user_id: str, peer: Any, now: float
    ) -> defer.Deferred[Connection]:
        conn, changes = self._model.open(connection_id, user_id, peer, now)
        if self._writable:
            self._ranks[connection_id] = []
            d = self.store.open(connection_id, user_id, now)
            d.addBoth(self._ranked, connection_id)
            self._write(d, "open")
        else:
            self._deliver_local(changes, now)
        cap = self.max_connections_per_user
        if not cap:
            return defer.succeed(conn)

        def ranked(rank: int) -> Connection:
            if policy.over_user_cap(rank, cap):
                self.close(conn, self.reactor.seconds(), clean=True)
                raise policy.OverCapacity("too many connections for this user")
            return conn

        return self.connection_rank(connection_id).addCallback(ranked)

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        changes = self._model.update(conn, status, metadata, now)
        if self._writable:
            d = self.store.update(conn.id, conn.user_id, status, metadata, now)
            d.addCallback(self._updated)
            self._write(d, "update")
        else:
            self._deliver_local(changes, now)

    def close(self, conn: Connection, now: float, clean: bool) -> None:
        watched = tuple(conn.watching)
        changes = self._model.close(conn, now, clean)
        self._requests.pop(conn.id, None)
        waiting = self._ranks.pop(conn.id, None)
        if isinstance(waiting, list):
            for d in waiting:
                d.callback(self._model.connections_of(conn.user_id) + 1)
        if self._writable:
            self._write(self.store.close(conn.id, conn.user_id, now, clean), "close")
        elif not self._stopping:
            self._ended[conn.id] = (conn.user_id, now, clean)
            self._deliver_local(changes, now)
        for user_id in watched:
            self._maybe_unwatch(user_id)

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
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
        if not self._writable:
            for user_id in new:
                self._settle_local(user_id)
            request.read = True
            self._try_finish(request)
            return
        d: defer.Deferred[Any]
        if new:
            d = self.link.subscribe([channel(u) for u in new])
            d.addCallback(lambda _: self.store.snapshot(ids))
        else:
            d = self.store.snapshot(ids)

        def read(snapshot: dict[str, tuple[int, UserView]]) -> None:
            request.snapshot = snapshot
            self._apply_snapshot(new, snapshot, deliver=False)
            request.read = True
            self._try_finish(request)

        def failed(failure: Failure) -> None:
            self._error(failure, "subscribe")
            for user_id in new:
                if user_id in self._watch and self._watch[user_id].pending:
                    self._settle_local(user_id)
            request.read = True
            self._try_finish(request)

        d.addCallbacks(read, failed)

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        ids = [u for u in user_ids if u in conn.watching]
        self._model.unsubscribe(conn, ids)
        for user_id in ids:
            self._maybe_unwatch(user_id)

    def tick(self, now: float) -> None:
        changes = self._model.expire(now)
        if not self._writable:
            self._deliver_local(changes, now)
            return
        if self._expiring:
            return
        self._expiring = True

        def done(result: Any) -> Any:
            self._expiring = False
            return result

        d = self.store.expire(now)
        d.addBoth(done)
        self._write(d, "expire")

    def lookup(self, user_ids: Iterable[str]) -> defer.Deferred[dict[str, UserView]]:
        ids = list(user_ids)
        if not self._writable:
            return defer.fail(RedisUnavailable(self.health_problem() or "redis is down"))
        d = self.store.snapshot(ids)
        return d.addCallback(lambda snap: {u: view for u, (_, view) in snap.items()})

    def user_connection_count(self, user_id: str) -> defer.Deferred[int]:
        """Connections of this user across the cluster (this node's alone while degraded)."""
        if not self._writable:
            return defer.succeed(self._model.connections_of(user_id))
        d = self.store.connection_count(user_id)
        d.addErrback(lambda _: self._model.connections_of(user_id))
        return d

    def connection_rank(self, connection_id: str) -> defer.Deferred[int]:
        """The user's connection count cluster-wide right after this connection registered:
        counted atomically in Redis, so with a cap of N exactly the connections ranked above N
        are the ones to refuse, however many nodes race. While Redis is away (or before the
        registration is answered) this node's own count."""
        waiting = self._ranks.get(connection_id)
        if isinstance(waiting, int):
            return defer.succeed(waiting)
        conn = self._model.connection(connection_id)
        local = self._model.connections_of(conn.user_id) if conn else 0
        if waiting is None:
            return defer.succeed(local)
        d: defer.Deferred[int] = defer.Deferred()
        waiting.append(d)
        return d

    # -- rooms: not across the cluster yet -------------------------------------------------

    @property
    def room_figures(self) -> Any:
        return _NO_ROOMS

    def join(self, conn: Connection, room: str, metadata: Any, now: float) -> None:
        raise wire.WireError("UNAVAILABLE", "rooms are not served with --redis yet")

    def room_update(self, conn: Connection, room: str, metadata: Any, now: float) -> None:
        raise wire.WireError("UNAVAILABLE", "rooms are not served with --redis yet")

    def leave(self, conn: Connection, room: str, now: float) -> None:
        pass

    def room_page(self, room: str, limit: int, after: str | None) -> defer.Deferred[Any]:
        return defer.fail(RedisUnavailable("rooms are not served with --redis yet"))

    def health_problem(self) -> str | None:
        if self.link.problem:
            return f"redis unavailable: {self.link.problem}"
        if not self._synced:
            return "redis: re-registering this node's connections"
        return None

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.link.start()
        self._loop = LoopingCall(self._beat)
        self._loop.clock = self.reactor
        self._loop.start(self.loop_interval, now=False)
        log.info("cluster node {node} on {url}", node=self.node, url=self.config.redis.describe())

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._writable:
            self._writable = False
            d = self.store.leave(self.reactor.seconds())
            d.addTimeout(LEAVE_TIMEOUT, self.reactor)
            try:
                count = yield d
                log.info("left the cluster: {count} connections removed", count=count)
            except Exception as e:
                log.warn("could not leave the cluster cleanly: {e}", e=e)
        self.link.stop()

    # -- Redis events ----------------------------------------------------------------------

    def _redis_up(self) -> None:
        if self.metrics:
            self.metrics.redis_up.set(1)
        self._resync()

    def _link_error(self, reason: str) -> None:
        if self.metrics:
            self.metrics.redis_errors.inc()

    def _redis_down(self, reason: str) -> None:
        if self.metrics:
            self.metrics.redis_up.set(0)
        self._writable = False
        self._synced = False
        # Nobody will answer the pending reads: serve what this node knows.
        for user_id, watch in list(self._watch.items()):
            if watch.pending:
                self._settle_local(user_id)

    def _message(self, name: str, payload: str) -> None:
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

    # -- re-registering --------------------------------------------------------------------

    @defer.inlineCallbacks
    def _resync(self) -> Any:
        if self._resyncing:
            self._resync_again = True
            return
        self._resyncing = True
        try:
            while True:
                self._resync_again = False
                yield self._resync_once()
                if not self._resync_again:
                    break
        except Exception as e:
            self._error(Failure(e), "re-register")
            self.link.abort(f"re-registering failed: {e}")
        finally:
            self._resyncing = False

    @defer.inlineCallbacks
    def _resync_once(self) -> Any:
        now = self.reactor.seconds()
        live = []
        for conn in self._model.all_connections():
            metadata = orjson.dumps(conn.metadata).decode() if conn.metadata_seq else ""
            live.append((conn.id, conn.user_id, conn.status, metadata))
        live.sort(key=lambda item: self._seq(item[0]))
        ended = [(cid, uid, at, clean) for cid, (uid, at, clean) in self._ended.items()]
        self._ended = {}
        d = self.store.resync(now, self.config.node_timeout, live, ended)
        # Writes issued from now on reach Redis after the re-registration, in order.
        self._writable = True
        empty = yield d
        ids = list(self._watch)
        for user_id in ids:
            self._watch[user_id].pending = True  # diffs from here on are buffered
        if empty and ids and not self._first_sweep:
            # Redis lost its data: give the other nodes time to re-register theirs before
            # reading, or watchers would see users flap offline and back.
            log.warn("redis came back empty: waiting for the other nodes to re-register")
            yield deferLater(self.reactor, self.link.max_backoff * 1.5 + 0.5, lambda: None)
        if self._first_sweep:
            self._first_sweep = False
            sweep = yield self.store.sweep(now, self.config.node_name + "#")
            self._swept(sweep)
        ids = list(self._watch)  # watches may have come and gone meanwhile
        for user_id in ids:
            self._watch[user_id].pending = True
        if ids:
            yield self.link.subscribe([channel(u) for u in ids])
        snapshot = yield self.store.snapshot(ids)
        self._apply_snapshot(ids, snapshot, deliver=True)
        self._synced = True
        log.info(
            "registered {count} connections, watching {watched} users",
            count=len(live),
            watched=len(ids),
        )

    def _seq(self, connection_id: str) -> int:
        conn = self._model.connection(connection_id)
        return conn.metadata_seq if conn else 0

    # -- liveness --------------------------------------------------------------------------

    def _beat(self) -> None:
        if not self._writable or self._beating:
            return
        self._beating = True
        now = self.reactor.seconds()

        @defer.inlineCallbacks
        def beat() -> Any:
            reaped = yield self.store.heartbeat(now, self.config.node_timeout)
            if reaped:
                log.warn("this node's connections were ended by another node: re-registering")
                self._resync()
            sweep = yield self.store.sweep(now)
            self._swept(sweep)
            try:
                yield self.link.ping_subscriber()
            except defer.TimeoutError:
                self.link.abort("the pub/sub connection stopped answering")

        def done(result: Any) -> None:
            self._beating = False

        d = beat()
        d.addErrback(self._error, "heartbeat")
        d.addBoth(done)

    def users_present(self) -> int:
        """Cluster-wide, as of the last beat (the last known count while Redis is away);
        this node's own count until the first beat."""
        if self._users_present is None:
            return self._model.online_user_count
        return self._users_present

    def _swept(self, sweep: Sweep) -> None:
        self._users_present = sweep.users_present
        if self.metrics:
            self.metrics.nodes_current.set(sweep.alive)
            self.metrics.node_cleanups.inc(sweep.nodes_ended)
        if sweep.nodes_ended:
            log.info(
                "ended {conns} connections of {nodes} dead nodes",
                conns=sweep.connections_ended,
                nodes=sweep.nodes_ended,
            )

    # -- delivering ------------------------------------------------------------------------

    def _apply_snapshot(
        self,
        user_ids: Iterable[str],
        snapshot: Mapping[str, tuple[int, UserView]],
        deliver: bool,
    ) -> None:
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
        if deliver and previous is not None and not view.looks_like(previous):
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
        if previous is None or not view.looks_like(previous):
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
        request.conn.peer.send(state_message(views, self.reactor.seconds()))

    def _state_view(
        self, user_id: str, snapshot: dict[str, tuple[int, UserView]] | None
    ) -> UserView:
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
        message = wire.Shared(diff_message(user_id, view, self.reactor.seconds()))
        requests = self._requests
        for connection_id, peer in watchers.items():
            waiting = requests.get(connection_id) if requests else None
            if waiting and any(user_id in r.idset for r in waiting):
                continue  # its PRESENCE_STATE is on the way and will hold this
            peer.send_shared(message)
            self.diffs_sent += 1

    def _deliver_local(self, changes: Sequence[Change], now: float) -> None:
        """Redis away: this node's own view of its users reaches its own watchers."""
        for change in changes:
            watch = self._watch.get(change.user_id)
            if watch is None or watch.pending:
                continue
            if watch.view is not None and change.view.looks_like(watch.view):
                watch.view = change.view
                continue
            watch.view = change.view
            self._send_diff(change.user_id, change.view)

    def _maybe_unwatch(self, user_id: str) -> None:
        if self._model.watcher_map(user_id):
            return
        watch = self._watch.pop(user_id, None)
        if watch is None:
            return
        self.link.unsubscribe([channel(user_id)])

    # -- errors ----------------------------------------------------------------------------

    def _ranked(self, result: Any, connection_id: str) -> Any:
        waiting = self._ranks.pop(connection_id, None)
        conn = self._model.connection(connection_id)
        if isinstance(result, Failure):
            count = self._model.connections_of(conn.user_id) if conn else 0
        else:
            count = int(result)
            if conn is not None:
                self._ranks[connection_id] = count
        if isinstance(waiting, list):
            for d in waiting:
                d.callback(count)
        return result

    def _updated(self, result: int) -> None:
        if result < 0:
            log.warn("redis did not know a connection of this node: re-registering")
            self._resync()

    def _write(self, d: defer.Deferred[Any], what: str) -> None:
        d.addErrback(self._write_failed, what)

    def _write_failed(self, failure: Failure, what: str) -> None:
        self._error(failure, what)
        if not self._stopping:
            # Not knowing whether it was applied, drop the link: reconnecting re-registers.
            self.link.abort(f"{what} failed: {failure.getErrorMessage()}")

    def _error(self, failure: Failure, what: str) -> None:
        if self.metrics:
            self.metrics.redis_errors.inc()
        if not failure.check(RedisUnavailable):
            log.warn("redis {what} failed: {error}", what=what, error=failure.getErrorMessage())
