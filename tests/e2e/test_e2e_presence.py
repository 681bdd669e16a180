"""Presence others can see, end to end: the real daemon, the `websockets` client.

No test sleeps to let something (not) happen: the absence of a message is shown by a
heartbeat's ACK coming next, once the server has handled what could have caused one; the
offline grace running out is shown by another user's grace running out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.daemon import Daemon, wait_until

pytestmark = pytest.mark.e2e

GRACE = 1.0


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon("--offline-grace", str(GRACE), "--heartbeat-timeout", "30")


async def connect(daemon: Daemon, user_id: str) -> ClientConnection:
    ws = await websockets.connect(f"{daemon.ws_url}?userId={user_id}")
    assert json.loads(await ws.recv())["type"] == "CONNECT"
    return ws


async def recv(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def nothing_more(ws: ClientConnection) -> None:
    """Proves the absence of a message: a heartbeat's ACK must be the very next one.

    The server handles one thing at a time and what it writes to one connection arrives in
    order, so once it has handled whatever could have sent ``ws`` a message (see
    ``handled``), that message would come before this ACK."""
    await ws.send(json.dumps({"type": "HEARTBEAT"}))
    assert (await recv(ws))["type"] == "HEARTBEAT_ACK"


async def handled(ws: ClientConnection) -> None:
    """Returns once the server has handled everything ``ws`` sent before (a heartbeat's
    ACK is the next message ``ws`` gets)."""
    await nothing_more(ws)


def dropped(daemon: Daemon, user_id: str) -> dict[str, Any]:
    """Waits until the server has seen the user's only connection go; what it then shows."""
    body: dict[str, Any] = {}

    def gone() -> bool:
        body.update(daemon.get_json(f"/presence/{user_id}")[1])
        return body["connections"] == 0

    wait_until(gone)
    return body


async def subscribe(ws: ClientConnection, *user_ids: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "SUBSCRIBE", "payload": {"userIds": list(user_ids)}}))
    state = await recv(ws)
    assert state["type"] == "PRESENCE_STATE"
    return state["users"]  # type: ignore[no-any-return]


async def update(ws: ClientConnection, status: str, metadata: dict[str, Any] | None = None) -> None:
    payload: dict[str, Any] = {"status": status}
    if metadata is not None:
        payload["metadata"] = metadata
    await ws.send(json.dumps({"type": "PRESENCE_UPDATE", "payload": payload}))


def test_two_users_watch_each_other(daemon: Daemon) -> None:
    async def flow() -> None:
        alice = await connect(daemon, "alice")
        state = await subscribe(alice, "bob")
        assert state == {
            "bob": {"status": "offline", "metadata": {}, "lastSeen": None, "connections": 0}
        }
        bob = await connect(daemon, "bob")
        diff = await recv(alice)
        assert diff["type"] == "PRESENCE_DIFF" and diff["userId"] == "bob"
        assert (diff["status"], diff["connections"], diff["lastSeen"]) == ("online", 1, None)
        assert (await subscribe(bob, "alice"))["alice"]["status"] == "online"

        await update(alice, "busy", {"activity": "call"})
        diff = await recv(bob)
        assert (diff["userId"], diff["status"], diff["metadata"]) == (
            "alice",
            "busy",
            {"activity": "call"},
        )
        await update(alice, "busy", {"activity": "call"})  # nothing visible changed
        await handled(alice)
        await nothing_more(bob)

        # A second tab changes only `connections`: no diff, but the HTTP API counts it.
        bob2 = await connect(daemon, "bob")  # its CONNECT comes after any diff it caused
        await nothing_more(alice)
        assert daemon.get_json("/presence/bob")[1]["connections"] == 2
        await bob2.close()

        await bob.send(json.dumps({"type": "DISCONNECT"}))
        diff = await recv(alice)
        assert diff["userId"] == "bob" and diff["status"] == "offline"
        assert diff["lastSeen"].endswith("Z") and diff["connections"] == 0
        status, body = daemon.get_json("/presence?userIds=alice,bob,carol")
        assert status == 200
        assert body["users"]["bob"] == {
            "status": "offline",
            "metadata": {},
            "lastSeen": diff["lastSeen"],
            "connections": 0,
        }
        assert body["users"]["alice"]["status"] == "busy"
        assert body["users"]["carol"]["lastSeen"] is None
        await alice.close()

    asyncio.run(flow())


def test_abrupt_drop_is_offline_only_after_the_grace(daemon: Daemon) -> None:
    async def flow() -> None:
        watcher = await connect(daemon, "watcher")
        await subscribe(watcher, "alice")
        alice = await connect(daemon, "alice")
        assert (await recv(watcher))["status"] == "online"
        alice.transport.abort()  # no close frame: a dropped TCP connection
        assert (await asyncio.to_thread(dropped, daemon, "alice"))["status"] == "online"
        await nothing_more(watcher)  # no diff when the drop was seen
        diff = await recv(watcher, timeout=GRACE + 5)
        assert diff["status"] == "offline" and diff["lastSeen"] is not None
        await watcher.close()

    asyncio.run(flow())


def test_reconnect_inside_the_grace_is_invisible(daemon: Daemon) -> None:
    """A probe user, dropped just after alice, shows when alice's grace would have run out:
    the probe's offline diff comes, and none for alice before or after it."""

    async def flow() -> None:
        watcher = await connect(daemon, "watcher")
        await subscribe(watcher, "alice", "probe")
        alice = await connect(daemon, "alice")
        await update(alice, "away")
        assert (await recv(watcher))["status"] == "online"
        assert (await recv(watcher))["status"] == "away"
        probe = await connect(daemon, "probe")
        assert (await recv(watcher))["userId"] == "probe"
        alice.transport.abort()
        await asyncio.to_thread(dropped, daemon, "alice")
        probe.transport.abort()
        await asyncio.to_thread(dropped, daemon, "probe")  # its grace ends after alice's
        alice = await connect(daemon, "alice")  # back, online again: one visible change
        diff = await recv(watcher)
        assert (diff["userId"], diff["status"], diff["lastSeen"]) == ("alice", "online", None)
        diff = await recv(watcher, timeout=GRACE + 5)
        assert (diff["userId"], diff["status"]) == ("probe", "offline")
        await nothing_more(watcher)
        await alice.close()
        await watcher.close()

    asyncio.run(flow())
    samples = daemon.metrics()
    assert samples["presence_offline_suppressed_total"] == 1
    assert samples['presence_transitions_total{to="away"}'] == 1


def test_subscription_limit_and_errors(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--max-subscriptions", "2")

    async def flow() -> None:
        ws = await connect(daemon, "w")
        await subscribe(ws, "a")
        await ws.send(json.dumps({"type": "SUBSCRIBE", "payload": {"userIds": ["b", "c"]}}))
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("ERROR", "TOO_MANY_SUBSCRIPTIONS")
        await ws.close()

    asyncio.run(flow())
    assert daemon.metrics()["presence_subscriptions_current"] == 0


def test_http_query_errors(daemon: Daemon) -> None:
    assert daemon.get_json("/presence?userIds=" + ",".join(str(i) for i in range(1001)))[0] == 400
    status, body = daemon.get_json("/presence?userIds=a,%20b")
    assert status == 400 and body["error"] == "INVALID_USER_ID"
    status, body = daemon.get_json("/presence/nobody")
    assert status == 200 and body == {
        "userId": "nobody",
        "status": "offline",
        "metadata": {},
        "lastSeen": None,
        "connections": 0,
    }
