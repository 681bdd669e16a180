"""Two and three real `twistd presence` processes on one real redis-server."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import websockets

from tests.support.cluster_client import (
    NODE_TIMEOUT,
    Client,
    presence,
    server_time,
    start_node,
    wait_health,
    wait_until,
)
from tests.support.daemon import Daemon
from tests.support.redis_fixture import RedisServer, TcpProxy, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

Start = Callable[..., Daemon]


async def run(flow: Callable[[], Awaitable[None]]) -> None:
    try:
        await flow()
    finally:
        await Client.close_all()


def gone(daemon: Daemon, user_id: str) -> None:
    """Waits until the cluster has seen the user's only connection go."""
    wait_until(lambda: presence(daemon, user_id)[user_id]["connections"] == 0, f"{user_id} dropped")


def nodes_seen(expected: int, *nodes: Daemon) -> None:
    """Waits until each node's own sweep (on its beat) counted ``expected`` live nodes."""
    wait_until(
        lambda: all(n.metrics()["presence_nodes_current"] == expected for n in nodes),
        f"{expected} live nodes seen by each",
    )


def test_every_node_sees_one_presence(start_daemon: Start, redis_server: RedisServer) -> None:
    a, b, c = (start_node(start_daemon, redis_server.url) for _ in range(3))

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        state = await bob.subscribe("alice", "carol")
        assert state["alice"] == {
            "status": "online",
            "metadata": {},
            "lastSeen": None,
            "connections": 1,
        }
        assert state["carol"]["status"] == "offline" and state["carol"]["lastSeen"] is None

        await alice.update("busy", {"where": "a"})
        diff = await bob.diff()
        assert (diff["userId"], diff["status"], diff["metadata"]) == (
            "alice",
            "busy",
            {"where": "a"},
        )

        alice2 = await Client.connect(c, "alice")  # a second tab elsewhere: no diff
        await alice2.update("away")  # still busy: no diff
        carol = await Client.connect(c, "carol")
        diff = await bob.diff()
        assert (diff["userId"], diff["status"]) == ("carol", "online")
        for node in (a, b, c):
            users = presence(node, "alice", "carol", "bob")
            assert users["alice"]["status"] == "busy" and users["alice"]["connections"] == 2
            assert users["carol"]["status"] == "online"

        await alice.disconnect()
        diff = await bob.diff()
        assert (diff["status"], diff["connections"], diff["metadata"]) == ("away", 1, {})
        await alice2.disconnect()
        diff = await bob.diff()
        assert diff["status"] == "offline" and diff["lastSeen"] is not None
        code, one = c.get_json("/presence/alice")
        assert code == 200 and one["status"] == "offline" and one["lastSeen"] == diff["lastSeen"]

        await bob.send("UNSUBSCRIBE", userIds=["carol", "alice"])
        await bob.subscribe("probe")  # its PRESENCE_STATE: the UNSUBSCRIBE was handled
        await carol.update("busy")
        await carol.handled()  # c wrote carol's update to Redis ...
        await Client.connect(c, "probe")  # ... before the probe's, which is published after it
        assert (await bob.diff_of("probe"))["status"] == "online"  # nothing about carol
        for client in (bob, carol):
            await client.close()

    asyncio.run(run(flow))


