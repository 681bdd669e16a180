"""This node in the cluster: registering, staying alive, and what it does in each state of
its link (``machine``), whose actions are the methods of ``Registration``.

Registering. On every connect the node re-registers every live connection (and ends the
ones that closed while Redis was away, with the time and cleanliness they closed with),
then re-reads every watched user. The first time since it started it also ends earlier
runs under its name at once. If Redis came back empty (it lost its data), the node first
waits for the other nodes to re-register theirs, or watchers would see users flap offline
and back. Writes issued once the re-registration is sent reach Redis after it, in order.

Liveness. Each beat renews the node's liveness key (learning whether another node took
it for dead and ended its connections: then it re-registers), sweeps nodes whose key
expired (and learns how many users are present cluster-wide), and PINGs the pub/sub
connection. Every command has a reply deadline (``link``), so a hung Redis is noticed
within it even when no client writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.model import PresenceModel
from .link import RedisLink
from .machine import STOPPED, Inputs, LinkMachine, Phase
from .metrics import ClusterMetrics
from .options import ClusterConfig
from .store import Ended, Live, Store, Sweep, encode_metadata
from .watches import Watches
from .writes import Writes

log = Logger()

LEAVE_TIMEOUT = 2.0


class RoomSync(Protocol):
    """The rooms' part of a registration (``rooms.ClusterRooms``)."""

    def resync(self, now: float) -> defer.Deferred[Any]: ...

    def reread(self) -> defer.Deferred[Any]: ...

    def go_local(self) -> None: ...


