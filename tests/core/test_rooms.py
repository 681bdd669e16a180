"""Rooms, pure: joins, leaves, updates, the grace, limits, batching and list limits."""

from __future__ import annotations

from typing import Any

import pytest

from presence.core import wire
from presence.core.model import Connection
from presence.core.rooms import Member, RoomDiff, RoomRefused, Rooms


class Peer:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: wire.Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


class World:
    """Connections and a status per user, as the model would give them."""

    def __init__(self, **options: Any) -> None:
        self.status: dict[str, str] = {}
        self.rooms = Rooms(lambda user_id: self.status.get(user_id, "online"), **options)
        self.n = 0

    def conn(self, user_id: str) -> Connection:
        self.n += 1
        return Connection(f"c{self.n}", user_id, Peer(), 0)


def one(diffs: list[RoomDiff]) -> RoomDiff:
    assert len(diffs) == 1, diffs
    return diffs[0]


def test_join_answers_the_state_and_tells_the_others_once() -> None:
    w = World()
    a, b = w.conn("alice"), w.conn("bob")
    state, diffs = w.rooms.join(a, "doc:42", {"cursor": 1}, now=0)
    assert state.members == {"alice": Member("online", {"cursor": 1}, 1)}
    assert (state.count, state.complete) == (1, True)
    assert diffs == []  # alone in the room: nobody else to tell
    state, diffs = w.rooms.join(b, "doc:42", None, now=1)
    assert set(state.members) == {"alice", "bob"} and state.members["bob"].metadata == {}
    diff = one(diffs)
    assert diff.joins == {"bob": Member("online", {}, 1)}
    assert diff.leaves == {} and diff.updates == {} and diff.count == 2
    assert diff.recipients == (a.peer,)  # not the joiner: its state holds the join


def test_a_second_tab_is_an_update_and_the_last_leaving_is_a_leave() -> None:
    w = World()
    a, b1, b2 = w.conn("alice"), w.conn("bob"), w.conn("bob")
    w.rooms.join(a, "r", None, 0)
    w.rooms.join(b1, "r", None, 0)
    diff = one(w.rooms.join(b2, "r", None, 1)[1])
    assert diff.updates == {"bob": Member("online", {}, 2)} and diff.joins == {}
    assert set(diff.recipients) == {a.peer, b1.peer}
    diff = one(w.rooms.leave(b1, "r", 2))
    assert diff.updates == {"bob": Member("online", {}, 1)}
    assert set(diff.recipients) == {a.peer, b2.peer}
    diff = one(w.rooms.leave(b2, "r", 3))
    assert diff.leaves == {"bob": 3} and diff.count == 1 and diff.recipients == (a.peer,)
    assert w.rooms.leave(b2, "r", 4) == []  # not in it: a no-op


def test_room_update_and_newest_metadata_of_any_connection() -> None:
    w = World()
    a, b1, b2 = w.conn("alice"), w.conn("bob"), w.conn("bob")
    for c in (a, b1, b2):
        w.rooms.join(c, "r", None, 0)
    assert one(w.rooms.update(b1, "r", {"x": 1}, 1)).updates["bob"].metadata == {"x": 1}
    assert one(w.rooms.update(b2, "r", {"x": 2}, 2)).updates["bob"].metadata == {"x": 2}
    assert w.rooms.update(b2, "r", {"x": 2}, 3) == []  # nothing anyone sees changed
    with pytest.raises(RoomRefused) as e:
        w.rooms.update(a, "other", {}, 4)
    assert e.value.code == "NOT_IN_ROOM"


def test_joining_again_sets_or_keeps_metadata_and_answers_a_fresh_state() -> None:
    w = World()
    a, b = w.conn("alice"), w.conn("bob")
    w.rooms.join(a, "r", {"v": 1}, 0)
    w.rooms.join(b, "r", None, 0)
    state, diffs = w.rooms.join(a, "r", None, 1)
    assert state.members["alice"].metadata == {"v": 1} and diffs == []
    state, diffs = w.rooms.join(a, "r", {"v": 2}, 2)
    assert one(diffs).updates == {"alice": Member("online", {"v": 2}, 1)}
    assert one(diffs).recipients == (b.peer,)


def test_presence_changes_are_updates_in_every_room_of_the_user() -> None:
    w = World()
    a, b = w.conn("alice"), w.conn("bob")
    for room in ("r1", "r2"):
        w.rooms.join(a, room, None, 0)
        w.rooms.join(b, room, None, 0)
    w.status["bob"] = "busy"
    diffs = w.rooms.user_changed("bob", 1)
    assert {d.room for d in diffs} == {"r1", "r2"}
    assert all(d.updates == {"bob": Member("busy", {}, 1)} for d in diffs)


