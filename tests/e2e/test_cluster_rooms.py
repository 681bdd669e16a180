"""Rooms across real `twistd presence` processes on one real redis-server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest

from tests.support.cluster_client import Client, await_until, start_node, wait_health
from tests.support.daemon import Daemon
from tests.support.redis_fixture import RedisServer, TcpProxy, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

Start = Callable[..., Daemon]


async def run(flow: Callable[[], Awaitable[None]]) -> None:
    try:
        await flow()
    finally:
        await Client.close_all()


async def join(client: Client, room: str, metadata: Any = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"room": room}
    if metadata is not None:
        payload["metadata"] = metadata
    await client.send("JOIN", **payload)
    state = await client.next()
    assert state["type"] == "ROOM_STATE", state
    return state


async def room_diff(client: Client, timeout: float = 5.0) -> dict[str, Any]:
    message = await client.next(timeout)
    assert message["type"] == "ROOM_DIFF", message
    return message


async def diffs_until_members(
    client: Client, view: set[str], want: set[str], timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Every ROOM_DIFF until the client's ``view`` of the members (its ROOM_STATE's, then
    the joins and leaves told since; kept up to date in place) is ``want``: a generous
    timeout per message, no quiet wait."""
    out = []
    while view != want:
        diff = await room_diff(client, timeout)
        view |= set(diff["joins"])
        view -= set(diff["leaves"])
        out.append(diff)
    return out


