"""The Python client's state reducer: plain values in, changes out, no sockets."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from presence_client.state import (
    ErrorChange,
    Member,
    PresenceState,
    Room,
    RoomChange,
    User,
    UserChange,
)


def view(status: str = "online", connections: int = 1, **metadata: Any) -> dict[str, Any]:
    return {"status": status, "metadata": metadata, "lastSeen": None, "connections": connections}


def member(status: str = "online", connections: int = 1, **metadata: Any) -> dict[str, Any]:
    return {"status": status, "metadata": metadata, "connections": connections}


def test_presence_state_then_diffs_in_order() -> None:
    state = PresenceState()
    changes = state.apply(
        {"type": "PRESENCE_STATE", "users": {"alice": view(), "bob": view("offline", 0)}}
    )
    assert [c.user_id for c in changes if isinstance(c, UserChange)] == ["alice", "bob"]
    assert all(isinstance(c, UserChange) and c.previous is None for c in changes)
    diff = {"type": "PRESENCE_DIFF", "userId": "alice", **view("busy", 2, doc=1)}
    (change,) = state.apply(diff)
    assert change == UserChange(
        "alice", User("busy", {"doc": 1}, None, 2), User("online", {}, None, 1)
    )
    offline = {"type": "PRESENCE_DIFF", "userId": "alice", **view("offline", 0)}
    offline["lastSeen"] = "2026-01-01T12:00:00.000Z"
    state.apply(offline)
    assert state.users["alice"] == User("offline", {}, "2026-01-01T12:00:00.000Z", 0)


def test_a_state_that_changes_nothing_is_no_change() -> None:
    """After a reconnect the fresh PRESENCE_STATE repeats what was known: nothing to tell."""
    state = PresenceState()
    state.apply({"type": "PRESENCE_STATE", "users": {"alice": view("away")}})
    assert state.apply({"type": "PRESENCE_STATE", "users": {"alice": view("away")}}) == []
    (change,) = state.apply({"type": "PRESENCE_STATE", "users": {"alice": view("busy")}})
    assert isinstance(change, UserChange) and change.previous == User("away", {}, None, 1)


def test_room_state_and_diffs() -> None:
    state = PresenceState()
    (first,) = state.apply(
        {"type": "ROOM_STATE", "room": "doc:42", "members": {"ops": member()}, "count": 1}
    )
    assert isinstance(first, RoomChange) and first.snapshot
    assert first.joins == {"ops": Member("online", {}, 1)} and first.count == 1
    state.apply(
        {
            "type": "ROOM_DIFF",
            "room": "doc:42",
            "joins": {"alice": member(cursor=3)},
            "leaves": {},
            "updates": {},
            "count": 2,
        }
    )
    (change,) = state.apply(
        {
            "type": "ROOM_DIFF",
            "room": "doc:42",
            "joins": {},
            "leaves": {"ops": {"lastSeen": "2026-01-01T12:00:00.000Z"}},
            "updates": {"alice": member("away", cursor=4)},
            "count": 1,
        }
    )
    assert isinstance(change, RoomChange) and not change.snapshot
    assert change.leaves == {"ops": "2026-01-01T12:00:00.000Z"}
    assert state.rooms["doc:42"] == Room(
        "doc:42", {"alice": Member("away", {"cursor": 4}, 1)}, 1, True
    )


def test_a_fresh_room_state_is_told_as_what_differs() -> None:
    """ROOM_STATE after a reconnect replaces the room; the change says who came and went."""
    state = PresenceState()
    members = {"ops": member(), "bob": member()}
    state.apply({"type": "ROOM_STATE", "room": "r", "members": members, "count": 2})
    fresh = {"ops": member(), "alice": member(), "bob": member("busy")}
    (change,) = state.apply({"type": "ROOM_STATE", "room": "r", "members": fresh, "count": 3})
    assert isinstance(change, RoomChange) and change.snapshot
    assert list(change.joins) == ["alice"] and list(change.updates) == ["bob"]
    assert change.leaves == {}
    assert state.apply({"type": "ROOM_STATE", "room": "r", "members": fresh, "count": 3}) == []


def test_large_rooms_carry_only_the_count() -> None:
    state = PresenceState()
    state.apply(
        {"type": "ROOM_STATE", "room": "big", "members": {}, "count": 5000, "complete": False}
    )
    empty = {"joins": {}, "leaves": {}, "updates": {}}
    state.apply({"type": "ROOM_DIFF", "room": "big", **empty, "count": 5003})
    assert state.rooms["big"] == Room("big", {}, 5003, complete=False)


def test_diffs_of_rooms_not_joined_and_other_messages_are_ignored() -> None:
    state = PresenceState()
    empty = {"joins": {}, "leaves": {}, "updates": {}}
    assert state.apply({"type": "ROOM_DIFF", "room": "gone", **empty, "count": 1}) == []
    assert state.apply({"type": "HEARTBEAT_ACK", "timestamp": "x"}) == []
    assert state.apply({"type": "PRESENCE_DIFF", "userId": 7}) == []
    assert state.apply({"type": "ERROR", "code": "FORBIDDEN", "message": "no"}) == [
        ErrorChange("FORBIDDEN", "no")
    ]
    assert state.rooms == {} and state.users == {}


def test_forgetting() -> None:
    state = PresenceState()
    state.apply({"type": "PRESENCE_STATE", "users": {"a": view(), "b": view()}})
    state.apply({"type": "ROOM_STATE", "room": "r", "members": {}, "count": 0})
    state.forget_users(["a", "zzz"])
    state.forget_room("r")
    assert list(state.users) == ["b"] and state.rooms == {}


ids = st.sampled_from(["a", "b", "c", "d"])
statuses = st.sampled_from(["online", "away", "busy"])
entries = st.fixed_dictionaries(
    {"status": statuses, "metadata": st.fixed_dictionaries({"n": st.integers(0, 3)}),
     "connections": st.integers(1, 3)}
)  # fmt: skip


@st.composite
def diff_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A stream of diffs that a server could send: each user in at most one list."""
    members: set[str] = set()
    stream = []
    for _ in range(draw(st.integers(0, 12))):
        joins, leaves, updates = {}, {}, {}
        for user_id in draw(st.sets(ids)):
            if user_id in members:
                if draw(st.booleans()):
                    leaves[user_id] = {"lastSeen": "2026-01-01T00:00:00.000Z"}
                    members.discard(user_id)
                else:
                    updates[user_id] = draw(entries)
            else:
                joins[user_id] = draw(entries)
                members.add(user_id)
        stream.append(
            {
                "type": "ROOM_DIFF",
                "room": "r",
                "joins": joins,
                "leaves": leaves,
                "updates": updates,
                "count": len(members),
            }
        )
    return stream


@given(diff_streams())
def test_room_diffs_equal_replaying_them_by_hand(stream: list[dict[str, Any]]) -> None:
    state = PresenceState()
    state.apply({"type": "ROOM_STATE", "room": "r", "members": {}, "count": 0})
    reference: dict[str, dict[str, Any]] = {}
    for diff in stream:
        state.apply(diff)
        for user_id in diff["leaves"]:
            del reference[user_id]
        reference.update(diff["joins"])
        reference.update(diff["updates"])
    room = state.rooms["r"]
    assert {u: m.to_json() for u, m in room.members.items()} == reference
    assert room.count == len(reference)