def test_an_abrupt_close_leaves_after_the_grace_and_a_rejoin_is_never_seen_leaving() -> None:
    w = World(offline_grace=10)
    a, b = w.conn("alice"), w.conn("bob")
    w.rooms.join(a, "r", None, 0)
    w.rooms.join(b, "r", {"c": 1}, 0)
    diff = one(w.rooms.closed(b, 5, clean=False))
    assert diff.updates == {"bob": Member("online", {"c": 1}, 0)}  # still a member
    assert w.rooms.expire(14.9) == []
    back = w.conn("bob")
    diff = one(w.rooms.join(back, "r", None, 14.9)[1])
    # the new connection replaces the ended one (and its metadata): never a leave
    assert diff.updates == {"bob": Member("online", {}, 1)} and diff.leaves == {}
    assert w.rooms.expire(100) == []  # the old deadline finds the membership renewed
    diff = one(w.rooms.closed(back, 20, clean=False))
    diff = one(w.rooms.expire(30))
    assert diff.leaves == {"bob": 20}  # when the membership ended, not when it expired


def test_a_clean_close_leaves_every_room_at_once() -> None:
    w = World(offline_grace=10)
    a, b = w.conn("alice"), w.conn("bob")
    for room in ("r1", "r2"):
        w.rooms.join(a, room, None, 0)
        w.rooms.join(b, room, None, 0)
    diffs = w.rooms.closed(b, 3, clean=True)
    assert sorted(d.room for d in diffs) == ["r1", "r2"]
    assert all(d.leaves == {"bob": 3} for d in diffs)
    assert w.rooms.rooms_of("bob") == frozenset()
    w.rooms.closed(a, 4, clean=True)
    assert w.rooms.room_count == 0 and w.rooms.membership_count == 0


def test_limits_refuse_without_joining() -> None:
    w = World(max_rooms_per_connection=2, max_room_members=2)
    a, b, c = w.conn("a"), w.conn("b"), w.conn("c")
    w.rooms.join(a, "r1", None, 0)
    w.rooms.join(a, "r2", None, 0)
    with pytest.raises(RoomRefused) as e:
        w.rooms.join(a, "r3", None, 0)
    assert e.value.code == "TOO_MANY_ROOMS" and w.rooms.rooms_of("a") == {"r1", "r2"}
    w.rooms.join(a, "r1", None, 1)  # already in it: no room more
    w.rooms.join(b, "r1", None, 0)
    with pytest.raises(RoomRefused) as e:
        w.rooms.join(c, "r1", None, 0)
    assert e.value.code == "ROOM_FULL" and "c" not in w.rooms.members("r1")
    w.rooms.join(w.conn("b"), "r1", None, 0)  # already a member: not refused


def test_large_rooms_get_one_net_diff_per_window() -> None:
    w = World(batch_threshold=3, batch_interval=1.0)
    watchers = [w.conn(f"m{i}") for i in range(4)]
    for c in watchers:
        w.rooms.join(c, "big", None, 0)
    w.rooms.expire(0.5)
    diff = one(w.rooms.expire(1.0))  # the fourth member crossed the threshold
    assert set(diff.joins) == {"m3"}
    x, y = w.conn("x"), w.conn("y")
    assert w.rooms.join(x, "big", None, 1.1)[1] == []
    assert w.rooms.join(y, "big", None, 1.2)[1] == []
    w.rooms.leave(x, "big", 1.3)  # joined and left inside the window: in neither list
    w.rooms.leave(watchers[0], "big", 1.4)
    w.rooms.join(w.conn("m0"), "big", None, 1.5)  # left and came back the same: in none
    assert w.rooms.next_flush() == 2.0
    assert w.rooms.expire(1.9) == []
    diff = one(w.rooms.expire(2.0))
    assert diff.joins == {"y": Member("online", {}, 1)}
    assert diff.leaves == {} and diff.updates == {} and diff.count == 5
    assert w.rooms.next_flush() is None


def test_past_the_list_limit_only_the_count_is_told() -> None:
    w = World(list_limit=2, batch_threshold=100)
    conns = [w.conn(f"u{i}") for i in range(3)]
    for c in conns[:2]:
        w.rooms.join(c, "r", None, 0)
    state, diffs = w.rooms.join(conns[2], "r", None, 1)
    assert (len(state.members), state.count, state.complete) == (2, 3, False)
    diff = one(diffs)
    assert (diff.joins, diff.leaves, diff.updates, diff.count) == ({}, {}, {}, 3)
    assert w.rooms.update(conns[0], "r", {"x": 1}, 2) == []  # the count did not change
