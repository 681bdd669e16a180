"""Helpers for the cluster end-to-end tests: cluster nodes and a small websockets client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import websockets

from tests.support.daemon import Daemon

NODE_TIMEOUT = 2.0


def start_node(
    start_daemon: Callable[..., Daemon],
    redis_url: str,
    *extra: str,
    grace: float = 0,
    node_timeout: float = NODE_TIMEOUT,
    **kwargs: Any,
) -> Daemon:
    daemon = start_daemon(
        "--redis",
        redis_url,
        "--node-timeout",
        str(node_timeout),
        "--offline-grace",
        str(grace),
        "--heartbeat-interval",
        "1",
        "--heartbeat-timeout",
        "10",
        # These tests send bursts on purpose; the rate limit has tests of its own.
        "--rate-limit",
        "1000/1",
        *extra,
        **kwargs,
    )
    wait_health(daemon, 200)
    return daemon


def wait_health(daemon: Daemon, status: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = daemon.get_json("/health")
        if code == status:
            return dict(body)
        if time.monotonic() > deadline:
            raise AssertionError(f"/health stayed {code} {body}, wanted {status}")
        time.sleep(0.05)


def wait_until(
    check: Callable[[], Any], what: str, timeout: float = 10.0, step: float = 0.02
) -> Any:
    """Poll a real process's observable state until ``check`` answers something true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        time.sleep(step)


async def await_until(
    check: Callable[[], Any], what: str, timeout: float = 10.0, step: float = 0.02
) -> Any:
    """``wait_until`` for async flows: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        await asyncio.sleep(step)


def server_time(stamp: str) -> float:
    """A server's timestamp (ISO 8601 UTC to the millisecond, with a Z) in epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def presence(daemon: Daemon, *user_ids: str) -> dict[str, Any]:
    code, body = daemon.get_json("/presence?userIds=" + ",".join(user_ids))
    assert code == 200, body
    return dict(body["users"])


class Client:
    opened: list[Client] = []

    def __init__(self, ws: Any, user_id: str) -> None:
        self.ws = ws
        self.user_id = user_id
        Client.opened.append(self)

    @classmethod
    async def close_all(cls) -> None:
        """Close every client of this test so the daemons stop at once afterwards."""
        clients, cls.opened = cls.opened, []
        await asyncio.gather(*(c.ws.close() for c in clients), return_exceptions=True)

    @classmethod
    async def connect(cls, daemon: Daemon, user_id: str) -> Client:
        ws = await websockets.connect(daemon.ws_url + "?userId=" + user_id)
        client = cls(ws, user_id)
        assert (await client.next())["type"] == "CONNECT"
        return client

    async def send(self, kind: str, **payload: Any) -> None:
        message: dict[str, Any] = {"type": kind}
        if payload:
            message["payload"] = payload
        await self.ws.send(json.dumps(message))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def subscribe(self, *user_ids: str) -> dict[str, Any]:
        await self.send("SUBSCRIBE", userIds=list(user_ids))
        state = await self.next()
        assert state["type"] == "PRESENCE_STATE", state
        return dict(state["users"])

    async def update(self, status: str, metadata: dict[str, Any] | None = None) -> None:
        if metadata is None:
            await self.send("PRESENCE_UPDATE", status=status)
        else:
            await self.send("PRESENCE_UPDATE", status=status, metadata=metadata)

    async def diff(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.next(timeout)
        assert message["type"] == "PRESENCE_DIFF", message
        return message

    async def diff_of(self, user_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message, which must be a PRESENCE_DIFF about ``user_id``: an ordering
        proof that nothing else reached this client before it."""
        diff = await self.diff(timeout)
        assert diff["userId"] == user_id, diff
        return diff

    async def diffs_until(self, user_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every PRESENCE_DIFF up to the first one about ``user_id`` (a probe whose change
        was made after everything else), that one left out."""
        got = []
        while (diff := await self.diff(timeout))["userId"] != user_id:
            got.append(diff)
        return got

    async def handled(self) -> str:
        """A HEARTBEAT whose ACK is the very next message: the server has handled all this
        client sent before, and had nothing else for it. Returns the ACK's timestamp."""
        await self.send("HEARTBEAT")
        ack = await self.next()
        assert ack["type"] == "HEARTBEAT_ACK", ack
        return str(ack["timestamp"])

    async def disconnect(self) -> None:
        await self.send("DISCONNECT")
        await self.ws.wait_closed()

    async def close(self) -> None:
        await self.ws.close()
