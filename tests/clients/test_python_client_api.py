"""PresenceClient's argument checks, without a server (nothing here opens a socket)."""

from __future__ import annotations

import asyncio

import pytest
from presence_client import PresenceClient, PresenceClosed


@pytest.mark.parametrize("url", ["http://h:3000", "h:3000", "ws://", "wss:///x"])
def test_only_websocket_urls(url: str) -> None:
    with pytest.raises(ValueError, match="ws:// or wss://"):
        PresenceClient(url, user_id="ops")


@pytest.mark.parametrize("user_id", ["", "a b", "x" * 129, "a\x00"])
def test_user_ids_follow_the_daemon_rule(user_id: str) -> None:
    with pytest.raises(ValueError, match="invalid userId"):
        PresenceClient("ws://h:3000", user_id=user_id)


def test_commands_are_checked_before_anything_is_sent() -> None:
    async def flow() -> None:
        client = PresenceClient("ws://h:3000", user_id="ops")  # never started: no socket
        with pytest.raises(ValueError, match="status must be one of"):
            await client.set_status("offline")
        with pytest.raises(TypeError, match="mapping"):
            await client.set_status("busy", ["not", "an", "object"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="not one string"):
            await client.watch("alice")
        with pytest.raises(ValueError, match="invalid userId"):
            await client.watch(["alice", "b ob"])
        with pytest.raises(ValueError, match="invalid room name"):
            await client.join("doc 42")
        with pytest.raises(ValueError, match="join it first"):
            await client.update_room("doc:42", {})
        # Not connected: remembered for the connection to come, nothing waits.
        await client.set_status("away", {"a": 1})
        await client.watch(["alice", "alice", "bob"])
        await client.join("doc:42")
        await client.leave("nowhere")
        assert client.state == "CLOSED" and client.user("alice") is None
        await client.close()
        assert client.stopped
        with pytest.raises(PresenceClosed):
            await client.set_status("busy")
        assert [c async for c in client.changes()][-1].final  # type: ignore[union-attr]

    asyncio.run(flow())
