"""The delivering side against a real redis-server, on a task.Clock: shard leases (one
owner, takeover after expiry), pending entries delivered again after a takeover or a
restart, each key in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from twisted.internet import defer, task

from presence.cluster.link import RedisUnavailable
from presence.cluster.store import load_script
from presence.cluster.webhook_consumer import StreamConsumer
from presence.cluster.webhook_stream import SHARDS, WebhookStream, prelude
from presence.core.webhooks import EVENT_TYPES, Event
from tests.cluster.test_webhook_emission import next_millisecond
from tests.support.redis_fixture import RedisServer, Resp, needs_redis

pytestmark = needs_redis

TTL = 3600
TIMEOUT = 2.0


class SyncLink:
    """The link's eval over a blocking client: answered at once (or down)."""

    def __init__(self, port: int) -> None:
        self.r = Resp(port)
        self.up = True

    def eval(self, script: str, args: Sequence[Any]) -> defer.Deferred[Any]:
        if not self.up:
            return defer.fail(RedisUnavailable("down"))
        try:
            return defer.succeed(self.r.call("EVAL", script, 0, *args))
        except RuntimeError as e:
            return defer.fail(e)


class Delivery:
    """Holds every submitted event until the test says it was delivered."""

    def __init__(self) -> None:
        self.got: list[tuple[Event, defer.Deferred[None]]] = []
        self.stopped = False

    def submit(self, event: Event) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.got.append((event, d))
        return d

    def stop(self) -> int:
        self.stopped = True
        return sum(1 for _, d in self.got if not d.called)

    def deliver_all(self) -> list[str]:
        ids = []
        for event, d in self.got:
            if not d.called:
                ids.append(event.id)
                d.callback(None)
        return ids

    def ids(self) -> list[str]:
        return [e.id for e, _ in self.got]


class Node:
    def __init__(self, port: int, name: str, clock: task.Clock) -> None:
        self.link = SyncLink(port)
        self.delivery = Delivery()
        self.dropped: list[int] = []
        self.consumer = StreamConsumer(
            self.link,  # type: ignore[arg-type]
            WebhookStream(self.link, name),
            self.delivery,
            clock,
            TIMEOUT,
            self.dropped.append,
        )


class World:
    def __init__(self, port: int) -> None:
        self.port = port
        self.clock = task.Clock()
        self.r = Resp(port)
        self.prelude = prelude(EVENT_TYPES, 100000)
        self.nodes: dict[str, Node] = {}
        self.t = 1000.0

    def node(self, name: str) -> Node:
        node = self.nodes[name] = Node(self.port, name, self.clock)
        self.r.call("HSET", "presence:nodes", name, "1")
        node.consumer.startService()
        return node

    def run(self, seconds: float) -> None:
        for _ in range(int(seconds / 0.1)):
            self.clock.advance(0.1)

    def lua(self, name: str, *args: Any) -> Any:
        return self.r.call("EVAL", load_script(name, self.prelude), 0, *args)

    def flap(self, uid: str, times: int) -> None:
        """A user comes and goes: online, offline, ... (one node decides, any node)."""
        for _ in range(times):
            self.t += 1
            self.lua("open", "X", f"c{self.t}", uid, f"{self.t:.3f}", TTL)
            self.t += 1
            self.lua("close", "X", f"c{self.t - 1}", uid, f"{self.t:.3f}", 1, 30, TTL)

    def leases(self) -> dict[int, str]:
        out = {}
        for s in range(SHARDS):
            holder = self.r.call("GET", f"presence:wh:lease:{s}")
            if holder:
                out[s] = holder
        return out

    def expire_leases(self, name: str) -> None:
        """Their TTL (--node-timeout, on Redis's own clock) passed."""
        for shard, holder in self.leases().items():
            if holder == name:
                self.r.call("DEL", f"presence:wh:lease:{shard}")

    def backlog(self) -> int:
        return sum(int(self.r.call("XLEN", f"presence:wh:{s}")) for s in range(SHARDS))


@pytest.fixture
def world(redis_server: RedisServer) -> Iterator[World]:
    yield World(redis_server.port)


def kinds(events: list[Event], key: str) -> list[str]:
    return [e.type for e in events if e.key == key]


def test_one_node_takes_every_shard_delivers_in_order_and_deletes(world: World) -> None:
    a = world.node("a")
    world.run(0.3)
    assert set(world.leases().values()) == {"a"} and len(world.leases()) == SHARDS
    world.flap("u", 3)
    world.flap("v", 2)
    world.run(0.3)
    events = [e for e, _ in a.delivery.got]
    assert kinds(events, "u:u") == ["user.online", "user.offline"] * 3
    assert kinds(events, "u:v") == ["user.online", "user.offline"] * 2
    assert world.backlog() == 10
    a.delivery.deliver_all()
    world.run(1.1)
    assert world.backlog() == 0 and a.consumer.backlog == 0
    assert len(a.delivery.got) == 10  # nothing twice


def test_shards_spread_and_each_has_one_holder(world: World) -> None:
    a = world.node("a")
    world.run(0.3)
    b = world.node("b")
    world.run(20)  # a gives up one idle shard a beat until both hold their share
    held = world.leases()
    assert len(held) == SHARDS
    assert sorted(held.values()).count("a") == 8 and len(b.consumer.shards) == 8
    assert set(a.consumer.shards) == {s for s, n in held.items() if n == "a"}
    assert not set(a.consumer.shards) & set(b.consumer.shards)


