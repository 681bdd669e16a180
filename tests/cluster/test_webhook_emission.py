"""The presence scripts add webhook events to the streams atomically with their decisions,
against a real redis-server: one per transition, none for what a watcher would not see."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from presence.cluster.store import load_script
from presence.cluster.webhook_stream import SHARDS, event_of, prelude
from presence.core.webhooks import EVENT_TYPES
from tests.support.redis_fixture import RedisServer, Resp, needs_redis

pytestmark = needs_redis

TTL = 3600


class Lua:
    def __init__(self, port: int, events: Any = EVENT_TYPES, retain: int = 1000) -> None:
        self.r = Resp(port)
        self.prelude = prelude(events, retain)
        self.sha: dict[str, Any] = {}

    def __call__(self, name: str, *args: object) -> Any:
        if name not in self.sha:
            self.sha[name] = self.r.call("SCRIPT", "LOAD", load_script(name, self.prelude))
        return self.r.call("EVALSHA", self.sha[name], 0, *args)

    def open(self, node: str, conn: str, uid: str, now: float) -> Any:
        return self("open", node, conn, uid, f"{now:.3f}", TTL)

    def update(self, conn: str, uid: str, status: str, md: str | None, now: float) -> Any:
        has = "0" if md is None else "1"
        return self("update", "A", conn, uid, status, has, md or "", f"{now:.3f}", TTL)

    def close(self, node: str, conn: str, uid: str, now: float, clean: bool, grace: float) -> Any:
        return self("close", node, conn, uid, f"{now:.3f}", int(clean), grace, TTL)

    def join(self, conn: str, uid: str, room: str, now: float) -> Any:
        return self("room_join", "A", conn, uid, room, "1", '{"r":1}', f"{now:.3f}", 0, TTL)

    def leave(self, conn: str, uid: str, room: str, now: float) -> Any:
        return self("room_leave", "A", conn, uid, room, f"{now:.3f}", TTL)

    def events(self) -> list[tuple[str, str, dict[str, Any], float]]:
        """Every event in the streams, taken out: (type, key, data, timestamp), in stream
        order per shard (the shards one after the other)."""
        out = []
        for shard in range(SHARDS):
            for entry_id, fields in self.r.call("XRANGE", f"presence:wh:{shard}", "-", "+"):
                e = event_of(shard, entry_id, fields)
                assert e.id == f"msg_{shard}_{entry_id}"
                out.append((e.type, e.key, dict(e.data), e.timestamp))
            self.r.call("DEL", f"presence:wh:{shard}")
        return out

    def kinds(self) -> list[tuple[str, str]]:
        return [(t, k) for t, k, _, _ in self.events()]


def next_millisecond(r: Resp) -> None:
    """Returns once Redis's clock is past the millisecond it was in."""

    def ms() -> int:
        seconds, micros = r.call("TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    start = ms()
    while ms() == start:
        pass


@pytest.fixture
def lua(redis_server: RedisServer) -> Iterator[Lua]:
    client = Lua(redis_server.port)
    yield client
    client.r.close()


def test_online_updated_offline_and_nothing_for_a_second_tab(lua: Lua) -> None:
    lua.open("A", "c1", "u", 100)
    [(kind, key, data, ts)] = lua.events()
    assert (kind, key, ts) == ("user.online", "u:u", 100.0)
    assert data == {
        "userId": "u",
        "status": "online",
        "metadata": {},
        "lastSeen": None,
        "connections": 1,
    }
    lua.open("B", "c2", "u", 101)  # a second tab: connections alone
    lua.update("c1", "u", "online", None, 102)  # the same status: nothing visible
    assert lua.events() == []
    lua.update("c1", "u", "busy", '{"a":1}', 103)
    [(kind, _, data, ts)] = lua.events()
    assert (kind, data["status"], data["metadata"], data["connections"]) == (
        "user.updated",
        "busy",
        {"a": 1},
        2,
    )
    lua.close("B", "c2", "u", 104, True, 30)  # one tab of two: nothing visible
    assert lua.events() == []
    lua.close("A", "c1", "u", 105, True, 30)  # a clean close: offline at once
    [(kind, _, data, ts)] = lua.events()
    assert (kind, ts) == ("user.offline", 105.0)
    assert data == {
        "userId": "u",
        "status": "offline",
        "metadata": {},
        "lastSeen": "1970-01-01T00:01:45.000Z",
        "connections": 0,
    }


def test_offline_only_after_the_grace_and_none_on_a_reconnect_within_it(lua: Lua) -> None:
    lua.open("A", "c1", "u", 100)
    lua.close("A", "c1", "u", 110, False, 30)  # dropped: the grace
    assert lua.kinds() == [("user.online", "u:u")]
    assert lua("expire", "139.000", TTL, 100) == 0
    assert lua.events() == []
    lua.open("B", "c2", "u", 120)  # back within the grace on another node: never left
    assert lua.events() == []
    lua.close("B", "c2", "u", 130, False, 30)
    assert lua("expire", "159.000", TTL, 100) == 0
    assert lua.events() == []
    assert lua("expire", "160.000", TTL, 100) == 1
    [(kind, _, data, ts)] = lua.events()
    assert (kind, ts) == ("user.offline", 160.0)  # decided at the expiry
    assert data["lastSeen"] == "1970-01-01T00:02:10.000Z"  # when the last one dropped
    assert lua("expire", "200.000", TTL, 100) == 0  # claimed once
    assert lua.events() == []


def test_a_dead_nodes_users_go_offline_once_after_the_grace(lua: Lua) -> None:
    lua.open("A", "c1", "u", 100)
    lua.open("A", "c2", "v", 100)
    lua("heartbeat", "A", "100.000", 1000)
    lua.events()
    lua.r.call("DEL", "presence:alive:A")  # its liveness key expired
    assert lua("sweep", "B", "105.000", TTL, 30, "")[1] == 1
    assert lua("sweep", "C", "105.000", TTL, 30, "")[1] == 0  # ended once
    assert lua.events() == []  # in the grace
    assert lua("expire", "131.000", TTL, 100) == 2
    events = lua.events()
    assert sorted((t, k) for t, k, _, _ in events) == [
        ("user.offline", "u:u"),
        ("user.offline", "u:v"),
    ]
    assert {(d["lastSeen"], ts) for _, _, d, ts in events} == {("1970-01-01T00:01:40.000Z", 131.0)}


def test_room_events_occupied_joined_left_vacated(lua: Lua) -> None:
    lua.open("A", "c1", "u", 100)
    lua.open("A", "c2", "v", 100)
    lua.events()
    lua.join("c1", "u", "room", 101)
    events = lua.events()
    kinds = sorted((t, k) for t, k, _, _ in events)
    assert kinds == [("room.joined", "u:u"), ("room.occupied", "r:room")]
    joined = next(d for t, _, d, _ in events if t == "room.joined")
    assert joined == {
        "room": "room",
        "userId": "u",
        "member": {"status": "online", "metadata": {"r": 1}, "connections": 1},
    }
    lua.join("c2", "v", "room", 102)
    assert lua.kinds() == [("room.joined", "u:v")]
    lua.leave("c1", "u", "room", 103)
    [(kind, _, data, _)] = lua.events()
    assert kind == "room.left"
    assert data["member"] == {"status": "online", "metadata": {"r": 1}, "connections": 0}
    lua.leave("c2", "v", "room", 104)
    assert sorted(lua.kinds()) == [("room.left", "u:v"), ("room.vacated", "r:room")]


def test_a_dropped_membership_leaves_after_the_grace_decided_then(lua: Lua) -> None:
    lua.open("A", "c1", "u", 100)
    lua.join("c1", "u", "room", 101)
    lua.events()
    lua("room_close", "A", "c1", "u", "110.000", 0, 30, TTL, "room")
    lua.close("A", "c1", "u", 110, False, 30)
    assert lua.events() == []  # in the grace: still a member, still present
    assert lua("room_expire", "140.000", TTL, 100)[0] == 1
    assert lua("expire", "140.000", TTL, 100) == 1
    got = [(t, k, ts) for t, k, _, ts in lua.events()]
    assert sorted(got) == [
        ("room.left", "u:u", 140.0),
        ("room.vacated", "r:room", 140.0),
        ("user.offline", "u:u", 140.0),
    ]
    shard_order = [t for t, k, _ in got if k == "u:u"]
    assert shard_order == ["room.left", "user.offline"]  # as the hub runs them


def test_a_users_events_are_in_one_stream_in_order(lua: Lua) -> None:
    for i in range(5):
        lua.open("A", f"c{i}", "u", 100 + 2 * i)
        lua.close("A", f"c{i}", "u", 101 + 2 * i, True, 30)
    kinds = lua.kinds()
    assert kinds == [("user.online", "u:u"), ("user.offline", "u:u")] * 5


def test_only_the_enabled_types_and_none_without_webhooks(redis_server: RedisServer) -> None:
    only = Lua(redis_server.port, events={"user.offline"})
    only.open("A", "c1", "u", 100)
    only.close("A", "c1", "u", 101, True, 30)
    assert only.kinds() == [("user.offline", "u:u")]
    plain = Resp(redis_server.port)  # the scripts as a cluster without webhooks loads them
    plain.call("EVAL", load_script("open"), 0, "A", "c2", "w", "100.000", TTL)
    assert plain.call("KEYS", "presence:wh:*") == []


def test_the_cap_drops_the_oldest_and_counts_it(redis_server: RedisServer) -> None:
    lua = Lua(redis_server.port, retain=3)
    for i in range(5):
        lua.open("A", f"c{i}", f"u{i}", 100 + i)
        next_millisecond(lua.r)  # the entry ids (Redis's milliseconds) tell which is oldest
    assert int(lua.r.call("GET", "presence:wh:dropped")) == 2
    assert sorted(k for _, k in lua.kinds()) == ["u:u2", "u:u3", "u:u4"]  # the oldest went
