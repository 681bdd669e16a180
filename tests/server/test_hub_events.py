"""LocalHub with an EventSink: the webhook events it decides from what the model and the
rooms return (never from the protocol), in the order they happened."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core import wire
from presence.core.model import Connection, PresenceModel
from presence.core.webhooks import Event
from presence.hub import LocalHub, diff_message
from tests.server.test_hub import result_of
from tests.support.peers import FakePeer

GRACE = 10.0


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def take(self) -> list[tuple[str, ...]]:
        """(type, userId or room) of what came since last asked."""
        got, self.events = self.events, []
        return [(e.type, e.data.get("userId") or e.data["room"]) for e in got]

    def take_events(self) -> list[Event]:
        got, self.events = self.events, []
        return got


def hub_and_sink(grace: float = GRACE) -> tuple[LocalHub, Sink]:
    sink = Sink()
    return LocalHub(PresenceModel(offline_grace=grace), sink=sink), sink


def connect(hub: LocalHub, cid: str, user: str, now: float = 0) -> Connection:
    conn: Connection = result_of(hub.open(cid, user, FakePeer(), now))
    return conn


def test_online_on_the_first_connection_only() -> None:
    hub, sink = hub_and_sink()
    connect(hub, "a1", "alice")
    (event,) = sink.take_events()
    assert (event.type, event.key, event.timestamp) == ("user.online", "u:alice", 0)
    assert event.data == {
        "userId": "alice",
        "status": "online",
        "metadata": {},
        "lastSeen": None,
        "connections": 1,
    }
    connect(hub, "a2", "alice")  # a second tab: nothing a watcher sees changed
    assert sink.take() == []


def test_offline_only_after_the_grace() -> None:
    hub, sink = hub_and_sink()
    conn = connect(hub, "a1", "alice")
    sink.take()
    hub.close(conn, now=5, clean=False)
    hub.tick(now=5 + GRACE - 0.1)
    assert sink.take() == []
    hub.tick(now=5 + GRACE)
    (event,) = sink.take_events()
    assert event.type == "user.offline" and event.timestamp == 5 + GRACE
    assert event.data["lastSeen"] == wire.iso(5) and event.data["status"] == "offline"


def test_a_clean_close_is_offline_at_once() -> None:
    hub, sink = hub_and_sink()
    conn = connect(hub, "a1", "alice")
    hub.close(conn, now=1, clean=True)
    assert sink.take() == [("user.online", "alice"), ("user.offline", "alice")]


def test_no_event_when_the_user_comes_back_within_the_grace() -> None:
    hub, sink = hub_and_sink()
    conn = connect(hub, "a1", "alice")
    sink.take()
    hub.close(conn, now=1, clean=False)
    connect(hub, "a2", "alice", now=2)
    hub.tick(now=100)
    assert sink.take() == []


def test_updated_only_when_what_watchers_see_changes() -> None:
    hub, sink = hub_and_sink()
    conn = connect(hub, "a1", "alice")
    sink.take()
    hub.update(conn, "online", None, now=1)
    assert sink.take() == []
    hub.update(conn, "away", {"k": 1}, now=2)
    (event,) = sink.take_events()
    assert event.type == "user.updated"
    # The data is exactly what a PRESENCE_DIFF tells a watcher.
    diff = json.loads(diff_message("alice", hub.figures.view("alice"), 2))  # type: ignore[attr-defined]
    assert dict(event.data) == {k: v for k, v in diff.items() if k not in ("type", "timestamp")}
    hub.update(conn, "away", {"k": 1}, now=3)
    assert sink.take() == []


def test_room_events_with_occupied_and_vacated() -> None:
    hub, sink = hub_and_sink()
    a, b1, b2 = connect(hub, "a", "alice"), connect(hub, "b1", "bob"), connect(hub, "b2", "bob")
    sink.take()
    hub.join(a, "doc", {"cursor": 1}, now=1)
    events = sink.take_events()
    assert [(e.type, e.key) for e in events] == [
        ("room.occupied", "r:doc"),
        ("room.joined", "u:alice"),
    ]
    assert events[0].data == {"room": "doc"}
    assert events[1].data == {
        "room": "doc",
        "userId": "alice",
        "member": {"status": "online", "metadata": {"cursor": 1}, "connections": 1},
    }
    hub.join(b1, "doc", None, now=2)
    hub.join(b2, "doc", None, now=2)  # a second tab of bob: not a join
    hub.room_update(b2, "doc", {"x": 1}, now=3)  # room metadata: no membership change
    hub.join(a, "doc", {"cursor": 2}, now=3)  # joined again: no event
    assert sink.take() == [("room.joined", "bob")]
    hub.leave(b1, "doc", now=4)
    assert sink.take() == []  # bob's other tab is still in
    hub.leave(a, "doc", now=5)
    (left,) = sink.take_events()
    assert left.type == "room.left"
    assert left.data["member"] == {"status": "online", "metadata": {"cursor": 2}, "connections": 0}
    hub.close(b1, now=6, clean=True)  # not in the room any more: bob is still online
    assert sink.take() == []
    hub.close(b2, now=7, clean=True)
    assert sink.take() == [
        ("room.left", "bob"),
        ("room.vacated", "doc"),
        ("user.offline", "bob"),
    ]


def test_an_abrupt_close_leaves_rooms_after_the_grace_before_going_offline() -> None:
    hub, sink = hub_and_sink()
    a = connect(hub, "a", "alice")
    hub.join(a, "doc", None, now=0)
    sink.take()
    hub.close(a, now=1, clean=False)
    hub.tick(now=2)
    assert sink.take() == []
    hub.tick(now=1 + GRACE)
    assert sink.take() == [
        ("room.left", "alice"),
        ("room.vacated", "doc"),
        ("user.offline", "alice"),
    ]


def test_coming_back_within_the_grace_never_leaves_the_room() -> None:
    hub, sink = hub_and_sink()
    a = connect(hub, "a", "alice")
    hub.join(a, "doc", None, now=0)
    sink.take()
    hub.close(a, now=1, clean=False)
    again = connect(hub, "a2", "alice", now=2)
    hub.join(again, "doc", None, now=2)
    hub.tick(now=100)
    assert sink.take() == []


def test_without_a_sink_nothing_is_noted() -> None:
    hub = LocalHub(PresenceModel(offline_grace=0))
    a = connect(hub, "a", "alice")
    hub.join(a, "doc", None, now=0)
    assert not hasattr(hub._rooms, "journal")


# -- against a from-scratch reference ------------------------------------------------------

STEPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "close", "abrupt", "away", "online", "tick", "join", "leave"]),
        st.sampled_from(["alice", "bob"]),
        st.integers(0, 2),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(STEPS)
def test_events_alternate_and_end_where_presence_is(steps: list[tuple[str, str, int]]) -> None:
    """Whatever happens: per user, online and offline alternate (starting with online),
    updated only between them, joins and leaves of a room alternate, and at the end the
    last event of each user says what the hub says."""
    hub, sink = hub_and_sink(grace=3)
    conns: dict[tuple[str, int], Connection] = {}
    now = 0.0
    for n, (op, user, i) in enumerate(steps):
        now += 1
        conn = conns.get((user, i))
        if op == "open" and conn is None:
            conns[(user, i)] = connect(hub, f"{user}{i}-{n}", user, now)
        elif op in ("close", "abrupt") and conn is not None:
            hub.close(conns.pop((user, i)), now, clean=op == "close")
        elif op in ("away", "online") and conn is not None:
            hub.update(conn, op, None, now)
        elif op == "join" and conn is not None:
            hub.join(conn, f"room{i % 2}", None, now)
        elif op == "leave" and conn is not None:
            hub.leave(conn, f"room{i % 2}", now)
        elif op == "tick":
            now += 2
            hub.tick(now)
    present: dict[str, bool] = {}
    member: dict[tuple[str, str], bool] = {}
    occupied: dict[str, int] = {}
    for event in sink.events:
        data: Any = event.data
        if event.type == "user.online":
            assert not present.get(data["userId"])
            present[data["userId"]] = True
        elif event.type == "user.offline":
            assert present.get(data["userId"])
            present[data["userId"]] = False
        elif event.type == "user.updated":
            assert present.get(data["userId"])
        elif event.type in ("room.joined", "room.left"):
            pair = (data["room"], data["userId"])
            joined = event.type == "room.joined"
            assert member.get(pair, False) != joined
            member[pair] = joined
            occupied[data["room"]] = occupied.get(data["room"], 0) + (1 if joined else -1)
        elif event.type == "room.occupied" or event.type == "room.vacated":
            assert occupied.get(data["room"], 0) == 0
    for user in ("alice", "bob"):
        view = hub.figures.view(user)  # type: ignore[attr-defined]
        assert present.get(user, False) == (view.status != "offline")
