"""Webhooks from a real cluster on one real redis-server to a real receiver on loopback that
verifies every request with the ``standardwebhooks`` library: a node killed while events
are pending (a survivor delivers them) and a restart (nothing lost)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support.cluster_client import Client, start_node, wait_until
from tests.support.daemon import Daemon
from tests.support.redis_fixture import RedisServer, needs_redis

pytestmark = [pytest.mark.e2e, needs_redis]

Start = Callable[..., Daemon]
SHARDS = 16


class Receiver:
    """Answers 500 while ``failing``, else 200; counts the 200s per webhook-id and how many
    requests of one user were in flight at once."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.failing = True
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()  # webhook-id -> 200s given
        self.accepted: dict[str, list[str]] = defaultdict(list)  # userId -> types, in order
        self.attempts = 0
        self.bad: list[str] = []
        self.busy: Counter[str] = Counter()
        self.most_at_once = 0
        self.open_requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with receiver.lock:
                    receiver.open_requests += 1
                try:
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                    code = receiver.handle(dict(self.headers.items()), body)
                finally:
                    with receiver.lock:
                        receiver.open_requests -= 1
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            self.verifier.verify(body, {k.lower(): v for k, v in headers.items()})
        except Exception as e:
            with self.lock:
                self.bad.append(str(e))
            return 400
        event = json.loads(body)
        user = event["data"].get("userId", "")
        with self.lock:
            self.attempts += 1
            self.busy[user] += 1
            self.most_at_once = max(self.most_at_once, self.busy[user])
        try:
            if self.failing:
                return 500
            with self.lock:
                self.ok[headers["Webhook-Id"]] += 1
                self.accepted[user].append(event["type"])
            return 200
        finally:
            with self.lock:
                self.busy[user] -= 1

    def recover_once_quiet(self) -> None:
        """Answer 200 from now on, once no request is open (one a killed node sent before
        it died would otherwise be answered 200 and never acknowledged in Redis)."""
        wait_until(lambda: self.open_requests == 0, "no request open at the receiver")
        with self.lock:
            self.failing = False

    def delivered(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.accepted.values())

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text("whsec_" + base64.b64encode(os.urandom(32)).decode())
    return path


@pytest.fixture
def receiver(secret_file: Path) -> Iterator[Receiver]:
    r = Receiver(secret_file.read_text())
    yield r
    r.stop()


def shard_of(user_id: str) -> int:
    return int(hashlib.sha1(f"u:{user_id}".encode()).hexdigest()[:4], 16) % SHARDS


def holders(redis: RedisServer) -> dict[int, str]:
    out = {}
    for s in range(SHARDS):
        holder = redis.cli("GET", f"presence:wh:lease:{s}")
        if holder:
            out[s] = holder
    return out


def pending_of(redis: RedisServer, consumer: str, shards: set[int]) -> int:
    total = 0
    for s in shards:
        reply = redis.cli("XPENDING", f"presence:wh:{s}", "webhooks", "-", "+", "1000", consumer)
        total += len([line for line in reply.splitlines() if line.count("-") == 1])
    return total


def node(start_daemon: Start, redis: RedisServer, name: str, receiver: Receiver, secret: Path):
    return start_node(
        start_daemon,
        redis.url,
        "--node-name",
        name,
        "--webhook-url",
        receiver.url,
        "--webhook-secret-file",
        str(secret),
    )


async def come_and_go(daemon: Daemon, users: list[str], times: int) -> None:
    """Each user: online, updated, offline (a clean DISCONNECT), ``times`` over."""
    for _ in range(times):
        for user in users:
            client = await Client.connect(daemon, user)
            await client.update("busy", {"n": 1})
            await client.handled()
            await client.disconnect()
    await Client.close_all()


CYCLE = ["user.online", "user.updated", "user.offline"]


def test_a_killed_nodes_pending_events_are_delivered_by_a_survivor_once_in_order(
    start_daemon: Start, redis_server: RedisServer, receiver: Receiver, secret_file: Path
) -> None:
    a, b, c = (node(start_daemon, redis_server, name, receiver, secret_file) for name in "abc")
    wait_until(
        lambda: (
            len(holders(redis_server)) == SHARDS
            and set(holders(redis_server).values()) == {"a", "b", "c"}
        ),
        "the shards spread over the three nodes",
        timeout=30,
    )
    of_a = {s for s, n in holders(redis_server).items() if n == "a"}
    users = [f"u{i}" for i in range(40)]
    on_a = [u for u in users if shard_of(u) in of_a]
    assert on_a  # some users' events are a's to deliver

    asyncio.run(come_and_go(b, users, 2))  # on b: they stay connected nowhere
    wait_until(lambda: pending_of(redis_server, "a", of_a) > 0, "a holds events it cannot send")
    a.signal(signal.SIGKILL)
    a.wait()
    receiver.recover_once_quiet()
    expected = len(users) * 2 * len(CYCLE)
    wait_until(lambda: receiver.delivered() >= expected, "every event delivered", timeout=60)
    assert receiver.bad == []
    assert receiver.most_at_once == 1  # one request of a user at a time, cluster-wide
    for user in users:
        assert receiver.accepted[user] == CYCLE * 2, user
    assert set(receiver.ok.values()) == {1}  # each id acknowledged once
    assert len(receiver.ok) == expected
    assert set(holders(redis_server).values()) <= {"b", "c"}  # a's shards taken over
    wait_until(
        lambda: all(redis_server.cli("XLEN", f"presence:wh:{s}") == "0" for s in range(SHARDS)),
        "the streams emptied",
    )
    wait_until(
        lambda: (
            b.metrics()["presence_webhook_pending"] == 0
            and c.metrics()["presence_webhook_pending"] == 0
        ),
        "the backlog gauge at 0 on the survivors",
    )


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "stop"])
def test_a_restarted_daemon_loses_nothing(
    start_daemon: Start,
    redis_server: RedisServer,
    receiver: Receiver,
    secret_file: Path,
    how: signal.Signals,
) -> None:
    a = node(start_daemon, redis_server, "a", receiver, secret_file)
    users = [f"r{i}" for i in range(5)]
    asyncio.run(come_and_go(a, users, 1))
    wait_until(lambda: receiver.attempts >= 1, "a tried")
    a.signal(how)  # a crash or a stop, then a restart under its name
    a.wait()
    receiver.recover_once_quiet()
    node(start_daemon, redis_server, "a", receiver, secret_file)
    expected = len(users) * len(CYCLE)
    wait_until(lambda: receiver.delivered() >= expected, "every event delivered", timeout=30)
    for user in users:
        assert receiver.accepted[user] == CYCLE, user
    assert set(receiver.ok.values()) == {1} and len(receiver.ok) == expected
