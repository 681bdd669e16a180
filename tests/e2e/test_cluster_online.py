"""GET /presence/online on two real `twistd presence` nodes sharing one real redis-server:
every present user once, in one order, a cursor from one node continued on the other, and
the listing kept right through leaving, the grace, a node's death and a Redis that lost
everything (the nodes' re-registration rebuilds it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.cluster_client import Client, start_node, wait_health, wait_until
from tests.support.daemon import Daemon
from tests.support.redis_fixture import RedisServer, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

Start = Callable[..., Daemon]


def listing(nodes: list[Daemon], limit: int = 100) -> dict[str, Any]:
    """Every page, asking the nodes in turn: each cursor goes to the next node."""
    users: dict[str, Any] = {}
    cursor = None
    for i in range(1000):
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        code, body = nodes[i % len(nodes)].get_json("/presence/online" + query)
        assert code == 200, body
        assert len(body["users"]) <= limit
        assert not set(body["users"]) & set(users), "a user listed twice"
        users.update(body["users"])
        cursor = body["next"]
        if cursor is None:
            return users
    raise AssertionError("the pages never ended")


def listed(node: Daemon) -> list[str]:
    return list(listing([node]))


async def run(flow: Callable[[], Any]) -> None:
    try:
        await flow()
    finally:
        await Client.close_all()


def test_one_listing_across_nodes_kept_through_leaving_grace_and_a_dead_node(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    grace = 3.0
    a = start_node(start_daemon, redis_server.url, grace=grace)
    b = start_node(start_daemon, redis_server.url, grace=grace)
    on_a = [f"u{i:02d}" for i in range(0, 12, 2)]
    on_b = [f"u{i:02d}" for i in range(1, 12, 2)]

    async def flow() -> None:
        clients = {u: await Client.connect(a, u) for u in on_a}
        clients |= {u: await Client.connect(b, u) for u in on_b}
        await Client.connect(a, "both")
        await Client.connect(b, "both")  # one user on both nodes: listed once
        await clients["u03"].update("busy", {"desk": 3})
        await clients["u03"].handled()
        everyone = sorted([*on_a, *on_b, "both"])
        for limit in (1, 4, 100):
            users = await asyncio.to_thread(listing, [a, b], limit)
            assert list(users) == everyone  # in order, each once, cursors across nodes
        users = await asyncio.to_thread(listing, [b])
        assert users["both"]["connections"] == 2
        assert (users["u03"]["status"], users["u03"]["metadata"]) == ("busy", {"desk": 3})
        assert await asyncio.to_thread(listing, [a]) == users  # the same on either node

        await clients["u00"].disconnect()  # clean: gone at once
        clients["u02"].ws.transport.abort()  # dropped: listed through the grace
        await asyncio.to_thread(
            wait_until,
            lambda: (u := listing([b])).get("u02", {}).get("connections") == 0 and "u00" not in u,
            "u00 gone, u02 in the grace",
        )
        await asyncio.to_thread(
            wait_until, lambda: "u02" not in listing([b]), "u02 gone after the grace", grace + 5
        )

        assert b.proc is not None
        b.proc.kill()  # kill -9: a's sweep ends b's connections into the grace, then gone
        survivors = sorted([*(u for u in on_a if u not in ("u00", "u02")), "both"])
        await asyncio.to_thread(
            wait_until,
            lambda: listed(a) == survivors,
            "b's users gone once their grace ran out",
            2.0 + grace + 10,
        )
        assert listing([a])["both"]["connections"] == 1

    asyncio.run(run(flow))


def test_a_redis_that_lost_everything_is_rebuilt_by_re_registration(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url)
    b = start_node(start_daemon, redis_server.url)

    async def flow() -> None:
        for node, user_id in ((a, "alice"), (b, "bob"), (a, "carol"), (b, "carol")):
            await Client.connect(node, user_id)
        assert listed(a) == listed(b) == ["alice", "bob", "carol"]
        redis_server.stop()
        for node in (a, b):
            wait_health(node, 503)
            code, body = node.get_json("/presence/online")
            assert (code, body["error"]) == (503, "UNAVAILABLE")
        redis_server.start()  # same port, no data
        for node in (a, b):
            wait_health(node, 200, timeout=15)
        await asyncio.to_thread(
            wait_until,
            lambda: listed(a) == listed(b) == ["alice", "bob", "carol"],
            "both nodes re-registered their users",
        )
        assert listing([b])["carol"]["connections"] == 2

    asyncio.run(run(flow))
