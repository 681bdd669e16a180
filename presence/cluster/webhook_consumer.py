"""The delivering side of the webhook streams (``webhook_stream``): exactly one node delivers
each event, a user's events in order and never two at once, across the cluster.

Shards and leases. The events are in ``SHARDS`` streams by a hash of their key. A node
delivers a stream only while it holds its lease (``presence:wh:lease:N``, the node's name
with a TTL of ``--node-timeout``, renewed every beat). Each beat a node takes free leases
up to its fair share (the shards divided by the live nodes, rounded up), starting from its
own offset so nodes spread, and gives up one idle shard (nothing in flight) if it holds
more than its share, so a node that joins gets work without any event of a shard being
sent by two nodes at once.

Reading. All nodes read in one consumer group, ``webhooks``, as their node name. A shard
just taken first becomes this node's whole pending list (XCLAIM of what the previous
holder was given and never acknowledged: the lease is the ownership, so no idle time is
waited), then the node reads its own pending entries from id 0, in stream order, and only
then new ones ('>'). A restarted node under the same ``--node-name`` renews its own
leases and re-reads its pending entries the same way; a dead node's leases expire after
``--node-timeout`` and a survivor takes the shards and their pending entries.

Delivering. Every entry read goes to the delivery (``submit``), which keeps each key's
events in order within the node; when it fires (delivered everywhere, or dropped and
counted there) the entry is acknowledged and deleted, in the next step. At most
``max_inflight`` events are held in memory; the rest waits in Redis.

Redis away: nothing is read, acknowledgements wait, deliveries in flight go on. Back, the
leases the node still holds go on where they were; one it lost (away longer than
``--node-timeout``) is another node's: the node stops reading it. What it still had in
flight of that shard may then be sent twice (with the same ``webhook-id``).

Stop: the delivery is stopped (what was in flight stays pending in Redis), the last
acknowledgements are written and every lease is given up, so another node takes over at
once instead of after ``--node-timeout``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from enum import Enum
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core.webhooks import Event
from .link import RedisLink, RedisUnavailable
from .webhook_stream import SHARDS, Entry, Leases, WebhookStream

log = Logger()

NEW = ">"


class Delivery(Protocol):
    def submit(self, event: Event) -> defer.Deferred[None]: ...

    def stop(self) -> int: ...


class ShardPhase(Enum):
    CLAIMING = "claiming"  # just taken: the previous holder's pending entries become ours
    BACKLOG = "backlog"  # reading our own pending entries, oldest first
    LIVE = "live"  # reading new entries
    GIVING_UP = "giving_up"  # past our fair share and idle: no more reads, released next beat


class Shard:
    __slots__ = ("cursor", "number", "phase")

    def __init__(self, number: int) -> None:
        self.number = number
        self.phase = ShardPhase.CLAIMING
        self.cursor = "0"


class StreamConsumer(Service):
    def __init__(
        self,
        link: RedisLink,
        stream: WebhookStream,
        delivery: Delivery,
        clock: IReactorTime,
        node_timeout: float,
        count_dropped: Callable[[int], None] = lambda n: None,
        interval: float = 0.1,
        max_inflight: int = 1000,
    ) -> None:
        self.link = link
        self.stream = stream
        self.delivery = delivery
        self.clock = clock
        self.node_timeout = node_timeout
        self.count_dropped = count_dropped
        self.interval = interval
        self.lease_interval = min(1.0, node_timeout / 4)
        self.max_inflight = max_inflight
        self.offset = zlib.crc32(stream.consumer.encode()) % SHARDS
        self.shards: dict[int, Shard] = {}
        self.backlog = 0  # events not yet delivered, cluster-wide, as of the last beat
        self.fair_share = SHARDS
        self._sending: set[tuple[int, str]] = set()  # (shard, entry id) in the delivery
        self._acks: list[tuple[int, str]] = []
        self._trimmed: list[tuple[int, str]] = []
        self._next_lease = 0.0
        self._busy = False
        self._loop = LoopingCall(self._step)
        self._loop.clock = clock

    @property
    def inflight(self) -> int:
        return len(self._sending)

    def _idle_shard(self, number: int) -> bool:
        return not any(shard == number for shard, _ in self._sending)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("webhook consumer loop died", f)
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        lost = self.delivery.stop()
        if lost:
            log.info("{n} webhook events in flight stay pending in Redis", n=lost)
        return defer.ensureDeferred(self._leave())

    async def _leave(self) -> None:
        if not self.link.up:
            return
        try:
            await self._flush()
            await self.stream.leases(self.node_timeout, -1, list(self.shards))
        except Exception as e:  # stopping anyway: another node takes over after the TTL
            log.info("webhook leases left to expire: {error}", error=str(e) or repr(e))
        self.shards.clear()

    # -- one step ------------------------------------------------------------------------

    def _step(self) -> None:
        if self._busy or not self.link.up:
            return
        self._busy = True
        d = defer.ensureDeferred(self._run())
        d.addErrback(self._failed)
        d.addBoth(self._idle)

    def _idle(self, _: Any) -> None:
        self._busy = False

    def _failed(self, failure: Failure) -> None:
        if not failure.check(RedisUnavailable):
            log.warn("webhook stream step failed: {error}", error=failure.getErrorMessage())

    async def _run(self) -> None:
        await self._flush()
        now = self.clock.seconds()
        if now >= self._next_lease:
            self._next_lease = now + self.lease_interval
            give_up = [s.number for s in self.shards.values() if s.phase is ShardPhase.GIVING_UP]
            self._held(await self.stream.leases(self.node_timeout, self.offset, give_up))
        for shard in list(self.shards.values()):
            if shard.phase is ShardPhase.CLAIMING:
                await self.stream.claim(shard.number)
                if self.shards.get(shard.number) is shard:
                    shard.phase, shard.cursor = ShardPhase.BACKLOG, "0"
        await self._read()

    async def _flush(self) -> None:
        if self._trimmed:
            trimmed, self._trimmed = self._trimmed, []
            try:
                await self.stream.ack(trimmed, counted=False)
            except Exception:
                self._trimmed[:0] = trimmed
                raise
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                await self.stream.ack(acks)
            except Exception:
                self._acks[:0] = acks
                raise

    def _held(self, leases: Leases) -> None:
        self.backlog = leases.backlog
        if leases.dropped:
            self.count_dropped(leases.dropped)
        for number in list(self.shards):
            if number not in leases.held:
                shard = self.shards.pop(number)
                if shard.phase is not ShardPhase.GIVING_UP:
                    log.warn("webhook shard {n} was taken over by another node", n=number)
        for number in sorted(leases.held - self.shards.keys()):
            self.shards[number] = Shard(number)
        self.fair_share = -(-SHARDS // max(1, leases.nodes))
        if len(self.shards) > self.fair_share:
            for shard in self.shards.values():
                if shard.phase is ShardPhase.LIVE and self._idle_shard(shard.number):
                    shard.phase = ShardPhase.GIVING_UP  # one a beat: released next beat
                    break

    async def _read(self) -> None:
        readable = {
            s.number: s.cursor
            for s in self.shards.values()
            if s.phase in (ShardPhase.BACKLOG, ShardPhase.LIVE)
        }
        room = self.max_inflight - self.inflight
        if not readable or room <= 0:
            return
        entries = await self.stream.read(max(1, room // len(readable)), readable)
        seen: set[int] = set()
        for entry in entries:
            seen.add(entry.shard)
            self._take(entry)
        for number, cursor in readable.items():
            shard = self.shards.get(number)
            if shard is not None and cursor != NEW and number not in seen:
                shard.phase, shard.cursor = ShardPhase.LIVE, NEW  # own pending all read

    def _take(self, entry: Entry) -> None:
        shard = self.shards.get(entry.shard)
        if shard is None:
            return
        if shard.phase is ShardPhase.BACKLOG:
            shard.cursor = entry.id
        if entry.event is None:
            self._trimmed.append((entry.shard, entry.id))  # counted as dropped when trimmed
            return
        key = (entry.shard, entry.id)
        if key in self._sending:
            return  # already being delivered (read again after the lease came back)
        self._sending.add(key)
        self.delivery.submit(entry.event).addBoth(self._done, key)

    def _done(self, result: Any, key: tuple[int, str]) -> None:
        self._sending.discard(key)
        if isinstance(result, Failure):
            log.warn("webhook {id} failed: {error}", id=key[1], error=result.getErrorMessage())
        self._acks.append(key)


def stream_consumer(
    link: RedisLink,
    node_name: str,
    node_timeout: float,
    delivery: Delivery,
    clock: IReactorTime,
    count_dropped: Callable[[int], None],
) -> StreamConsumer:
    """The node's consumer, named as the node (stable across restarts, unlike its
    incarnation), so a restarted node finds its own pending entries."""
    stream = WebhookStream(link, node_name)
    return StreamConsumer(link, stream, delivery, clock, node_timeout, count_dropped)
