"""resync.lua: a user whose connections on the re-registering node all ended while Redis
was away ends with the one that ended last, whatever order Redis holds them in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.test_cluster_store import TTL, Lua
from tests.support.redis_fixture import RedisServer, needs_redis

pytestmark = needs_redis


@pytest.fixture
def lua(redis_server: RedisServer) -> Iterator[Lua]:
    client = Lua(redis_server.port)
    yield client
    client.r.close()
    client.sub.close()


def resync(lua: Lua, now: float, *ended: tuple[str, str, float, bool]) -> object:
    """Node A re-registers with no live connections and these ends, in the order given."""
    args: list[object] = ["A#1", f"{now:.3f}", TTL, 10, 60000, 0]
    for conn, uid, at, clean in ended:
        args += [conn, uid, f"{at:.3f}", int(clean)]
    return lua("resync", *args)


def test_the_latest_end_decides_not_the_order_redis_holds_them_in(lua: Lua) -> None:
    lua.open("A#1", "c1", "u", 100)
    lua.open("A#1", "c2", "u", 100)
    lua.open("A#1", "c3", "w", 100)
    lua.open("A#1", "c4", "w", 100)
    lua.watch("u")
    lua.watch("w")
    # u: c2 closed cleanly at 101, c1 uncleanly at 105: the grace runs from 105.
    # w: c4 dropped at 101, c3 closed cleanly at 105: offline at once, last seen at 105.
    resync(lua, 110, ("c2", "u", 101, True), ("c4", "w", 101, False), ("c1", "u", 105, False),
           ("c3", "w", 105, True))  # fmt: skip
    assert lua.user("u")["g"] == "1" and lua.user("u")["ea"] == "105.000"
    assert lua.r.call("ZSCORE", "presence:grace", "u") == "115"
    assert lua.user("w")["st"] == "offline" and lua.user("w")["ls"] == "105.000"
    assert lua.published() == ["2\noffline\n0\n105.000\n{}"]
    assert lua("expire", "115.000", TTL, 100) == 1
    assert lua.published() == ["2\noffline\n0\n105.000\n{}"]


def test_equal_ends_the_one_given_last_decides(lua: Lua) -> None:
    lua.open("A#1", "c1", "u", 100)
    lua.open("A#1", "c2", "u", 100)
    resync(lua, 110, ("c2", "u", 105, False), ("c1", "u", 105, True))
    assert lua.user("u")["st"] == "offline" and lua.user("u")["ls"] == "105.000"


def test_an_end_that_never_reached_redis_is_now_and_unclean(lua: Lua) -> None:
    lua.open("A#1", "c1", "u", 100)  # its close never reached Redis: not given at all
    lua.open("A#1", "c2", "u", 100)
    resync(lua, 110, ("c2", "u", 105, True))
    assert lua.user("u")["g"] == "1" and lua.user("u")["ea"] == "110.000"


def test_a_connection_redis_never_knew_counts(lua: Lua) -> None:
    lua.open("A#1", "c1", "u", 100)
    # c9 opened while Redis was away, and ended after c1.
    resync(lua, 120, ("c1", "u", 110, True), ("c9", "u", 115, False))
    assert lua.user("u")["g"] == "1" and lua.user("u")["ea"] == "115.000"


def test_after_redis_lost_its_data_the_latest_last_seen_is_kept(lua: Lua) -> None:
    lua.watch("v")
    assert resync(lua, 120, ("c1", "v", 110, True), ("c2", "v", 112, False),
                  ("c3", "v", 111, True)) == [0, 1]  # fmt: skip
    assert lua.user("v")["st"] == "offline" and lua.user("v")["ls"] == "112.000"
    assert lua.published() == ["1\noffline\n0\n112.000\n{}"]
