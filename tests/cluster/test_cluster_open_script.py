"""open.lua against a real redis-server: the cluster-wide cap is checked as the connection
registers, atomically; a refused connection leaves no trace and publishes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from presence.cluster.store import load_script
from tests.support.redis_fixture import RedisServer, Resp, needs_redis

pytestmark = needs_redis


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[tuple[Resp, Resp]]:
    r, sub = Resp(redis_server.port), Resp(redis_server.port)
    yield r, sub
    r.close()
    sub.close()


def published(sub: Resp) -> list[object]:
    sub.send("PING")
    out = []
    while (reply := sub.read())[0] != "pong":  # type: ignore[index]
        out.append(reply[2])  # type: ignore[index]
    return out


def test_over_the_cap_nothing_is_registered_and_nothing_published(
    redis: tuple[Resp, Resp],
) -> None:
    r, sub = redis
    sha = r.call("SCRIPT", "LOAD", load_script("open"))

    def open_(node: str, conn: str, cap: int) -> object:
        return r.call("EVALSHA", sha, 0, node, conn, "u", "100.000", 3600, cap)

    assert sub.call("SUBSCRIBE", "presence:ch:u")[0] == "subscribe"  # type: ignore[index]
    assert open_("A", "c1", 2) == 1
    assert open_("B", "c2", 2) == 2  # at the cap: counted
    before = r.call("HGETALL", "presence:u:u")
    assert open_("B", "c3", 2) == -1  # over it: refused
    assert r.call("HLEN", "presence:uc:u") == 2
    assert r.call("HEXISTS", "presence:nc:B", "c3") == 0
    assert r.call("HGETALL", "presence:u:u") == before  # no version bump, no change
    assert published(sub) == ["1\nonline\n1\n\n{}"]  # the first open only
    assert open_("B", "c2", 2) == 2  # already registered (by a re-registration): counted
    assert open_("C", "c4", 0) == 3  # no cap