def test_a_dead_holders_pending_events_go_to_a_survivor_first_and_in_order(
    world: World,
) -> None:
    a = world.node("a")
    world.run(0.3)
    b = world.node("b")  # holds nothing yet: a holds every shard and is busy
    world.flap("u", 2)
    world.run(0.3)
    assert len(a.delivery.got) == 4 and b.delivery.got == []
    a.delivery.got[0][1].callback(None)  # one delivered and acknowledged
    world.run(0.3)
    a.consumer._loop.stop()  # a dies (kill -9): no more beats, nothing acknowledged
    world.r.call("HDEL", "presence:nodes", "a")
    world.flap("u", 1)  # and more happen meanwhile
    world.run(TIMEOUT)
    assert set(world.leases().values()) == {"a"}  # not yet expired: b waits
    assert b.delivery.got == []
    world.expire_leases("a")
    world.run(1.1)  # b takes them
    assert set(world.leases().values()) == {"b"}
    got = [e for e, _ in b.delivery.got]
    first = a.delivery.got[0][0]
    assert [e.id for e in got[:3]] == [e.id for e, _ in a.delivery.got[1:]]  # pending first
    assert first.id not in [e.id for e in got]
    flaps = ["user.online", "user.offline"]
    assert kinds(got, "u:u") == ["user.offline", *flaps, *flaps]
    b.delivery.deliver_all()
    world.run(0.3)
    assert world.backlog() == 0


def test_a_restart_under_the_same_name_redelivers_its_pending_before_new_ones(
    world: World,
) -> None:
    a = world.node("a")
    world.run(0.3)
    world.flap("u", 2)
    world.run(0.3)
    old = a.delivery.ids()
    assert len(old) == 4
    a.consumer._loop.stop()  # the process dies; restarted at once under its name
    a2 = world.node("a")
    world.flap("u", 1)
    world.run(0.5)
    assert a2.delivery.ids()[:4] == old  # its own pending entries, first, in order
    assert kinds([e for e, _ in a2.delivery.got], "u:u")[4:] == ["user.online", "user.offline"]


def test_a_clean_stop_gives_the_shards_up_at_once(world: World) -> None:
    a = world.node("a")
    world.run(0.3)
    b = world.node("b")
    world.flap("u", 1)
    world.run(0.3)
    assert len(a.delivery.got) == 2
    a.consumer.stopService()
    assert a.delivery.stopped and world.leases() == {}
    world.r.call("HDEL", "presence:nodes", "a")
    world.run(1.1)  # no --node-timeout to wait
    assert [e.id for e, _ in b.delivery.got] == a.delivery.ids()


def test_redis_away_then_back_goes_on_without_duplicates(world: World) -> None:
    a = world.node("a")
    world.run(0.3)
    world.flap("u", 1)
    world.run(0.3)
    assert len(a.delivery.got) == 2
    a.link.up = False
    a.delivery.deliver_all()  # delivered while Redis is away: acknowledged later
    world.run(1.0)
    a.link.up = True
    world.flap("u", 1)
    world.run(0.5)
    assert len(a.delivery.got) == 4
    a.delivery.deliver_all()
    world.run(0.3)
    assert world.backlog() == 0


def test_dropped_by_the_cap_is_counted_by_one_node(world: World) -> None:
    world.prelude = prelude(EVENT_TYPES, 2)
    a = world.node("a")
    b = world.node("b")
    world.flap("u", 2)  # 4 events, 2 kept
    world.run(1.5)
    assert sum(a.dropped) + sum(b.dropped) == 2


def test_redis_losing_its_data_loses_the_events_but_the_node_goes_on(world: World) -> None:
    a = world.node("a")
    world.run(0.3)
    world.flap("u", 1)
    world.run(0.3)
    world.r.call("FLUSHALL")
    world.r.call("HSET", "presence:nodes", "a", "1")
    a.delivery.deliver_all()  # their acknowledgements find nothing: no harm
    world.run(1.1)
    assert len(world.leases()) == SHARDS
    world.flap("v", 1)
    world.run(0.3)
    assert kinds([e for e, _ in a.delivery.got], "u:v") == ["user.online", "user.offline"]


def test_an_event_trimmed_while_being_sent_counts_as_its_delivery_ends(world: World) -> None:
    world.prelude = prelude(EVENT_TYPES, 2)
    a = world.node("a")
    world.run(0.3)
    world.flap("u", 1)
    world.run(0.3)
    sending = a.delivery.ids()
    assert len(sending) == 2
    next_millisecond(world.r)  # v's entry ids are younger than u's in every stream
    world.flap("v", 1)  # the cap pushes out u's two, which a is sending
    assert int(world.r.call("GET", "presence:wh:dropped")) == 2
    assert a.delivery.deliver_all()[:2] == sending  # they went out after all
    world.run(1.5)
    assert sum(a.dropped) == 0  # so they are not counted as dropped
    assert kinds([e for e, _ in a.delivery.got], "u:v") == ["user.online", "user.offline"]


def test_pending_events_trimmed_before_a_restart_are_skipped(world: World) -> None:
    world.prelude = prelude(EVENT_TYPES, 2)
    a = world.node("a")
    world.run(0.3)
    world.flap("u", 1)
    world.run(0.3)
    old = a.delivery.ids()
    a.consumer._loop.stop()  # dies with u's two pending
    next_millisecond(world.r)  # v's entry ids are younger than u's in every stream
    world.flap("v", 1)  # and the cap drops them
    a2 = world.node("a")
    world.run(1.5)
    assert not set(old) & set(a2.delivery.ids())  # gone: counted as dropped, not sent
    assert kinds([e for e, _ in a2.delivery.got], "u:v") == ["user.online", "user.offline"]
    assert sum(a.dropped) + sum(a2.dropped) == 2
    pending = world.r.call(
        "XPENDING", f"presence:wh:{a2.delivery.got[0][0].id.split('_')[1]}", "webhooks"
    )
    assert pending[0] == 2  # only v's, in flight
