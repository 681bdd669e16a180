"""The index of present users (lua/_online.lua) and its listing (lua/online.lua), against a
real redis-server: kept where presence is decided, paged in the model's order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from presence.cluster.store import parse_view
from presence.core.paging import lex_start, page_after
from tests.cluster.test_cluster_store import TTL, Lua
from tests.support.redis_fixture import RedisServer, needs_redis

pytestmark = needs_redis


@pytest.fixture
def lua(redis_server: RedisServer) -> Iterator[Lua]:
    client = Lua(redis_server.port)
    yield client
    client.r.close()
    client.sub.close()


def page(lua: Lua, limit: int, after: str | None = None, prefix: str = "") -> tuple[Any, Any]:
    reply = lua("online", lex_start(after, prefix), prefix, limit)
    users = {}
    for i in range(1, len(reply), 5):
        uid, status, count, last_seen, metadata = reply[i : i + 5]
        users[uid] = parse_view(status, count, last_seen, metadata)
    return users, reply[0] or None


def walk(lua: Lua, limit: int, prefix: str = "") -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        users, after = page(lua, limit, after, prefix)
        seen += list(users)
        if after is None:
            return seen


def index(lua: Lua) -> list[str]:
    return list(lua.r.call("ZRANGE", "presence:online", 0, -1))


NAMES = ["zoe", "bob", "alice", "Bob", "émile", "al", "\U0001f600x", "ann", "anna"]


def test_pages_in_the_models_order_with_views(lua: Lua) -> None:
    for i, uid in enumerate(NAMES):
        lua.open("A" if i % 2 else "B", f"c{i}", uid, 100)
    lua.open("A", "c-bob-2", "bob", 101)
    lua.update("A", "c0", "zoe", "busy", '{"k":1}', 102)
    for limit in (1, 2, 4, 100):
        assert walk(lua, limit) == page_after(NAMES, 1000)[0] == sorted(NAMES)
    for prefix in ("an", "b", "é", "\U0001f600", "nobody"):
        assert walk(lua, 1, prefix) == page_after(NAMES, 1000, None, prefix)[0]
    users, after = page(lua, 100)
    assert after is None
    assert (users["zoe"].status, users["zoe"].metadata, users["zoe"].connections) == (
        "busy",
        {"k": 1},
        1,
    )
    assert users["bob"].connections == 2 and users["bob"].last_seen is None


def test_the_index_follows_presence_through_grace_expiry_and_a_dead_node(lua: Lua) -> None:
    lua.open("A", "c1", "alice", 100)
    lua.open("A", "c2", "bob", 100)
    lua.open("B", "c3", "carol", 100)
    lua("heartbeat", "A", "100.000", 3_600_000)
    lua.close("A", "c1", "alice", 101, clean=False, grace=5)  # the grace: still listed
    lua.close("A", "c2", "bob", 101, clean=True, grace=5)  # gone at once
    users, _ = page(lua, 10)
    assert list(users) == ["alice", "carol"] and users["alice"].connections == 0
    assert lua("expire", "107.000", TTL, 100) == 1
    assert index(lua) == ["carol"]
    # node B never beat: A's sweep ends its connections, once; with no grace, at once
    swept = lua("sweep", "A", "110.000", TTL, 0, "")
    assert swept[1:] == [1, 1, 0]
    assert index(lua) == [] and page(lua, 10) == ({}, None)
    # B comes back and re-registers carol: listed again
    lua("resync", "B", "111.000", TTL, 0, 3_600_000, 1, "c3", "carol", "online", "")
    assert index(lua) == ["carol"]


def test_an_index_out_of_step_is_rebuilt_from_the_present_set(lua: Lua) -> None:
    for uid in ("b", "a", "c"):
        lua.open("A", f"c-{uid}", uid, 100)
    lua.r.call("DEL", "presence:online")  # as a Redis an older version filled
    assert walk(lua, 2) == ["a", "b", "c"]
    lua.r.call("ZADD", "presence:online", 0, "ghost")  # one an older node never removed
    lua("sweep", "A", "101.000", TTL, 0, "")  # the beat's sweep heals it
    assert index(lua) == ["a", "b", "c"]
