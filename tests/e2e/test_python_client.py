"""The Python client (clients/python) against the real daemon: watching and rooms, a
daemon restarted under it, tokens refused, refreshed and expired, and presence-watch run
as a command. Waits are on observable state with deadlines."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from presence_client import (
    CLOSED,
    CONNECTING,
    OPEN,
    Backoff,
    Change,
    ConnectionChange,
    ErrorChange,
    Member,
    PresenceClient,
    RoomChange,
    UserChange,
)

from tests.support.daemon import Daemon

pytestmark = pytest.mark.e2e

SECRET = "p" * 48
WATCH = Path(sys.executable).with_name("presence-watch")


def fast() -> Backoff:
    """The real schedule, capped low so that a restart test does not wait 30 s."""
    return Backoff(cap=2.0)


def token(sub: str, exp_in: float = 300, secret: str = SECRET, **claims: Any) -> str:
    claims = {"sub": sub, "exp": int(time.time() + exp_in), **claims}
    return jwt.encode(claims, secret, algorithm="HS256")


class Seen(list[Change]):
    """The changes a client yielded so far; ``await seen.task`` once the client stopped
    has them all."""

    task: asyncio.Task[None]


def collect(client: PresenceClient) -> Seen:
    """Every change the client yields, appended as it comes (until the client stops)."""
    seen = Seen()

    async def run() -> None:
        async for change in client.changes():
            seen.append(change)

    seen.task = asyncio.get_running_loop().create_task(run())
    return seen


def states(seen: list[Change]) -> list[str]:
    return [c.state for c in seen if isinstance(c, ConnectionChange)]


async def until(predicate: Callable[[], object], timeout: float, what: str = "") -> None:
    """Poll ``predicate`` (it may ask the daemon over HTTP) until true, or fail."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


def test_watch_join_and_a_daemon_restart(start_daemon: Callable[..., Daemon]) -> None:
    args = ("--heartbeat-interval", "1", "--heartbeat-timeout", "3")
    first = start_daemon(*args)
    url = first.ws_url

    async def flow() -> None:
        alice = PresenceClient(url, user_id="alice", backoff=fast())
        ops = PresenceClient(url, user_id="ops", backoff=fast())
        async with alice, ops:
            seen = collect(ops)
            # Asked before the connection is open: remembered, sent once it is.
            await alice.set_status("busy", {"doc": 1})
            await alice.join("doc:42", {"cursor": 3})
            await ops.wait_open(10)
            await ops.watch(["alice", "bob"])
            await ops.join("doc:42")
            assert ops.user("bob") is not None and ops.user("bob").status == "offline"  # type: ignore[union-attr]

            def synced() -> bool:
                user, room = ops.user("alice"), ops.room("doc:42")
                return (
                    user is not None
                    and (user.status, dict(user.metadata)) == ("busy", {"doc": 1})
                    and room is not None
                    and room.count == 2
                    and room.members.get("alice") == Member("busy", {"cursor": 3}, 1)
                    and "ops" in room.members
                )

            await ops.wait_until(synced, 10)
            assert any(isinstance(c, UserChange) and c.user_id == "alice" for c in seen)
            assert any(isinstance(c, RoomChange) and c.room == "doc:42" for c in seen)
            # Both keep the connection alive past the 3 s heartbeat timeout on their own.
            heartbeats = 'ws_messages_total{type="HEARTBEAT"}'
            await until(lambda: first.metrics().get(heartbeats, 0) >= 8, 15, "heartbeats")
            assert states(seen) == [CONNECTING, OPEN]

            await asyncio.to_thread(first.stop)
            await ops.wait_until(lambda: ops.state != OPEN, 10)
            second = await asyncio.to_thread(start_daemon, *args, port=first.port)
            await until(lambda: states(seen).count(OPEN) == 2, 30, "ops reconnected")
            closed = [c for c in seen if isinstance(c, ConnectionChange) and c.state == CLOSED]
            assert (closed[0].code, closed[0].reason) == (1001, "server shutting down")
            assert closed[0].retry_in is not None and closed[0].retry_in <= 1.0
            assert not any(c.final for c in closed)

            # The new daemon knew nothing: the clients told it everything again.
            def restored() -> bool:
                _, user = second.get_json("/presence/alice")
                _, room = second.get_json("/rooms/doc:42")
                return (
                    (user["status"], user["metadata"]) == ("busy", {"doc": 1})
                    and room["count"] == 2
                    and room["members"].get("alice", {}).get("metadata") == {"cursor": 3}
                )

            await until(restored, 15, "the daemon has alice's status and both members")
            await ops.wait_until(synced, 10)
            # ops watches and is in the room again: later changes reach it.
            await alice.set_status("away")
            await ops.wait_until(
                lambda: (
                    ops.user("alice").status == "away"  # type: ignore[union-attr]
                    and ops.room("doc:42").members["alice"].status == "away"
                ),  # type: ignore[union-attr]
                10,
            )
            async with PresenceClient(url, user_id="bob") as bob:
                await bob.join("doc:42")
                await ops.wait_until(
                    lambda: (
                        "bob" in ops.room("doc:42").members  # type: ignore[union-attr]
                        and ops.user("bob").status == "online"
                    ),  # type: ignore[union-attr]
                    10,
                )
            # bob closed with 1000: gone at once, for watchers and for the room.
            await ops.wait_until(
                lambda: (
                    "bob" not in ops.room("doc:42").members  # type: ignore[union-attr]
                    and ops.user("bob").status == "offline"
                ),  # type: ignore[union-attr]
                10,
            )
            await ops.leave("doc:42")
            await ops.unwatch(["alice"])
            assert ops.room("doc:42") is None and ops.user("alice") is None
        await seen.task
        assert states(seen)[-2:] == ["CLOSING", CLOSED] and ops.stopped

    asyncio.run(asyncio.wait_for(flow(), 60))


