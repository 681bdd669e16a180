"""Races between a node, its clients and a Redis that hangs, against real daemons and a
real redis-server behind a TCP proxy that can be paused (a hung primary: connections are
accepted and kept, nothing is answered)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from presence.cluster.options import ClusterConfig, RedisURL
from tests.support.cluster_client import (
    Client,
    await_until,
    presence,
    server_time,
    start_node,
    wait_health,
)
from tests.support.daemon import Daemon
from tests.support.redis_fixture import RedisServer, TcpProxy, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

Start = Callable[..., Daemon]
Proxy = Callable[[int], TcpProxy]


async def run(flow: Callable[[], Any]) -> None:
    try:
        await flow()
    finally:
        await Client.close_all()


def detection_time(url: str, node_timeout: float) -> float:
    return ClusterConfig(RedisURL.parse(url), "any", node_timeout).reply_timeout


def test_local_changes_reach_local_watchers_while_redis_hangs(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Proxy
) -> None:
    proxy = tcp_proxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    node_timeout = 1.5
    bound = detection_time(url, node_timeout) + 1.0
    a = start_node(start_daemon, url, node_timeout=node_timeout)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        carl = await Client.connect(a, "carl")
        probe = await Client.connect(a, "probe")
        lou = await Client.connect(a, "lou")
        state = await lou.subscribe("alice", "carl", "probe")
        assert state["alice"]["status"] == state["carl"]["status"] == "online"

        proxy.pause()  # a hung primary: the writes below are never answered
        # a's clock just before the changes, and below when each reached lou: both stamped
        # by the same daemon, so their difference is how long the local watcher waited
        sent = server_time(await lou.handled())
        await alice.update("busy", {"at": "a"})
        await carl.disconnect()
        got = {}
        while len(got) < 2:
            diff = await lou.diff(timeout=10)
            got[diff["userId"]] = diff
        assert (got["alice"]["status"], got["alice"]["metadata"]) == ("busy", {"at": "a"})
        assert got["carl"]["status"] == "offline"
        for user_id, diff in got.items():
            took = server_time(diff["timestamp"]) - sent
            assert took <= bound, f"local watchers waited {took:.3f}s for {user_id}'s change"
        assert "redis" in wait_health(a, 503)["reason"]

        proxy.resume()
        wait_health(a, 200, timeout=15)  # re-registered and re-read: serving again
        await probe.update("away")  # published after all a did on re-registering
        await lou.diff_of("probe")  # told once, not again after re-registering
        users = presence(a, "alice", "carl")
        assert users["alice"]["status"] == "busy" and users["carl"]["status"] == "offline"

    asyncio.run(run(flow))


@pytest.mark.parametrize("cap", ["0", "16"])
def test_connect_is_sent_once_the_connection_counts_in_redis(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Proxy, cap: str
) -> None:
    proxy = tcp_proxy(redis_server.port)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    a = start_node(start_daemon, redis_server.url, "--max-connections-per-user", cap)
    # b's replies are due within 3 s: the pause below stays far shorter.
    b = start_node(start_daemon, url, "--max-connections-per-user", cap, node_timeout=9)

    async def flow() -> None:
        first = await Client.connect(a, "u-race")
        watcher = await Client.connect(a, "w")
        assert (await watcher.subscribe("u-race", "probe"))["u-race"]["status"] == "online"

        proxy.pause()  # b's registration of the second device waits in the proxy
        second = await websockets.connect(b.ws_url + "?userId=u-race")
        connect = asyncio.ensure_future(second.recv())
        await await_until(lambda: b"u-race" in proxy.held(), "b's open reached the proxy")
        try:
            message = json.loads(await asyncio.wait_for(asyncio.shield(connect), 0.3))
        except TimeoutError:
            message = None  # not counted yet, so no CONNECT: as it should be
        else:
            # CONNECT came before the connection counted: the first device's change
            # reaches Redis first.
            assert message["type"] == "CONNECT"
            await first.update("away")
            await await_until(
                lambda: "away" in redis_server.cli("HVALS", "presence:uc:u-race"),
                "the first device's update applied",
            )
        proxy.resume()
        if message is None:
            message = json.loads(await asyncio.wait_for(connect, 10))
            assert message["type"] == "CONNECT"
            await first.update("away")  # right after the second device's CONNECT
        Client(second, "u-race")
        await await_until(
            lambda: presence(a, "u-race")["u-race"]["connections"] == 2, "both counted"
        )
        await first.handled()  # a sent the first device's update to Redis
        await Client.connect(a, "probe")  # after both devices' changes: so is its diff
        seen = [(m["status"], m["connections"]) for m in await watcher.diffs_until("probe")]
        assert seen == [], f"the watcher saw u-race flap: {seen}"
        assert presence(b, "u-race")["u-race"]["status"] == "online"

    asyncio.run(run(flow))


def test_a_connection_over_the_cluster_cap_is_refused_before_connect_unseen(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a, b = (
        start_node(start_daemon, redis_server.url, "--max-connections-per-user", "2")
        for _ in range(2)
    )

    async def flow() -> None:
        on_a = await Client.connect(a, "u")
        on_b = await Client.connect(b, "u")
        await on_a.update("away")
        await on_b.update("away")
        watcher = await Client.connect(a, "w")
        await await_until(lambda: presence(a, "u")["u"]["status"] == "away", "u away")
        assert (await watcher.subscribe("u", "someone-else"))["u"] == {
            "status": "away",
            "metadata": {},
            "lastSeen": None,
            "connections": 2,
        }
        for node in (b, a):
            third = await websockets.connect(node.ws_url + "?userId=u")
            before = []
            try:
                while True:
                    before.append(json.loads(await asyncio.wait_for(third.recv(), 5)))
            except websockets.ConnectionClosed as e:
                closed = e.rcvd
            assert before == []  # no CONNECT: it never counted
            assert closed is not None
            assert (closed.code, closed.reason) == (1013, "too many connections for this user")
        assert redis_server.cli("HLEN", "presence:uc:u") == "2"
        assert presence(b, "u")["u"]["connections"] == 2
        other = await Client.connect(b, "someone-else")  # the cap is per user
        await watcher.diff_of("someone-else")  # published after the refusals: nobody saw u
        await other.send("HEARTBEAT")
        assert (await other.next())["type"] == "HEARTBEAT_ACK"

    asyncio.run(run(flow))
