"""Rooms end to end: the real daemon, `websockets` clients, signed tokens.

Absence is shown the way the other e2e tests show it: a HEARTBEAT's ACK arriving next."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.daemon import Daemon

pytestmark = pytest.mark.e2e

SECRET = "r" * 48
ORIGIN = "https://app.example.com"


async def connect(daemon: Daemon, user_id: str, token: str | None = None) -> ClientConnection:
    url = f"{daemon.ws_url}?userId={user_id}" + (f"&token={token}" if token else "")
    ws = await websockets.connect(url, origin=ORIGIN, max_queue=None)  # type: ignore[arg-type]
    assert json.loads(await ws.recv())["type"] == "CONNECT"
    return ws


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def until_ack(ws: ClientConnection) -> list[dict[str, Any]]:
    """Everything ``ws`` gets before the ACK of a HEARTBEAT sent now."""
    await ws.send(json.dumps({"type": "HEARTBEAT"}))
    seen = []
    while (message := await recv(ws))["type"] != "HEARTBEAT_ACK":
        seen.append(message)
    return seen


async def join(ws: ClientConnection, room: str, metadata: Any = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"room": room}
    if metadata is not None:
        payload["metadata"] = metadata
    await ws.send(json.dumps({"type": "JOIN", "payload": payload}))
    return await recv(ws)


def test_two_users_in_one_room_with_cursors(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--heartbeat-timeout", "30")

    async def flow() -> None:
        alice, bob = await connect(daemon, "alice"), await connect(daemon, "bob")
        state = await join(alice, "doc:42", {"cursor": {"line": 1}})
        assert state["type"] == "ROOM_STATE" and state["count"] == 1
        state = await join(bob, "doc:42", {"cursor": {"line": 9}})
        assert set(state["members"]) == {"alice", "bob"}
        diff = await recv(alice)
        assert diff["type"] == "ROOM_DIFF"
        assert diff["joins"] == {
            "bob": {"status": "online", "metadata": {"cursor": {"line": 9}}, "connections": 1}
        }
        update = {"room": "doc:42", "metadata": {"cursor": {"line": 10}}}
        await bob.send(json.dumps({"type": "ROOM_UPDATE", "payload": update}))
        diff = await recv(alice)
        assert diff["updates"]["bob"]["metadata"] == {"cursor": {"line": 10}}
        status, body = await asyncio.to_thread(daemon.get_json, "/rooms/doc:42")
        assert status == 200 and body["count"] == 2 and set(body["members"]) == {"alice", "bob"}
        await bob.close()  # a close 1000: leaves at once
        diff = await recv(alice)
        assert list(diff["leaves"]) == ["bob"] and diff["count"] == 1
        await alice.close()
        metrics = await asyncio.to_thread(daemon.metrics)
        assert metrics["presence_room_diffs_sent_total"] >= 3

    asyncio.run(flow())


def test_a_join_storm_into_a_large_room_is_batched(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(
        "--heartbeat-timeout",
        "60",
        "--room-batch-threshold",
        "20",
        "--room-batch-interval",
        "0.5",
        "--rate-limit",
        "1000/1",
    )
    storm = 150

    async def flow() -> None:
        watcher = await connect(daemon, "watcher")
        assert (await join(watcher, "hall"))["count"] == 1
        users = await asyncio.gather(*(connect(daemon, f"u{i}") for i in range(storm)))
        await asyncio.gather(*(join(ws, "hall") for ws in users))
        joined: list[str] = []
        stamps: list[float] = []
        while len(joined) < storm:
            diff = await recv(watcher, timeout=10)
            if diff["type"] == "ROOM_DIFF":
                if diff["count"] > 21:  # past the threshold (20 members): batched
                    stamps.append(datetime.fromisoformat(diff["timestamp"]).timestamp())
                joined += list(diff["joins"])
        assert sorted(joined) == sorted(f"u{i}" for i in range(storm))  # each told once
        # One diff per half-second window at most, by the server's own clock.
        assert all(b - a >= 0.499 for a, b in itertools.pairwise(stamps))
        assert len(stamps) < storm - 20
        _, body = await asyncio.to_thread(daemon.get_json, "/rooms/hall?limit=1000")
        assert body["count"] == storm + 1
        for ws in users:
            await ws.close()
        await watcher.close()

    asyncio.run(flow())


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300, **claims}, SECRET, "HS256")


def test_grants_with_signed_tokens_and_a_narrowing_refresh(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    (tmp_path / "jwt.secret").write_text(SECRET)
    daemon = start_daemon(
        "--auth",
        "jwt",
        "--jwt-secret-file",
        str(tmp_path / "jwt.secret"),
        "--allowed-origins",
        ORIGIN,
        "--heartbeat-timeout",
        "30",
    )

    async def flow() -> None:
        bob = await connect(daemon, "bob", token("bob", rooms=["doc:*"]))
        assert (await join(bob, "doc:1"))["type"] == "ROOM_STATE"
        assert (await join(bob, "chat:1"))["code"] == "FORBIDDEN"
        nobody = await connect(daemon, "eve", token("eve"))
        await nobody.send(json.dumps({"type": "SUBSCRIBE", "payload": {"userIds": ["bob"]}}))
        assert (await recv(nobody))["code"] == "FORBIDDEN"
        assert (await join(nobody, "doc:1"))["code"] == "FORBIDDEN"
        agent = await connect(daemon, "agent", token("agent", watch=["*"], rooms=["doc:*"]))
        await agent.send(json.dumps({"type": "SUBSCRIBE", "payload": {"userIds": ["bob"]}}))
        assert (await recv(agent))["type"] == "PRESENCE_STATE"
        assert (await join(agent, "doc:1"))["count"] == 2
        assert [m["type"] for m in await until_ack(bob)] == ["ROOM_DIFF"]
        narrower = token("agent", watch=[], rooms=[])
        await agent.send(json.dumps({"type": "REFRESH_TOKEN", "payload": {"token": narrower}}))
        error = await recv(agent)
        assert error["code"] == "FORBIDDEN" and "bob" in error["message"]
        assert "doc:1" in error["message"]
        (leave,) = await until_ack(bob)
        assert list(leave["leaves"]) == ["agent"]
        update = {"room": "doc:1", "metadata": {"x": 1}}
        await bob.send(json.dumps({"type": "ROOM_UPDATE", "payload": update}))
        await bob.send(json.dumps({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}}))
        await until_ack(bob)
        assert await until_ack(agent) == []  # nothing more of bob, nor of doc:1
        for ws in (bob, nobody, agent):
            await ws.close()

    asyncio.run(flow())