class Registration:
    """The machine's core: ``phase`` is always the machine's current state."""

    def __init__(
        self,
        model: PresenceModel,
        config: ClusterConfig,
        clock: IReactorTime,
        link: RedisLink,
        store: Store,
        watches: Watches,
        writes: Writes,
        errors: Callable[[Failure, str], None],
        metrics: ClusterMetrics | None = None,
        rooms: RoomSync | None = None,
    ) -> None:
        self._model = model
        self._rooms = rooms
        self.config = config
        self._clock = clock
        self._link = link
        self._store = store
        self._watches = watches
        self._errors = errors
        self._metrics = metrics
        self._writes = writes
        self.phase: Phase = STOPPED
        self.machine: Inputs = LinkMachine(self)
        self.beat_interval = min(1.0, config.node_timeout / 4)
        self.users_present: int | None = None  # cluster-wide, as of the last sweep
        self._ended: dict[str, tuple[str, float, bool]] = {}  # closed while Redis was away
        self._earlier_runs = config.node_name + "#"  # "": ended already, since this start
        self._round = 0  # one per registration attempt: answers to an older one are stale
        self._retry: IDelayedCall | None = None
        self._peers: IDelayedCall | None = None
        self._beat: LoopingCall | None = None
        self._beating: defer.Deferred[Any] | None = None
        self._stopped: defer.Deferred[None] = defer.Deferred()
        self._served = False  # entered serving once, since this object was made
        self._serving_waiters: list[defer.Deferred[None]] = []
        link.on_lost = self.machine.lost

    # -- the service -----------------------------------------------------------------------

    def start(self) -> None:
        self._stopped = defer.Deferred()
        self._beat = LoopingCall(self.beat)
        self._beat.clock = self._clock
        self._beat.start(self.beat_interval, now=False)
        self.machine.start()

    def stop(self) -> defer.Deferred[None]:
        """Fires once the node left the cluster (or could not) and the link is down."""
        self.machine.stop()
        return self._stopped

    def first_served(self) -> defer.Deferred[None]:
        """Fires once the node first reaches serving (at once if it has)."""
        if self._served:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._serving_waiters.append(d)
        return d

    def note_ended(self, connection_id: str, user_id: str, at: float, clean: bool) -> None:
        """A connection closed while Redis was away: the next registration ends it."""
        self._ended[connection_id] = (user_id, at, clean)

    # -- the machine's actions -------------------------------------------------------------

    def entered(self, phase: Phase) -> None:
        self.phase = phase

    def connect(self) -> None:
        d = self._link.connect()

        def failed(failure: Failure) -> None:
            if self._metrics:
                self._metrics.redis_errors.inc()
            self.machine.lost()

        d.addCallbacks(lambda _: self.machine.connected(), failed)

    def back_off(self) -> None:
        self._retry = self._clock.callLater(self._link.retry_delay(), self.machine.retry)

    def register(self) -> None:
        self._cancel_peers()
        self._round += 1
        current = self._round
        if self._metrics:
            self._metrics.redis_up.set(1)
        now = self._clock.seconds()
        live: list[Live] = []
        for conn in sorted(self._model.all_connections(), key=lambda c: c.metadata_seq):
            metadata = encode_metadata(conn.metadata) if conn.metadata_seq else ""
            live.append((conn.id, conn.user_id, conn.status, metadata))
        live.extend(self._writes.openings())
        ended: list[Ended] = [(cid, u, at, clean) for cid, (u, at, clean) in self._ended.items()]

        @defer.inlineCallbacks
        def run() -> Any:
            empty = yield self._store.resync(now, self.config.node_timeout, live, ended)
            if current != self._round:
                return
            if self._rooms is not None:
                yield self._rooms.resync(now)
                if current != self._round:
                    return
            for connection_id, *_ in ended:
                self._ended.pop(connection_id, None)
            first = bool(self._earlier_runs)
            if first:
                sweep = yield self._store.sweep(now, self._earlier_runs)
                self._earlier_runs = ""
                self._swept(sweep)
                if current != self._round:
                    return
            log.info("registered {count} connections", count=len(live))
            if empty and not first and self._watches.watched():
                self.machine.came_back_empty()
            else:
                self.machine.registered()

        run().addErrback(self._round_failed, current, "re-register")

    def wait_for_peers(self) -> None:
        # Redis lost its data: give the other nodes time to re-register theirs before
        # reading, or watchers would see users flap offline and back.
        log.warn("redis came back empty: waiting for the other nodes to re-register")
        self._watches.hold_all()
        delay = self._link.max_backoff * 1.5 + 0.5
        self._peers = self._clock.callLater(delay, self.machine.peers_waited)

    def read_watches(self) -> None:
        current = self._round

        def done(_: Any) -> None:
            if current == self._round:
                self.machine.resynced()

        reads = [self._watches.reread()]
        if self._rooms is not None:
            reads.append(self._rooms.reread())
        d = defer.gatherResults(reads, consumeErrors=True)
        d.addCallbacks(done, self._round_failed, errbackArgs=(current, "re-read"))

    def serve(self) -> None:
        log.info(
            "serving: {count} connections, watching {watched} users",
            count=self._model.connection_count,
            watched=len(self._watches.watched()),
        )
        self._served = True
        waiters, self._serving_waiters = self._serving_waiters, []
        for d in waiters:
            d.callback(None)

    def go_local(self) -> None:
        """Off Redis: serve from this node's model; tell local watchers what this node
        alone sees of users whose changes Redis never answered (and end its unanswered
        closes on the next registration); count waiting opens here."""
        if self._metrics:
            self._metrics.redis_up.set(0)
            self._metrics.redis_errors.inc()
        self._round += 1
        self._cancel_peers()
        self._watches.settle_locally()
        if self._rooms is not None:
            self._rooms.go_local()
        unanswered = self._writes.take_unanswered()
        self._ended.update(unanswered.closed)
        self._watches.deliver_views(unanswered.users)
        self._writes.open_pending_locally()

    def halt(self) -> None:
        self._round += 1
        for call in (self._retry, self._peers):
            if call is not None and call.active():
                call.cancel()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        self._writes.take_unanswered()  # nothing to deliver, nor to drop the link for
        self._writes.open_pending_locally()

    def leave(self) -> None:
        d = self._store.leave(self._clock.seconds())
        d.addTimeout(LEAVE_TIMEOUT, self._clock)

        def left(count: int) -> None:
            log.info("left the cluster: {count} connections removed", count=count)

        def failed(failure: Failure) -> None:
            log.warn("could not leave the cluster cleanly: {e}", e=failure.getErrorMessage())

        d.addCallbacks(left, failed)
        d.addBoth(lambda _: self.machine.left())

    def disconnect(self) -> None:
        self._link.stop()
        if self._metrics:
            self._metrics.redis_up.set(0)
        if not self._stopped.called:
            self._stopped.callback(None)

    # -- liveness --------------------------------------------------------------------------

    def beat(self) -> None:
        if not self.phase.writable or self._beating is not None:
            return
        now = self._clock.seconds()

        @defer.inlineCallbacks
        def run() -> Any:
            reaped = yield self._store.heartbeat(now, self.config.node_timeout)
            if reaped:
                log.warn("this node's connections were ended by another node: re-registering")
                self.machine.reaped()
            self._swept((yield self._store.sweep(now)))
            yield self._link.ping_subscriber()

        def done(_: Any) -> None:
            self._beating = None

        d = self._beating = run()
        d.addErrback(self._errors, "heartbeat")
        d.addBoth(done)

    def _swept(self, sweep: Sweep) -> None:
        self.users_present = sweep.users_present
        if self._metrics:
            self._metrics.nodes_current.set(sweep.alive)
            self._metrics.node_cleanups.inc(sweep.nodes_ended)
        if sweep.nodes_ended:
            log.info(
                "ended {conns} connections of {nodes} dead nodes",
                conns=sweep.connections_ended,
                nodes=sweep.nodes_ended,
            )

    # -- helpers ---------------------------------------------------------------------------

    def _round_failed(self, failure: Failure, current: int, what: str) -> None:
        if current != self._round:
            return
        self._errors(failure, what)
        self._link.abort(f"{what} failed: {failure.getErrorMessage()}")

    def _cancel_peers(self) -> None:
        if self._peers is not None and self._peers.active():
            self._peers.cancel()
        self._peers = None