def test_concurrent_updates_from_two_nodes_agree_everywhere(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a, b, c = (start_node(start_daemon, redis_server.url) for _ in range(3))
    statuses = ["online", "away", "busy"]

    async def hammer(client: Client, offset: int, last: str) -> None:
        for i in range(60):
            await client.update(statuses[(i + offset) % 3], {"n": i, "by": client.user_id})
        await client.update(last)

    async def flow() -> None:
        on_a = await Client.connect(a, "u")
        on_b = await Client.connect(b, "u")
        watchers = [await Client.connect(node, "w") for node in (a, c)]
        for watcher in watchers:
            await watcher.subscribe("u", "probe")
        await asyncio.gather(hammer(on_a, 0, "away"), hammer(on_b, 1, "online"))
        for client in (on_a, on_b):
            await client.handled()  # its node sent every one of its updates to Redis
        for node in (a, b):
            presence(node, "u")  # a node's read follows its own writes to Redis
        # Once a and then b answered, every update has been applied: each node shows the
        # final state, and the probe's open comes after them all, so does its diff.
        final = [presence(node, "u")["u"] for node in (a, b, c)]
        await Client.connect(c, "probe")
        seen: list[list[tuple[str, str]]] = []
        for watcher in watchers:
            diffs = await watcher.diffs_until("probe")
            pairs = [(d["status"], str(d["metadata"])) for d in diffs]
            # never a diff that shows nothing new
            assert all(x != y for x, y in itertools.pairwise(pairs))
            seen.append(pairs)
        assert seen[0] == seen[1]  # the same changes, in the same order, on both nodes
        assert final[0] == final[1] == final[2]
        assert final[0]["status"] == "online" and final[0]["connections"] == 2
        assert seen[0][-1] == (final[0]["status"], str(final[0]["metadata"]))

    asyncio.run(run(flow))


def test_kill_9_leaves_no_ghost_and_a_restart_resurrects_nothing(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url, "--node-name", "alpha")
    b = start_node(start_daemon, redis_server.url)
    c = start_node(start_daemon, redis_server.url)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        dave = await Client.connect(a, "dave")
        bob = await Client.connect(b, "bob")
        carol = await Client.connect(c, "carol")
        for watcher in (bob, carol):
            await watcher.subscribe("alice", "dave", "probe")
        assert a.proc is not None
        a.proc.kill()  # kill -9
        for watcher in (bob, carol):
            got = {}
            for _ in range(2):
                diff = await watcher.diff(timeout=NODE_TIMEOUT + 3)
                got[diff["userId"]] = diff
            assert set(got) == {"alice", "dave"}
            assert {d["status"] for d in got.values()} == {"offline"}
            assert all(d["lastSeen"] for d in got.values())
            for d in got.values():
                # lastSeen: when a was last seen alive (its last beat, before the kill); the
                # diff's timestamp: when a survivor's sweep ended it, by the same clock
                held = server_time(d["timestamp"]) - server_time(d["lastSeen"])
                assert held < NODE_TIMEOUT + 1.5, d
        nodes_seen(2, b, c)  # each survivor has swept since a was gone
        survivors = [b.metrics(), c.metrics()]
        assert sum(m["presence_node_cleanups_total"] for m in survivors) == 1  # one of them
        probe = await Client.connect(b, "probe")  # published after any clean-up's diffs
        for watcher in (bob, carol):
            await watcher.diff_of("probe")  # exactly once
        for client in (alice, dave):
            await client.ws.close()

        # Back under the same name: the old connections stay gone; new ones count.
        a2 = start_node(start_daemon, redis_server.url, "--node-name", "alpha", port=a.port)
        assert presence(a2, "alice")["alice"]["connections"] == 0
        alice = await Client.connect(a2, "alice")
        diff = await bob.diff()
        assert (diff["userId"], diff["status"], diff["connections"]) == ("alice", "online", 1)
        nodes_seen(3, a2, b)  # a2 beat and swept, and b swept with a2 alive
        await probe.update("busy")  # published after all a2 and b did so far
        assert (await bob.diff_of("probe"))["status"] == "busy"  # nothing about dave
        assert presence(b, "dave")["dave"]["connections"] == 0

    asyncio.run(run(flow))


def test_a_quick_restart_under_the_same_name_ends_the_old_connections_at_once(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url, "--node-name", "alpha", node_timeout=30)
    b = start_node(start_daemon, redis_server.url, node_timeout=30)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice")
        assert a.proc is not None
        a.proc.kill()
        a.proc.wait()
        await alice.ws.close()
        start_node(start_daemon, redis_server.url, "--node-name", "alpha", port=a.port)
        diff = await bob.diff(timeout=5)  # long before the 30 s node timeout
        assert diff["status"] == "offline"

    asyncio.run(run(flow))


def test_sigterm_removes_the_nodes_connections_at_once(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url, grace=30)
    b = start_node(start_daemon, redis_server.url, grace=30)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice", "probe")
        a.signal(signal.SIGTERM)
        assert a.wait(10) in (0, -signal.SIGTERM)  # twistd re-raises the signal it got
        await alice.ws.close()
        users = presence(b, "alice")
        # gone from Redis at once; still present for the grace (a reconnect elsewhere
        # would be invisible), not for the node timeout
        assert users["alice"]["connections"] == 0
        assert redis_server.cli("HLEN", "presence:uc:alice") == "0"
        assert redis_server.cli("HKEYS", "presence:nodes").count("#") == 1
        await Client.connect(b, "probe")  # published after all a did before it exited
        await bob.diff_of("probe")  # no offline for alice

    asyncio.run(run(flow))


def test_grace_holds_across_nodes(start_daemon: Start, redis_server: RedisServer) -> None:
    """A probe user, dropped on the same node just after alice, shows when alice's grace
    would have run out: the probe's offline diff comes, and none for alice before or after."""
    grace = 1.5
    a = start_node(start_daemon, redis_server.url, grace=grace)
    b = start_node(start_daemon, redis_server.url, grace=grace)

    async def flow() -> None:
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice", "probe")
        alice = await Client.connect(a, "alice")
        assert (await bob.diff_of("alice"))["status"] == "online"
        probe = await Client.connect(a, "probe")
        assert (await bob.diff_of("probe"))["status"] == "online"
        alice.ws.transport.abort()  # a dropped TCP connection
        await asyncio.to_thread(gone, b, "alice")
        probe.ws.transport.abort()
        await asyncio.to_thread(gone, b, "probe")  # its grace ends after alice's
        alice = await Client.connect(b, "alice")  # back on another node within the grace
        diff = await bob.diff_of("probe", timeout=grace + 5)  # nothing about alice before
        assert diff["status"] == "offline"
        assert server_time(diff["timestamp"]) - server_time(diff["lastSeen"]) >= grace - 0.002
        await Client.connect(b, "probe")  # published after any expiry of alice's grace
        assert (await bob.diff_of("probe"))["status"] == "online"  # nor after it
        alice.ws.transport.abort()
        diff = await bob.diff_of("alice", timeout=grace + 5)
        assert diff["status"] == "offline"
        # lastSeen: when b saw the drop; the timestamp: when the grace's expiry reached bob.
        # Both by the server's clock: the grace, and at most a reaper tick and a bit more.
        held = server_time(diff["timestamp"]) - server_time(diff["lastSeen"])
        assert grace - 0.002 <= held < grace + 2.0, diff
        assert b.metrics()["ws_connections_current"] == 2  # bob and the probe

    asyncio.run(run(flow))


def test_redis_restart_degrades_then_converges(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url)
    b = start_node(start_daemon, redis_server.url)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        fay = await Client.connect(a, "fay")
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice", "fay", "carol")
        redis_server.stop()
        for node in (a, b):
            health = wait_health(node, 503)
            assert health["status"] == "DEGRADED" and "redis" in health["reason"]
            assert node.metrics()["presence_redis_up"] == 0
        # Local clients are still served: heartbeats, connects, local presence.
        await alice.send("HEARTBEAT")
        assert (await alice.next())["type"] == "HEARTBEAT_ACK"
        carol = await Client.connect(b, "carol")
        diff = await bob.diff()
        assert (diff["userId"], diff["status"]) == ("carol", "online")
        await alice.disconnect()  # an offline Redis never heard of
        await fay.update("busy")
        await fay.handled()  # a applied it, on its own
        assert a.get("/presence/alice")[0] == 503

        redis_server.start()  # same port, no data: everything is re-registered
        for node in (a, b):
            wait_health(node, 200, timeout=15)
        got = {}
        while len(got) < 2:
            diff = await bob.diff(timeout=8)
            got[diff["userId"]] = diff
        assert got["alice"]["status"] == "offline" and got["alice"]["lastSeen"]
        assert got["fay"]["status"] == "busy"
        users = presence(a, "alice", "fay", "carol", "bob")
        assert [users[u]["status"] for u in ("alice", "fay", "carol", "bob")] == [
            "offline",
            "busy",
            "online",
            "online",
        ]
        await bob.subscribe("probe")
        await Client.connect(a, "probe")  # published after all a did since Redis came back
        await bob.diff_of("probe")  # no flapping afterwards
        await carol.update("away")
        assert (await bob.diff())["status"] == "away"

    asyncio.run(run(flow))


def test_a_cut_to_redis_heals_and_a_long_one_ends_then_restores_presence(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> None:
    proxy = tcp_proxy(redis_server.port)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    a = start_node(start_daemon, via_proxy, node_timeout=3)
    b = start_node(start_daemon, redis_server.url, node_timeout=3)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        probe = await Client.connect(b, "probe")  # on the node whose Redis is never cut
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice", "probe")
        local = await Client.connect(a, "lou")
        await local.subscribe("alice", "probe")

        proxy.cut()  # shorter than the node timeout: nobody else notices
        wait_health(a, 503)
        await alice.update("busy")
        assert (await local.diff())["status"] == "busy"  # local presence still works
        await alice.handled()  # served all along
        proxy.restore()
        wait_health(a, 200, timeout=10)  # re-registered and re-read: serving again
        diff = await bob.diff()
        assert diff["status"] == "busy"
        await probe.update("away")  # published after all a did on re-registering
        await bob.diff_of("probe")  # alice's change once
        await local.diff_of("probe")  # told already

        proxy.cut()  # longer than the node timeout: b ends a's connections
        diff = await bob.diff(timeout=6)
        assert diff["status"] == "offline"
        proxy.restore()  # a re-registers alice, who never left
        wait_health(a, 200, timeout=10)
        diff = await bob.diff(timeout=6)
        assert (diff["status"], diff["connections"]) == ("busy", 1)
        assert presence(b, "alice")["alice"]["status"] == "busy"
        await probe.update("busy")
        await local.diff_of("probe")  # nothing about alice, who never left on a

    asyncio.run(run(flow))


def test_a_hung_redis_is_noticed_by_the_beat_and_recovers_without_flapping(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> None:
    proxy = tcp_proxy(redis_server.port)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    # replies due within 2 s, a beat every second: a's liveness key (6 s) outlives both
    a = start_node(start_daemon, via_proxy, node_timeout=6)
    b = start_node(start_daemon, redis_server.url, node_timeout=6)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        await bob.subscribe("alice")
        proxy.pause()  # accepts, holds, answers nothing; no client writes anything
        health = wait_health(a, 503, timeout=10)
        assert "redis" in health["reason"]
        await alice.send("HEARTBEAT")
        assert (await alice.next())["type"] == "HEARTBEAT_ACK"
        proxy.resume()
        for node in (a, b):
            wait_health(node, 200, timeout=10)
        assert a.metrics()["presence_redis_errors_total"] >= 1
        await alice.update("away")  # published after anything about alice before it
        assert (await bob.diff_of("alice"))["status"] == "away"  # alice never left
        assert b.metrics()["presence_node_cleanups_total"] == 0  # nor were a's ended

    asyncio.run(run(flow))


def test_a_password_from_a_file_and_a_wrong_one(start_daemon: Start, tmp_path: Path) -> None:
    server = RedisServer(tmp_path, None, "--requirepass", "s3cret").start()
    try:
        good, bad = tmp_path / "good", tmp_path / "bad"
        good.write_text("s3cret\n")
        bad.write_text("nope\n")
        a = start_node(start_daemon, server.url, "--redis-password-file", str(good))
        b = start_daemon("--redis", server.url, "--redis-password-file", str(bad))
        health = wait_health(b, 503)
        assert health["status"] == "DEGRADED" and "redis" in health["reason"]

        async def flow() -> None:
            alice = await Client.connect(a, "alice")
            await alice.update("busy")
            await alice.handled()  # a sent it to Redis: its read below comes after
            assert presence(a, "alice")["alice"]["status"] == "busy"

        asyncio.run(run(flow))
    finally:
        server.stop()


def test_connections_per_user_cap_holds_across_nodes(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a, b = (
        start_node(start_daemon, redis_server.url, "--max-connections-per-user", "2")
        for _ in range(2)
    )

    async def flow() -> None:
        await Client.connect(a, "u")
        await Client.connect(b, "u")  # two, one on each node: each node alone sees one
        third = await websockets.connect(b.ws_url + "?userId=u")
        closed = None
        try:
            message = await asyncio.wait_for(third.recv(), 5)
        except websockets.ConnectionClosed as e:
            closed = e.rcvd
        else:
            raise AssertionError(f"refused only after {message}")
        assert closed is not None
        assert (closed.code, closed.reason) == (1013, "too many connections for this user")
        assert presence(a, "u")["u"]["connections"] == 2
        other = await Client.connect(a, "someone-else")  # the cap is per user
        await other.send("HEARTBEAT")
        assert (await other.next())["type"] == "HEARTBEAT_ACK"

    asyncio.run(run(flow))


def test_users_online_is_the_clusters_count_on_every_node(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a, b = (start_node(start_daemon, redis_server.url) for _ in range(2))

    def online_everywhere(expected: float) -> None:
        wait_until(  # refreshed on each node's beat
            lambda: (
                [node.metrics()["presence_users_online"] for node in (a, b)] == [expected, expected]
            ),
            f"presence_users_online {expected} on both",
        )

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        await Client.connect(b, "bob")
        await Client.connect(b, "alice")  # one user on two nodes counts once
        online_everywhere(2)
        await alice.disconnect()
        online_everywhere(2)  # alice is still present through her other connection
        await Client.close_all()
        online_everywhere(0)  # grace 0 in these tests: offline at once

    asyncio.run(run(flow))