@pytest.fixture
def jwt_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    (tmp_path / "jwt.secret").write_text(SECRET + "\n")
    return start_daemon(
        "--auth",
        "jwt",
        "--jwt-secret-file",
        str(tmp_path / "jwt.secret"),
        "--token-grace",
        "0",
        "--allowed-origins",
        "https://app.example.com",  # pages; a client without an Origin is no page
    )


def test_a_refused_token_stops_the_retries(jwt_daemon: Daemon) -> None:
    forged = token("alice", secret="z" * 47)

    async def flow() -> None:
        async with PresenceClient(jwt_daemon.ws_url, user_id="alice", token=forged) as client:
            seen = [change async for change in client.changes()]
        final = seen[-1]
        assert isinstance(final, ConnectionChange) and final.final
        assert (final.code, final.reason) == (1008, "token signature invalid")
        assert states(seen) == [CONNECTING, CLOSED]  # one attempt, no retries
        assert client.stopped_reason == "token signature invalid"

    asyncio.run(asyncio.wait_for(flow(), 20))


def test_tokens_refreshed_before_exp_and_renewed_after_token_expired(jwt_daemon: Daemon) -> None:
    async def flow() -> None:
        # One client refreshes each short token before it expires: one connection throughout.
        refreshing = PresenceClient(
            jwt_daemon.ws_url,
            user_id="alice",
            token=token("alice", exp_in=3),
            get_token=lambda: token("alice", exp_in=3),
        )
        # The other gets the same token back while connected, so the daemon closes it with
        # 1008 token expired; then it asks for a new one and reconnects.
        stale = token("bob", exp_in=2)

        def bobs_token() -> str:
            return stale if expiring.state == OPEN else token("bob")

        expiring = PresenceClient(
            jwt_daemon.ws_url, user_id="bob", token=stale, get_token=bobs_token, backoff=fast()
        )
        async with refreshing, expiring:
            seen, bobs = collect(refreshing), collect(expiring)
            refreshes = 'ws_messages_total{type="REFRESH_TOKEN"}'
            await until(lambda: jwt_daemon.metrics().get(refreshes, 0) >= 2, 20, "two refreshes")
            await until(lambda: states(bobs).count(OPEN) == 2, 20, "bob reconnected")
            assert states(seen) == [CONNECTING, OPEN]
            assert not any(isinstance(c, ErrorChange) for c in seen)
            closed = [c for c in bobs if isinstance(c, ConnectionChange) and c.state == CLOSED]
            assert [(c.code, c.reason, c.final) for c in closed] == [(1008, "token expired", False)]

    asyncio.run(asyncio.wait_for(flow(), 40))


