"""The node's side of rooms on fakes: the order a room's stream is told in (the snapshot
after SUBSCRIBE, buffered changes newer than it, older ones dropped), the joiner's
ROOM_STATE once the replica holds its join, local room presence while Redis is away and
one net diff after the re-read. The room scripts are answered by the test."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from presence.cluster.room_store import FULL, RoomSnapshot, room_channel
from presence.cluster.rooms import ClusterRooms
from presence.core.model import Connection
from presence.core.rooms import Member, Rooms
from tests.cluster.fakes import FakeLink, Peer, make_node, opened


class Store:
    """The room scripts: every call waits for the test's answer."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], defer.Deferred[Any]]] = []

    def _call(self, name: str, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((name, args, d))
        return d

    def take(self, name: str) -> tuple[tuple[Any, ...], defer.Deferred[Any]]:
        for i, (n, args, d) in enumerate(self.calls):
            if n == name:
                del self.calls[i]
                return args, d
        raise AssertionError(f"no {name} call in {[c[0] for c in self.calls]}")

    def join(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("join", *args)

    def update(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("update", *args)

    def leave(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("leave", *args)

    def close(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("close", *args)

    def expire(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("expire", *args)

    def snapshot(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("snapshot", *args)

    def resync(self, *args: Any) -> defer.Deferred[Any]:
        return self._call("resync", *args)


M = Member("online", {}, 1)


def msg(version: int, user_id: str, member: Member | None, origin: str = "") -> str:
    if member is None:
        return f"{version}\n{origin}\n{user_id}\nl\noffline\n0\n5.000\n{{}}"
    return f"{version}\n{origin}\n{user_id}\nm\n{member.status}\n{member.connections}\n\n{{}}"


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.link = FakeLink()
        self.link.up = True
        self.store = Store()
        self.local = Rooms(lambda u: "online", 0.0)
        self.conns: dict[str, Connection] = {}
        self.rooms = ClusterRooms(
            self.local,
            self.link,
            self.store,  # type: ignore[arg-type]
            self.clock,
            lambda failure, what: None,
            lambda: list(self.conns.values()),
        )

    def conn(self, cid: str, user_id: str) -> tuple[Connection, Peer]:
        peer = Peer()
        conn = self.conns[cid] = Connection(cid, user_id, peer, 100)
        return conn, peer

    def publish(self, room: str, payload: str) -> None:
        assert self.rooms.message(room_channel(room), payload)


def kinds(peer: Peer) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for m in peer.got:
        if m["type"] == "ROOM_STATE":
            out.append(("STATE", *sorted(m["members"]), m["count"]))
        elif m["type"] == "ROOM_DIFF":
            out.append(("DIFF", sorted(m["joins"]), sorted(m["leaves"]), sorted(m["updates"])))
        else:
            out.append((m["type"], m.get("code")))
    peer.got = []
    return out


def test_a_new_room_subscribes_then_joins_then_reads_and_orders_its_stream() -> None:
    w = World()
    alice, peer = w.conn("c1", "alice")
    w.rooms.join(alice, "r", None, 100.0, remote=True)
    assert w.link.subscribes[-1][0] == [room_channel("r")]
    _, joined = w.store.take("join")  # sent once subscribed, before the snapshot
    _, snapshot = w.store.take("snapshot")
    w.publish("r", msg(6, "bob", M))  # arrives before the snapshot: buffered
    w.publish("r", msg(7, "alice", M, origin="c1"))
    joined.callback((1, 7))
    assert kinds(peer) == []  # the replica does not hold the join yet
    snapshot.callback(RoomSnapshot(6, {"bob": M, "carol": M}))  # bob's join is in it
    assert kinds(peer) == [("STATE", "alice", "bob", "carol", 3)]  # no diff of its own join
    w.publish("r", msg(5, "dave", M))  # older than what the replica holds: dropped
    w.publish("r", msg(8, "carol", None))
    assert kinds(peer) == [("DIFF", [], ["carol"], [])]


def test_a_joiner_waits_for_the_replica_to_hold_its_join() -> None:
    w = World()
    alice, a_peer = w.conn("c1", "alice")
    w.rooms.join(alice, "r", None, 100.0, remote=True)
    w.store.take("join")[1].callback((1, 1))
    w.store.take("snapshot")[1].callback(RoomSnapshot(1, {"alice": M}))
    assert kinds(a_peer) == [("STATE", "alice", 1)]
    bob, b_peer = w.conn("c2", "bob")
    w.rooms.join(bob, "r", None, 100.0, remote=True)
    w.store.take("join")[1].callback((1, 3))  # answered before its message arrives
    w.publish("r", msg(2, "carol", M))
    assert kinds(b_peer) == []
    w.publish("r", msg(3, "bob", M, origin="c2"))
    assert kinds(b_peer) == [("STATE", "alice", "bob", "carol", 3)]
    assert kinds(a_peer) == [("DIFF", ["carol"], [], []), ("DIFF", ["bob"], [], [])]


def test_a_full_room_refuses_and_nothing_is_joined() -> None:
    w = World()
    alice, peer = w.conn("c1", "alice")
    w.rooms.join(alice, "r", None, 100.0, remote=True)
    w.store.take("join")[1].callback((FULL, 4))
    assert kinds(peer) == [("ERROR", "ROOM_FULL")]
    assert not alice.rooms
    assert w.link.unsubscribed == [room_channel("r")]


def test_off_redis_the_room_is_this_nodes_then_one_net_diff_after_the_reread() -> None:
    w = World()
    alice, a_peer = w.conn("c1", "alice")
    w.rooms.join(alice, "r", None, 100.0, remote=True)
    w.store.take("join")[1].callback((1, 2))
    w.store.take("snapshot")[1].callback(RoomSnapshot(2, {"alice": M, "bob": M}))
    kinds(a_peer)

    w.rooms.go_local()
    lou, l_peer = w.conn("c2", "lou")
    w.rooms.join(lou, "r", {"x": 1}, 101.0, remote=False)  # answered at once, locally
    assert kinds(l_peer) == [("STATE", "alice", "bob", "lou", 3)]  # bob: as last known
    assert kinds(a_peer) == [("DIFF", ["lou"], [], [])]
    w.rooms.leave(alice, "r", 102.0, remote=False)
    assert kinds(l_peer) == [("DIFF", [], ["alice"], [])]

    d = w.rooms.resync(103.0)
    (_, live, ended), answer = w.store.take("resync")
    assert live == [("c2", "lou", "r", '{"x":1}')]
    assert ended == [("r", "c1", 102.0, True)]
    answer.callback(1)
    assert d.called
    w.rooms.reread()
    w.store.take("snapshot")[1].callback(RoomSnapshot(9, {"lou": Member("online", {"x": 1}, 1)}))
    assert kinds(l_peer) == [("DIFF", [], ["bob"], [])]  # only what differs from what it was told
    w.publish("r", msg(9, "zed", M))  # in the snapshot already
    assert kinds(l_peer) == []


def test_a_join_sent_between_the_registration_and_the_reread_goes_out_with_the_reread() -> None:
    w = World()
    lou, l_peer = w.conn("c1", "lou")
    w.rooms.go_local()
    w.rooms.join(lou, "r", None, 100.0, remote=False)
    kinds(l_peer)
    alice, a_peer = w.conn("c2", "alice")
    w.rooms.join(alice, "r", None, 101.0, remote=True)  # registered, not re-read yet
    assert [c[0] for c in w.store.calls] == []
    w.rooms.reread()
    _, joined = w.store.take("join")
    _, snapshot = w.store.take("snapshot")
    joined.callback((1, 4))
    snapshot.callback(RoomSnapshot(4, {"lou": M, "alice": M}))
    assert kinds(a_peer) == [("STATE", "alice", "lou", 2)]
    assert kinds(l_peer) == [("DIFF", ["alice"], [], [])]


def test_the_hub_writes_rooms_to_redis_while_serving_and_serves_them_locally_when_away() -> None:
    node = make_node()
    alice = opened(node.hub.open("c1", "alice", Peer(), 0))  # the fake store answers at once
    node.hub.join(alice, "r", {"x": 1}, 1.0)
    assert node.link.subscribes[-1][0] == [room_channel("r")]
    assert node.link.evals[-1][:4] == ["n#test", "c1", "alice", "r"]  # room_join.lua's ARGV

    node.link.lose()
    assert node.hub.phase == "away"
    assert isinstance(opened(node.hub.room_page("r", 10, None)), Failure)
    bob = opened(node.hub.open("c2", "bob", Peer(), 2.0))
    peer = bob.peer
    assert isinstance(peer, Peer)
    node.hub.join(bob, "r", None, 2.0)
    state = peer.got[-1]
    assert state["type"] == "ROOM_STATE"
    assert sorted(state["members"]) == ["alice", "bob"]  # this node's own view
