"""Each atomic operation (one Lua script) against a real redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from presence.cluster.store import load_script
from tests.support.redis_fixture import RedisServer, Resp, needs_redis

pytestmark = needs_redis

TTL = 3600


class Lua:
    def __init__(self, port: int) -> None:
        self.r = Resp(port)
        self.sub = Resp(port)
        self.sha = {}

    def __call__(self, name: str, *args: object) -> object:
        if name not in self.sha:
            self.sha[name] = self.r.call("SCRIPT", "LOAD", load_script(name))
        return self.r.call("EVALSHA", self.sha[name], 0, *args)

    def watch(self, user_id: str) -> None:
        assert self.sub.call("SUBSCRIBE", f"presence:ch:{user_id}")[0] == "subscribe"

    def published(self) -> list[str]:
        """Every message published so far on the watched channels (waits for one PING)."""
        self.sub.send("PING")
        out = []
        while True:
            reply = self.sub.read()
            if reply[0] == "pong":
                return out
            assert reply[0] == "message"
            out.append(reply[2])

    def user(self, user_id: str) -> dict[str, str]:
        flat = self.r.call("HGETALL", f"presence:u:{user_id}")
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def open(self, node: str, conn: str, uid: str, now: float) -> object:
        return self("open", node, conn, uid, f"{now:.3f}", TTL)

    def update(self, node: str, conn: str, uid: str, status: str, md: str | None, now: float):
        return self(
            "update",
            node,
            conn,
            uid,
            status,
            "0" if md is None else "1",
            md or "",
            f"{now:.3f}",
            TTL,
        )

    def close(self, node: str, conn: str, uid: str, now: float, clean: bool, grace: float):
        return self("close", node, conn, uid, f"{now:.3f}", int(clean), grace, TTL)


@pytest.fixture
def lua(redis_server: RedisServer) -> Iterator[Lua]:
    client = Lua(redis_server.port)
    yield client
    client.r.close()
    client.sub.close()


def test_aggregate_versions_and_only_visible_changes_published(lua: Lua) -> None:
    lua.watch("u")
    assert lua.open("A", "c1", "u", 100) == 1
    assert lua.published() == ["1\nonline\n1\n\n{}"]
    assert lua.open("B", "c2", "u", 101) == 2  # a second tab: connections alone, no diff
    assert lua.published() == []
    assert lua.update("A", "c1", "u", "busy", '{"a":1}', 102) == 1
    assert lua.update("B", "c2", "u", "away", None, 103) == 0  # still busy: invisible
    assert lua.update("B", "c2", "u", "away", '{"b":2}', 104) == 1  # newest metadata wins
    assert lua.published() == ['2\nbusy\n2\n\n{"a":1}', '3\nbusy\n2\n\n{"b":2}']
    assert lua.close("A", "c1", "u", 105, True, 10) == 1  # away remains
    assert lua.close("B", "c2", "u", 106, True, 10) == 1  # clean: offline at once
    assert lua.published() == ['4\naway\n1\n\n{"b":2}', "5\noffline\n0\n106.000\n{}"]
    assert lua("snapshot", "u", "nobody") == [
        "5", "offline", "0", "106.000", "{}",
        "0", "offline", "0", "", "{}",
    ]  # fmt: skip
    assert int(lua.r.call("TTL", "presence:u:u")) > TTL - 5  # lastSeen kept for the TTL
    assert lua.close("B", "c2", "u", 107, True, 10) == 0  # twice: nothing


def test_update_of_an_unknown_connection_asks_for_a_resync(lua: Lua) -> None:
    assert lua.update("A", "nope", "u", "busy", None, 100) == -1


def test_grace_hides_a_quick_return_and_expires_exactly_once(lua: Lua) -> None:
    lua.watch("g")
    lua.open("A", "c1", "g", 100)
    assert lua.close("A", "c1", "g", 101, False, 10) == 0
    assert lua("snapshot", "g")[:4] == ["1", "online", "0", ""]
    assert lua("expire", "105.000", TTL, 100) == 0
    lua.open("B", "c2", "g", 106)  # back within the grace: nobody saw the offline
    assert lua.r.call("ZCARD", "presence:grace") == 0
    lua.close("B", "c2", "g", 107, False, 10)
    assert lua("expire", "116.999", TTL, 100) == 0
    assert lua("expire", "117.000", TTL, 100) == 1
    assert lua("expire", "118.000", TTL, 100) == 0  # claimed once
    assert lua.published() == ["1\nonline\n1\n\n{}", "2\noffline\n0\n107.000\n{}"]


def test_sweep_ends_a_dead_node_once_with_its_last_heartbeat_as_last_seen(lua: Lua) -> None:
    lua.watch("d")
    lua.watch("e")
    assert lua("heartbeat", "A#1", "100.000", 60000) == 0
    assert lua("heartbeat", "B#1", "100.000", 1) == 0
    lua.open("B#1", "c1", "d", 100)
    lua.open("B#1", "c2", "e", 100)
    lua.open("A#1", "c3", "e", 100)
    lua.r.call("PEXPIRE", "presence:alive:B#1", 1)
    lua.r.call("DEL", "presence:alive:B#1")
    # alive, ended, connections ended, users present (e, still on A)
    assert lua("sweep", "A#1", "103.000", TTL, 0, "") == [1, 1, 2, 1]
    assert lua("sweep", "A#1", "103.500", TTL, 0, "") == [1, 0, 0, 1]  # exactly one clean-up
    assert lua.user("d")["st"] == "offline" and lua.user("d")["ls"] == "100.000"
    assert lua.user("e")["st"] == "online" and lua.user("e")["lc"] == "1"
    assert lua.published() == [
        "1\nonline\n1\n\n{}",
        "1\nonline\n1\n\n{}",
        "2\noffline\n0\n100.000\n{}",
    ]
    # The node comes back (a partition healed): it learns it was ended and must re-register.
    assert lua("heartbeat", "B#1", "104.000", 60000) == 1
    assert lua("heartbeat", "B#1", "105.000", 60000) == 0


def test_sweep_respects_the_grace_from_the_last_heartbeat(lua: Lua) -> None:
    lua("heartbeat", "B#1", "100.000", 1)
    lua.open("B#1", "c1", "g", 100)
    lua.r.call("DEL", "presence:alive:B#1")
    assert lua("sweep", "A#1", "102.000", TTL, 10, "") == [0, 1, 1, 1]  # present in grace
    assert lua.user("g")["st"] == "online" and lua.user("g")["g"] == "1"
    assert lua.r.call("ZSCORE", "presence:grace", "g") == "110"
    assert lua("expire", "110.000", TTL, 100) == 1
    assert lua.user("g")["ls"] == "100.000"
    assert lua.r.call("SCARD", "presence:present") == 0


def test_a_restart_under_the_same_name_ends_the_old_incarnation_at_once(lua: Lua) -> None:
    lua("heartbeat", "n1#old", "100.000", 60000)
    lua("heartbeat", "n2#x", "100.000", 60000)
    lua.open("n1#old", "c1", "u", 100)
    lua("heartbeat", "n1#new", "101.000", 60000)
    assert lua("sweep", "n1#new", "101.000", TTL, 0, "n1#") == [2, 1, 1, 0]
    assert lua.user("u")["st"] == "offline"
    assert sorted(lua.r.call("HKEYS", "presence:nodes")) == ["n1#new", "n2#x"]


def test_resync_registers_the_live_and_ends_what_closed_meanwhile(lua: Lua) -> None:
    assert lua("resync", "A#1", "100.000", TTL, 10, 60000, 0) == [0, 1]  # empty Redis
    lua.open("A#1", "c1", "u", 100)
    lua.open("A#1", "c2", "v", 100)
    lua.open("A#1", "c3", "w", 100)
    lua.watch("u")
    lua.watch("v")
    lua.watch("w")
    args = ["A#1", "120.000", TTL, 10, 60000, 2]
    args += ["c1", "u", "busy", '{"m":1}', "c9", "x", "online", ""]  # c9 opened meanwhile
    args += ["c2", "v", "110.000", "1"]  # c2 closed cleanly at 110; c3 just vanished
    assert lua("resync", *args) == [2, 0]
    assert lua.user("u")["st"] == "busy" and lua.user("u")["md"] == '{"m":1}'
    assert lua.user("v")["st"] == "offline" and lua.user("v")["ls"] == "110.000"
    assert lua.user("w")["g"] == "1"  # unknown end: the grace, from now
    assert lua.user("x")["st"] == "online"
    assert sorted(lua.r.call("HKEYS", "presence:nc:A#1")) == ["c1", "c9"]
    assert sorted(lua.published()) == sorted(
        ['2\nbusy\n1\n\n{"m":1}', "2\noffline\n0\n110.000\n{}"]
    )


def test_resync_after_redis_lost_its_data_keeps_last_seen(lua: Lua) -> None:
    lua.watch("v")
    assert lua("resync", "A#1", "120.000", TTL, 10, 60000, 0, "c2", "v", "110.000", "0") == [0, 1]
    assert lua.user("v")["st"] == "offline" and lua.user("v")["ls"] == "110.000"
    assert lua.published() == ["1\noffline\n0\n110.000\n{}"]


def test_leave_removes_the_nodes_connections_at_once_keeping_the_grace(lua: Lua) -> None:
    lua("heartbeat", "A#1", "100.000", 60000)
    lua.open("A#1", "c1", "u", 100)
    lua.open("A#1", "c2", "u", 100)
    lua.open("B#1", "c3", "v", 100)
    assert lua("leave", "A#1", "101.000", TTL, 10) == 2
    assert lua.r.call("HLEN", "presence:uc:u") == 0
    assert lua.r.call("EXISTS", "presence:alive:A#1") == 0
    assert lua.user("u")["g"] == "1"
    assert lua.r.call("HLEN", "presence:uc:v") == 1
    assert lua("leave", "A#1", "101.000", TTL, 0) == 0