# -- presence-watch --------------------------------------------------------------------------


class Watch:
    """presence-watch as a subprocess, its stdout read line by line with deadlines."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(WATCH), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout: float = 10.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s") from None

    def text(self, count: int) -> list[str]:
        """The next ``count`` lines without their time."""
        return [self.next().split(" ", 1)[1] for _ in range(count)]

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, err


def test_presence_watch_prints_lines_and_json(daemon: Daemon) -> None:
    url = daemon.ws_url.rstrip("/")
    human = Watch("--url", url, "--user-id", "ops", "alice", "--room", "doc:42")
    as_json = Watch("--url", url, "--user-id", "ops2", "alice", "--room", "doc:43", "--json")
    try:
        assert human.text(4) == [
            "connection CONNECTING",
            "connection OPEN",
            "user alice: offline",
            "room doc:42 state: ops joined (online); 1 in the room",
        ]
        first = [json.loads(as_json.next()) for _ in range(4)]
        assert [(o["type"], o.get("state")) for o in first] == [
            ("connection", CONNECTING),
            ("connection", OPEN),
            ("user", None),
            ("room", None),
        ]
        assert first[3]["snapshot"] and list(first[3]["joins"]) == ["ops2"]

        async def alice() -> None:
            async with PresenceClient(daemon.ws_url, user_id="alice") as client:
                await client.wait_open(10)
                await client.set_status("busy", {"note": "line\nuser bob: busy"})
                await client.join("doc:42")
                await client.join("doc:43")
                await client.close()

        asyncio.run(asyncio.wait_for(alice(), 20))
        # User text is escaped: the newline in the metadata cannot start a line of its own.
        assert human.text(3) == [
            "user alice: online (1 connection)",
            'user alice: busy (1 connection) {"note":"line\\nuser bob: busy"}',
            "room doc:42 diff: alice joined (busy); 2 in the room",
        ]
        # A close 1000: offline at once, then out of the room (the daemon's order).
        assert human.text(1)[0].startswith("user alice: offline (last seen 20")
        assert human.text(1) == ["room doc:42 diff: alice left; 1 in the room"]
        objects = [json.loads(as_json.next()) for _ in range(5)]
        assert [o["type"] for o in objects] == ["user", "user", "room", "user", "room"]
        assert objects[1]["user"]["metadata"] == {"note": "line\nuser bob: busy"}
        assert objects[1]["previous"]["status"] == "online"
        assert list(objects[2]["joins"]) == ["alice"] and objects[2]["count"] == 2
        assert objects[3]["user"]["status"] == "offline" and objects[3]["user"]["lastSeen"]
        assert list(objects[4]["leaves"]) == ["alice"] and objects[4]["count"] == 1
    finally:
        results = [human.interrupt(), as_json.interrupt()]
    assert results == [(0, ""), (0, "")]


def test_presence_watch_stops_on_a_refused_token_and_refuses_bad_arguments(
    jwt_daemon: Daemon,
) -> None:
    forged = token("ops", secret="z" * 47)
    url = jwt_daemon.ws_url
    done = subprocess.run(
        [str(WATCH), "--url", url, "--user-id", "ops", "--token", forged, "alice"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 1
    assert done.stderr == "presence-watch: stopped: token signature invalid\n"
    assert done.stdout.splitlines()[-1].endswith(
        "connection CLOSED 1008 token signature invalid; stopped"
    )
    bad = subprocess.run(
        [str(WATCH), "--url", "http://127.0.0.1:1", "--user-id", "ops", "alice"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stdout == ""
