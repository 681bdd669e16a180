"""The cluster hub: many daemons, one presence, on Redis.

Same methods as ``LocalHub``, so the protocol and web layers never know which one they
talk to. The pure model still holds this node's connections, their liveness and the index
userId -> watching connections; the user aggregate lives in Redis and is recomputed there,
atomically, by Lua scripts (``store``), which PUBLISH a versioned diff on the user's
channel when what a watcher sees changed.

This is a facade over its parts: ``watches`` (per-user versions, the order watchers see),
``writes`` (changes on their way to Redis, CONNECT as the commit point), ``registration``
(re-registering, liveness, and the actions of the link's state machine, ``machine``),
``store`` (the atomic steps) and ``link`` (the Redis connections). Whether a change goes
to Redis or is served from this node alone is the machine's current phase.

Redis away (see the README). Local clients keep being served: heartbeats, connects,
updates, closes and subscriptions all work on the node's own model, and watchers on this
node get diffs of users connected to this node as this node alone sees them; users
elsewhere stay as last known. Writes are not queued: on reconnect the node re-registers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..core.model import Change, Connection, Peer, PresenceModel, UserView
from ..core.rooms import Rooms
from ..core.webhooks import WebhookConfig
from ..hub import Figures, OnlinePage, RoomFigures, RoomPage
from .link import RedisLink, RedisUnavailable
from .metrics import ClusterMetrics, Errors
from .options import ClusterConfig
from .registration import Registration
from .room_store import RoomStore
from .rooms import ClusterRooms
from .store import NO_WEBHOOKS, Store
from .watches import Watches
from .webhook_stream import prelude
from .writes import Writes

__all__ = ["ClusterConfig", "ClusterHub", "build_cluster_hub"]

log = Logger()


class ClusterHub(Service):
    def __init__(
        self,
        model: PresenceModel,
        config: ClusterConfig,
        clock: IReactorTime,
        link: RedisLink,
        store: Store,
        metrics: ClusterMetrics | None = None,
        max_connections_per_user: int = 0,
        rooms: Rooms | None = None,
    ) -> None:
        self._model = model
        self.config = config
        self.clock = clock
        self.link = link
        self.store = store
        self.metrics = metrics
        self.max_connections_per_user = max_connections_per_user
        errors = Errors(metrics)
        self._watches = Watches(model, link, store, clock, errors)
        self._writes = Writes(
            model,
            store,
            link,
            self._watches,
            clock,
            errors,
            self._resync_needed,
            max_connections_per_user,
        )
        local = rooms or Rooms(lambda user_id: model.view(user_id).status, model.offline_grace)
        room_store = RoomStore(
            link, store.node, model.offline_grace, config.last_seen_ttl, store.prelude
        )
        self._rooms = ClusterRooms(local, link, room_store, clock, errors, model.all_connections)
        self._life = Registration(
            model,
            config,
            clock,
            link,
            store,
            self._watches,
            self._writes,
            errors,
            metrics,
            self._rooms,
        )
        link.on_message = self._message

    @property
    def phase(self) -> str:
        """The link's state (``machine``)."""
        return self._life.phase.name

    @property
    def beat_interval(self) -> float:
        """Seconds between liveness beats."""
        return self._life.beat_interval

    # -- the PresenceHub interface ---------------------------------------------------------

    @property
    def diffs_sent(self) -> int:
        return self._watches.diffs_sent

    @diffs_sent.setter
    def diffs_sent(self, value: int) -> None:
        self._watches.diffs_sent = value

    @property
    def figures(self) -> Figures:
        return self._model

    def connections(self) -> list[Connection]:
        return self._model.all_connections()

    def stale(self, now: float, timeout: float) -> list[Connection]:
        return self._model.stale(now, timeout)

    def open(
        self, connection_id: str, user_id: str, peer: Peer, now: float
    ) -> defer.Deferred[Connection]:
        if self._life.phase.writable:
            return self._writes.open(connection_id, user_id, peer, now)
        return self._writes.open_locally(connection_id, user_id, peer, now)

    def update(
        self, conn: Connection, status: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        changes = self._model.update(conn, status, metadata, now)
        if self._life.phase.writable:
            self._writes.update(conn, status, metadata, now, changes)
        else:
            self._watches.deliver_local(changes)
            self._rooms_changed(changes, now)

    def close(self, conn: Connection, now: float, clean: bool) -> None:
        watched = tuple(conn.watching)
        writable = self._life.phase.writable
        self._rooms.close(conn, now, clean, writable)  # first: the user's status follows
        changes = self._model.close(conn, now, clean)
        self._watches.forget(conn)
        if writable:
            self._writes.close(conn, now, clean, changes)
        else:
            self._life.note_ended(conn.id, conn.user_id, now, clean)
            self._watches.deliver_local(changes)
            self._rooms_changed(changes, now)
        self._watches.unwatch_unwatched(watched)

    def subscribe(self, conn: Connection, user_ids: Iterable[str], now: float) -> None:
        self._watches.subscribe(conn, user_ids, remote=self._life.phase.writable)

    def unsubscribe(self, conn: Connection, user_ids: Iterable[str]) -> None:
        self._watches.unsubscribe(conn, user_ids)

    def tick(self, now: float) -> None:
        writable = self._life.phase.writable
        self._rooms.tick(now, writable)  # first: memberships end before their users
        changes = self._model.expire(now)
        if writable:
            self._writes.expire(now, changes)
        else:
            self._watches.deliver_local(changes)
            self._rooms_changed(changes, now)

    def lookup(self, user_ids: Iterable[str]) -> defer.Deferred[dict[str, UserView]]:
        ids = list(user_ids)
        if not self._life.phase.writable:
            return defer.fail(RedisUnavailable(self.health_problem() or "redis is down"))
        d = self.store.snapshot(ids)
        return d.addCallback(lambda snap: {u: view for u, (_, view) in snap.items()})

    def online_page(
        self, limit: int, after: str | None, prefix: str = ""
    ) -> defer.Deferred[OnlinePage]:
        if not self._life.phase.writable:
            return defer.fail(RedisUnavailable(self.health_problem() or "redis is down"))
        return self.store.online(limit, after, prefix).addCallback(lambda r: OnlinePage(*r))

    def users_present(self) -> int:
        """Cluster-wide, as of the last beat (the last known count while Redis is away);
        this node's own count until the first beat."""
        present = self._life.users_present
        return self._model.online_user_count if present is None else present

    # -- rooms (``rooms``) -------------------------------------------------------------------

    @property
    def room_figures(self) -> RoomFigures:
        return self._rooms

    def join(
        self, conn: Connection, room: str, metadata: Mapping[str, Any] | None, now: float
    ) -> None:
        self._rooms.join(conn, room, metadata, now, self._life.phase.writable)

    def room_update(
        self, conn: Connection, room: str, metadata: Mapping[str, Any], now: float
    ) -> None:
        self._rooms.update(conn, room, metadata, now, self._life.phase.writable)

    def leave(self, conn: Connection, room: str, now: float) -> None:
        self._rooms.leave(conn, room, now, self._life.phase.writable)

    def room_page(self, room: str, limit: int, after: str | None) -> defer.Deferred[RoomPage]:
        writable = self._life.phase.writable
        if not writable:
            return defer.fail(RedisUnavailable(self.health_problem() or "redis is down"))
        return self._rooms.page(room, limit, after)

    def _rooms_changed(self, changes: list[Change], now: float) -> None:
        """Off Redis: users whose presence changed as this node sees it, in its rooms."""
        for change in changes:
            self._rooms.user_changed(change.user_id, now)

    def _message(self, name: str, payload: str) -> None:
        if not self._rooms.message(name, payload):
            self._watches.message(name, payload)

    def health_problem(self) -> str | None:
        return self._life.phase.problem(self.link.problem)

    def ready(self) -> defer.Deferred[None]:
        return self._life.first_served()

    # -- service ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._life.start()
        log.info(
            "cluster node {node} on {url}", node=self.store.node, url=self.config.redis.describe()
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self._life.stop()

    def _resync_needed(self) -> None:
        self._life.machine.resync_needed()


def build_cluster_hub(
    model: PresenceModel,
    config: ClusterConfig,
    reactor: Any,
    metrics: ClusterMetrics | None = None,
    max_connections_per_user: int = 0,
    rooms: Rooms | None = None,
    webhooks: WebhookConfig | None = None,
) -> ClusterHub:
    """The hub on a real Redis link; each run of the node gets a fresh incarnation id.
    With ``webhooks`` its scripts add the enabled events to the streams (``webhook_stream``)."""
    node = f"{config.node_name}#{os.urandom(4).hex()}"
    link = RedisLink(
        config.redis,
        reactor,
        reply_timeout=config.reply_timeout,
        max_backoff=config.max_backoff,
    )
    events = NO_WEBHOOKS if webhooks is None else prelude(webhooks.events, webhooks.retain)
    store = Store(link, node, model.offline_grace, config.last_seen_ttl, events)
    return ClusterHub(model, config, reactor, link, store, metrics, max_connections_per_user, rooms)
