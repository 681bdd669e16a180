"""RoomReplica, pure: a room as one node knows it tells its connections what ``Rooms``
would (the same flush), from members applied one change at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core import wire
from presence.core.model import Connection
from presence.core.replica import RoomReplica
from presence.core.rooms import Member, RoomDiff, Rooms


class Peer:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: wire.Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


M = Member("online", {}, 1)


def seen(diffs: list[RoomDiff]) -> list[tuple[object, ...]]:
    return [(d.joins, d.leaves, d.updates, d.count, len(d.recipients)) for d in diffs]


def test_a_small_room_is_told_at_once_and_skips_the_joiner() -> None:
    r = RoomReplica("r")
    r.peers = {"c1": Peer(), "c2": Peer()}
    diffs = r.apply("alice", M, 1.0, 1.0, skip="c1")
    assert seen(diffs) == [({"alice": M}, {}, {}, 1, 1)]
    assert r.apply("alice", M, 2.0, 2.0) == []  # nothing visible changed
    diffs = r.apply("alice", None, 3.0, 3.0)
    assert seen(diffs) == [({}, {"alice": 3.0}, {}, 0, 2)]


def test_a_forced_update_is_sent_even_when_the_member_looks_the_same() -> None:
    r = RoomReplica("r")
    r.peers = {"c1": Peer()}
    r.apply("alice", M, 1.0, 1.0)
    assert seen(r.apply("alice", M, 2.0, 2.0, force=True)) == [({}, {}, {"alice": M}, 1, 1)]


def test_a_large_room_is_told_once_per_window_with_the_net_change() -> None:
    r = RoomReplica("r", batch_threshold=2, batch_interval=1.0)
    r.peers = {"c": Peer()}
    r.adopt({u: M for u in ("a", "b", "c")}, 7)
    assert r.version == 7
    assert seen(r.apply("d", M, 10.0, 10.0)) == [({"d": M}, {}, {}, 4, 1)]  # window open
    assert r.apply("e", M, 10.2, 10.2) == []
    assert r.apply("f", M, 10.3, 10.3) == []
    assert r.apply("f", None, 10.4, 10.4) == []  # joined and left: in neither
    assert r.flush_at == 11.0
    assert r.due(10.9) == []
    assert seen(r.due(11.0)) == [({"e": M}, {}, {}, 5, 1)]
    assert r.due(12.0) == []


def test_past_the_list_limit_only_the_count_is_sent() -> None:
    r = RoomReplica("r", list_limit=2)
    r.peers = {"c": Peer()}
    r.adopt({"a": M, "b": M}, 1)
    assert seen(r.apply("c", M, 1.0, 1.0)) == [({}, {}, {}, 3, 1)]
    assert r.state().complete is False and r.state().count == 3
    assert len(r.state().members) == 2
    assert r.apply("c", Member("busy", {}, 1), 2.0, 2.0) == []  # the count did not change


def test_a_reset_tells_only_what_differs_from_what_was_told() -> None:
    r = RoomReplica("r")
    r.peers = {"c": Peer()}
    r.adopt({"a": M, "b": M}, 1)
    busy = Member("busy", {}, 2)
    diffs = r.reset({"a": M, "b": busy, "c": M}, 5.0)
    assert seen(diffs) == [({"c": M}, {}, {"b": busy}, 3, 1)]
    assert seen(r.reset({"a": M}, 6.0)) == [({}, {"b": 6.0, "c": 6.0}, {}, 1, 1)]
    assert r.reset({"a": M}, 7.0) == []


Op = tuple[str, int, int]  # kind, user, metadata value


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["join", "update", "leave", "tick"]),
            st.integers(0, 4),
            st.integers(0, 2),
        ),
        max_size=40,
    ),
    st.integers(0, 3),
    st.sampled_from([1, 2, 1000]),
)
def test_the_replica_tells_what_rooms_tells(ops: list[Op], threshold: int, limit: int) -> None:
    """Feed the replica each change of ``Rooms``'s members (and the user each step touched):
    every diff is the same, and the listing it keeps for ROOM_STATE is the one it would
    make from scratch."""
    rooms = Rooms(
        lambda u: "online", batch_threshold=threshold, batch_interval=1.0, list_limit=limit
    )
    replica = RoomReplica("r", batch_threshold=threshold, batch_interval=1.0, list_limit=limit)
    watcher = Connection("w", "watcher", Peer(), 0)
    rooms.join(watcher, "r", None, 0.0)
    replica.adopt(rooms.members("r"), 1)
    replica.peers = {"w": watcher.peer}
    conns: dict[int, Connection] = {}
    now = 1.0  # the watcher's join opened a window in Rooms until 1.0
    for kind, user, value in ops:
        now += 0.25
        conn = conns.setdefault(user, Connection(f"c{user}", f"u{user}", Peer(), 0))
        before = rooms.members("r")
        acts = kind == "join" or (kind != "tick" and bool(conn.rooms and "r" in conn.rooms))
        if kind == "join":
            _, expected = rooms.join(conn, "r", {"v": value}, now)
            # the joiner is not a peer of the replica: only the watcher is compared
            expected = [d for d in expected if watcher.peer in d.recipients]
        elif kind == "update":
            expected = rooms.update(conn, "r", {"v": value}, now) if acts else []
        elif kind == "leave":
            expected = rooms.leave(conn, "r", now)
        else:
            expected = rooms.expire(now)
        after = rooms.members("r")
        got: list[RoomDiff] = []
        touched = {f"u{user}"} if acts else set()
        for u in sorted({*before, *after}):
            if before.get(u) != after.get(u) or u in touched:
                got += replica.apply(u, after.get(u), now, now)
        if kind == "tick":
            got += replica.due(now)
        assert [(d.joins, d.leaves, d.updates, d.count) for d in got] == [
            (d.joins, d.leaves, d.updates, d.count) for d in expected
        ]
        kept = replica.state()
        replica._listed = None
        fresh = replica.state()
        assert kept == fresh and len(kept.members) == min(limit, kept.count)
        assert wire.encode({"m": kept.members_json}) == wire.encode({"m": fresh.members_json})