async def diffs_until_probe(
    client: Client, probe: str, timeout: float = 10.0
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every ROOM_DIFF before the one telling the join of ``probe`` (a user who joined the
    room after the change under test; room streams are ordered by version, so whatever
    came of that change came before it), and that one, which must tell the probe only."""
    out = []
    while probe not in (diff := await room_diff(client, timeout))["joins"]:
        out.append(diff)
    assert list(diff["joins"]) == [probe] and not diff["leaves"] and not diff["updates"], diff
    return out, diff


def member(status: str, metadata: Any, connections: int = 1) -> dict[str, Any]:
    return {"status": status, "metadata": metadata, "connections": connections}


def page(daemon: Daemon, room: str) -> Any:
    code, body = daemon.get_json(f"/rooms/{room}")
    assert code == 200, body
    return body


def test_two_users_in_one_room_on_two_nodes(start_daemon: Start, redis_server: RedisServer) -> None:
    a = start_node(start_daemon, redis_server.url)
    b = start_node(start_daemon, redis_server.url)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        state = await join(alice, "doc:1", {"cursor": 1})
        assert state["members"] == {"alice": member("online", {"cursor": 1})}
        assert (state["count"], state["complete"]) == (1, True)
        state = await join(bob, "doc:1")
        assert state["members"] == {
            "alice": member("online", {"cursor": 1}),
            "bob": member("online", {}),
        }
        diff = await room_diff(alice)
        assert (diff["joins"], diff["leaves"], diff["updates"], diff["count"]) == (
            {"bob": member("online", {})},
            {},
            {},
            2,
        )

        await bob.send("ROOM_UPDATE", room="doc:1", metadata={"cursor": 9})
        diff = await room_diff(alice)
        assert diff["updates"] == {"bob": member("online", {"cursor": 9})}
        # His own update is bob's next message: no diff of its own join came before it.
        assert (await room_diff(bob))["updates"] == diff["updates"]

        await alice.update("busy")  # her own presence: an update in her rooms
        diff = await room_diff(bob)
        assert diff["updates"] == {"alice": member("busy", {"cursor": 1})}
        await room_diff(alice)

        for node in (a, b):
            body = page(node, "doc:1")
            assert body["count"] == 2 and body["next"] is None
            assert body["members"]["bob"] == member("online", {"cursor": 9})

        await bob.send("LEAVE", room="doc:1")
        diff = await room_diff(alice)
        assert list(diff["leaves"]) == ["bob"] and diff["count"] == 1
        await bob.handled()  # nothing more for that room: the ACK is his next message

        await alice.disconnect()  # clean: she leaves at once
        await await_until(lambda: page(b, "doc:1")["count"] == 0, "the room empties")
        await bob.handled()  # nor of her leaving it

    asyncio.run(run(flow))


def test_an_editor_shows_who_is_in_the_document_across_three_nodes(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    """The issue's trial: three daemons on one Redis, one writer on each, cursors in the
    room metadata; everyone sees everyone, and every cursor move, in order."""
    nodes = [start_node(start_daemon, redis_server.url) for _ in range(3)]
    names = ["ann", "ben", "cat"]

    async def flow() -> None:
        writers = [
            await Client.connect(node, name) for node, name in zip(nodes, names, strict=True)
        ]
        views: list[set[str]] = []
        for i, writer in enumerate(writers):
            state = await join(writer, "doc:42", {"cursor": [i, 0]})
            views.append(set(state["members"]))
            for j in range(i):  # the earlier writers each get the join, from another node
                diffs = await diffs_until_members(writers[j], views[j], set(names[: i + 1]))
                assert diffs[-1]["joins"][names[i]] == member("online", {"cursor": [i, 0]})
        assert views[2] == set(names)
        for step in range(1, 4):  # ann moves her cursor three times
            await writers[0].send("ROOM_UPDATE", room="doc:42", metadata={"cursor": [0, step]})
        for other in writers[1:]:
            seen = [(await room_diff(other))["updates"]["ann"]["metadata"] for _ in range(3)]
            assert seen == [{"cursor": [0, 1]}, {"cursor": [0, 2]}, {"cursor": [0, 3]}]
        for node in nodes:
            body = page(node, "doc:42")
            assert body["count"] == 3 and sorted(body["members"]) == names
            assert body["members"]["ann"]["metadata"] == {"cursor": [0, 3]}

    asyncio.run(run(flow))


def test_a_join_storm_into_a_large_room_is_batched_on_every_node(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    options = ("--room-batch-threshold", "5", "--room-batch-interval", "0.5")
    nodes = [start_node(start_daemon, redis_server.url, *options) for _ in range(3)]
    joiners = [f"j{i:02d}" for i in range(36)]

    async def flow() -> None:
        observers = [await Client.connect(node, f"obs{i}") for i, node in enumerate(nodes)]
        names = {o.user_id for o in observers}
        states = [await join(observer, "big") for observer in observers]
        views = [set(state["members"]) for state in states]
        for observer, seen_by in zip(observers, views, strict=True):
            # the other observers' joins, told at once (small room)
            await diffs_until_members(observer, seen_by, names)

        clients = [await Client.connect(nodes[i % 3], u) for i, u in enumerate(joiners)]
        seen: list[list[dict[str, Any]]] = [[] for _ in observers]
        want = set(names)
        # Two bursts from 3 nodes; the second sent once every observer was told all of
        # the first (a batched diff of its own), so the storm spans batch windows.
        for wave in (clients[:18], clients[18:]):
            await asyncio.gather(*(join(c, "big") for c in wave))
            want |= {c.user_id for c in wave}
            for i, observer in enumerate(observers):
                seen[i] += await diffs_until_members(observer, views[i], want)

        probe = await Client.connect(nodes[0], "probe")
        await join(probe, "big")  # after every join of the storm, in the room's order
        for n, observer in enumerate(observers):
            rest, probed = await diffs_until_probe(observer, "probe")
            diffs = seen[n] + rest
            told = [u for d in diffs for u in d["joins"]]
            assert sorted(told) == joiners  # every join told, once
            assert all(not d["leaves"] and not d["updates"] for d in diffs)
            assert diffs[-1]["count"] == 3 + len(joiners)
            assert sum(d["count"] > 5 for d in diffs) >= 2  # the storm spans windows
            assert probed["count"] == 3 + len(joiners) + 1  # told once: nothing after
            diffs.append(probed)  # batched too: a window after the storm's last diff
            stamps = [datetime.fromisoformat(d["timestamp"].replace("Z", "+00:00")) for d in diffs]
            for i in range(1, len(diffs)):
                if diffs[i]["count"] > 5:  # a large room: one diff per window at most
                    gap = (stamps[i] - stamps[i - 1]).total_seconds()
                    assert gap >= 0.5 - 0.002, [(d["count"], d["timestamp"]) for d in diffs]
        assert page(nodes[0], "big")["count"] == 3 + len(joiners) + 1  # and the probe

    asyncio.run(run(flow))


def test_a_dead_nodes_members_leave_once_after_the_grace(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url, grace=1)
    b = start_node(start_daemon, redis_server.url, grace=1)
    c = start_node(start_daemon, redis_server.url, grace=1)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        dave = await Client.connect(a, "dave")
        bob = await Client.connect(b, "bob")
        carol = await Client.connect(c, "carol")
        states = [await join(client, "r") for client in (bob, carol, alice, dave)]
        everyone = {"alice", "bob", "carol", "dave"}
        for client, state in zip((bob, carol), states[:2], strict=True):
            await diffs_until_members(client, set(state["members"]), everyone)
        assert a.proc is not None
        a.proc.kill()  # kill -9
        for watcher in (bob, carol):
            left: dict[str, Any] = {}
            while len(left) < 2:
                diff = await room_diff(watcher, timeout=10)
                assert not diff["joins"]
                left.update(diff["leaves"])
            assert sorted(left) == ["alice", "dave"]
        probe = await Client.connect(b, "probe")
        await join(probe, "r")  # after both watchers were told the leaves
        for watcher in (bob, carol):
            rest, _ = await diffs_until_probe(watcher, "probe")  # exactly once
            assert all(not d["leaves"] and not d["joins"] for d in rest), rest
        assert sorted(page(b, "r")["members"]) == ["bob", "carol", "probe"]
        for client in (alice, dave):
            await client.ws.close()

    asyncio.run(run(flow))


def test_rooms_stay_local_while_redis_is_away_and_converge_after(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> None:
    proxy = tcp_proxy(redis_server.port)
    a = start_node(start_daemon, f"redis://127.0.0.1:{proxy.port}/0", node_timeout=30)
    b = start_node(start_daemon, redis_server.url, node_timeout=30)

    async def flow() -> None:
        lou = await Client.connect(a, "lou")
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        states = [await join(client, "r") for client in (lou, alice, bob)]
        for client, state in zip((lou, alice, bob), states, strict=True):
            await diffs_until_members(client, set(state["members"]), {"lou", "alice", "bob"})

        proxy.cut()
        wait_health(a, 503)
        assert a.get_json("/rooms/r")[0] == 503
        await alice.send("ROOM_UPDATE", room="r", metadata={"typing": True})
        diff = await room_diff(lou)  # local room presence keeps working
        assert diff["updates"] == {"alice": member("online", {"typing": True})}
        await room_diff(alice)
        mia = await Client.connect(a, "mia")
        state = await join(mia, "r")
        assert set(state["members"]) == {"lou", "alice", "bob", "mia"}
        assert list((await room_diff(lou))["joins"]) == ["mia"]
        await bob.send("LEAVE", room="r")  # on the other side of the cut
        await bob.handled()  # the LEAVE handled, and nothing else for bob

        proxy.restore()
        wait_health(a, 200, timeout=15)
        diff = await room_diff(lou)  # the net change it missed: bob left
        assert list(diff["leaves"]) == ["bob"] and not diff["joins"]
        assert diff["count"] == 3

        def converged() -> bool:
            members = page(b, "r")["members"]
            return set(members) == {"lou", "alice", "mia"} and members["alice"] == member(
                "online", {"typing": True}
            )

        await await_until(converged, "a's changes while away reach the cluster")
        watcher = await Client.connect(b, "wes")  # the probe: joins after all of that
        state = await join(watcher, "r")
        assert state["members"]["alice"] == member("online", {"typing": True})
        assert set(state["members"]) == {"lou", "alice", "mia", "wes"}
        rest, _ = await diffs_until_probe(lou, "wes")
        assert rest == []  # told once: wes's join is the next thing lou hears
        assert page(a, "r")["count"] == 4

    asyncio.run(run(flow))


def test_a_rejoin_on_another_node_within_the_grace_is_never_seen_leaving(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    a = start_node(start_daemon, redis_server.url, grace=30)
    b = start_node(start_daemon, redis_server.url, grace=30)

    async def flow() -> None:
        watcher = await Client.connect(b, "wes")
        await join(watcher, "r")
        alice = await Client.connect(a, "alice")
        await join(alice, "r", {"n": 1})
        assert list((await room_diff(watcher))["joins"]) == ["alice"]
        await alice.ws.close(code=1001)  # not a goodbye: she lingers for the grace
        diff = await room_diff(watcher)
        assert diff["updates"] == {"alice": member("online", {"n": 1}, 0)}
        again = await Client.connect(b, "alice")  # back, on the other node
        state = await join(again, "r")
        assert state["members"]["alice"] == member("online", {}, 1)
        probe = await Client.connect(a, "probe")  # on the node her first connection left
        await join(probe, "r")  # after her rejoin, in the room's order
        diffs, _ = await diffs_until_probe(watcher, "probe")
        assert all(not d["leaves"] and not d["joins"] for d in diffs), diffs
        assert diffs[-1]["updates"]["alice"]["connections"] == 1

    asyncio.run(run(flow))


def test_the_member_cap_holds_across_nodes_and_a_sigterm_keeps_the_grace(
    start_daemon: Start, redis_server: RedisServer
) -> None:
    cap = ("--max-room-members", "2")
    a = start_node(start_daemon, redis_server.url, *cap, grace=30)
    b = start_node(start_daemon, redis_server.url, *cap, grace=30)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        await join(alice, "r")
        await join(bob, "r")
        carol = await Client.connect(a, "carol")
        await carol.send("JOIN", room="r")
        refused = await carol.next()
        assert (refused["type"], refused["code"]) == ("ERROR", "ROOM_FULL")
        alice2 = await Client.connect(b, "alice")  # already a member: not refused
        assert (await join(alice2, "r"))["count"] == 2
        diff = await room_diff(bob)  # her second tab; nothing of carol's refused join
        assert diff["updates"] == {"alice": member("online", {}, 2)}, diff
        # Each node reads the cluster's totals on its own tick: wait for both to have.
        await await_until(
            lambda: b.metrics().get("presence_room_members_current") == 2, "the cluster's count"
        )
        await await_until(
            lambda: a.metrics().get("presence_rooms_current") == 1, "the cluster's rooms on a"
        )

        a.signal(signal.SIGTERM)  # alice's first tab ends with a's stop, into the grace
        assert a.wait(10) in (0, -signal.SIGTERM)
        diff = await room_diff(bob)
        assert diff["updates"] == {"alice": member("online", {}, 1)}
        # The room is full, so the probe is an update: alice's tab on b, after the stop.
        await alice2.send("ROOM_UPDATE", room="r", metadata={"probe": 1})
        diff = await room_diff(bob)  # the very next diff: nobody left before it
        assert (diff["joins"], diff["leaves"]) == ({}, {}), diff
        assert diff["updates"] == {"alice": member("online", {"probe": 1}, 1)}
        assert sorted(page(b, "r")["members"]) == ["alice", "bob"]

    asyncio.run(run(flow))


def test_a_node_taken_for_dead_re_registers_its_members(
    start_daemon: Start, redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> None:
    proxy = tcp_proxy(redis_server.port)
    a = start_node(start_daemon, f"redis://127.0.0.1:{proxy.port}/0", node_timeout=3)
    b = start_node(start_daemon, redis_server.url, node_timeout=3)

    async def flow() -> None:
        alice = await Client.connect(a, "alice")
        bob = await Client.connect(b, "bob")
        state = await join(alice, "r", {"x": 1})
        await join(bob, "r")
        await diffs_until_members(alice, set(state["members"]), {"alice", "bob"})

        proxy.cut()  # longer than the node timeout: b ends a's memberships
        diff = await room_diff(bob, timeout=10)
        assert list(diff["leaves"]) == ["alice"]
        proxy.restore()  # a re-registers alice's membership, which never ended
        wait_health(a, 200, timeout=15)
        diff = await room_diff(bob, timeout=10)
        assert diff["joins"] == {"alice": member("online", {"x": 1})}
        assert sorted(page(b, "r")["members"]) == ["alice", "bob"]
        probe = await Client.connect(b, "probe")
        await join(probe, "r")  # after the re-registration, in the room's order
        rest, _ = await diffs_until_probe(alice, "probe")  # its own node never saw
        assert all("alice" not in d["leaves"] for d in rest), rest  # alice leave

    asyncio.run(run(flow))
