"""Webhooks end to end: a real `twistd presence --webhook-url ...`, `websockets` clients, and
a receiver on loopback that verifies every request with the `standardwebhooks` library.

Every wait is on what the receiver saw, with a deadline; nothing sleeps for a server timer."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.certs import make_cert
from tests.support.daemon import Daemon, wait_until
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.e2e

RAW_SECRET = b"w" * 40


async def connect(daemon: Daemon, user_id: str) -> ClientConnection:
    ws = await websockets.connect(f"{daemon.ws_url}?userId={user_id}")
    assert json.loads(await ws.recv())["type"] == "CONNECT"
    return ws


async def send(ws: ClientConnection, kind: str, **payload: object) -> None:
    await ws.send(json.dumps({"type": kind, "payload": payload}))


async def ack(ws: ClientConnection) -> None:
    """Everything sent before is handled once the HEARTBEAT's ACK comes back."""
    await ws.send(json.dumps({"type": "HEARTBEAT"}))
    while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "HEARTBEAT_ACK":
        pass


def webhook_args(tmp_path: Path, receiver: Receiver, secret: bytes, *more: str) -> list[str]:
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_bytes(secret + b"\n")
    return [
        *("--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file)),
        *("--offline-grace", "0.5", "--webhook-timeout", "1"),
        *more,
    ]


def by_user(events: list[tuple[str, str]], user: str, kinds: tuple[str, ...]) -> list[str]:
    return [kind for kind, who in events if who == user and kind in kinds]


USER_AND_MEMBER = (
    "user.online",
    "user.updated",
    "user.offline",
    "room.joined",
    "room.left",
)


def test_every_event_arrives_once_in_order_through_500s(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    whsec = b"whsec_" + base64.b64encode(b"k" * 32)
    with Receiver(whsec.decode(), fail_first=4) as receiver:
        daemon = start_daemon(*webhook_args(tmp_path, receiver, whsec))

        async def flow() -> None:
            alice = await connect(daemon, "alice")
            bob = await connect(daemon, "bob")
            await send(alice, "PRESENCE_UPDATE", status="away", metadata={"mood": "ok"})
            await send(alice, "JOIN", room="doc:1", metadata={"cursor": 3})
            await send(bob, "JOIN", room="doc:1")
            await ack(alice)
            await ack(bob)
            await send(alice, "LEAVE", room="doc:1")
            await ack(alice)
            await alice.send(json.dumps({"type": "DISCONNECT"}))
            await alice.wait_closed()
            bob.transport.abort()  # dropped: offline only after the grace

        asyncio.run(flow())
        ends = {("user.offline", "alice"), ("user.offline", "bob"), ("room.vacated", "doc:1")}
        wait_until(
            lambda: ends <= set(receiver.events()),
            timeout=30,
            message=lambda: str(receiver.events()),
        )
        events = receiver.events()
        assert receiver.errors == []
        assert by_user(events, "alice", USER_AND_MEMBER) == [
            "user.online",
            "user.updated",
            "room.joined",
            "room.left",
            "user.offline",
        ]
        assert by_user(events, "bob", USER_AND_MEMBER) == [
            "user.online",
            "room.joined",
            "room.left",
            "user.offline",
        ]
        assert by_user(events, "doc:1", ("room.occupied", "room.vacated")) == [
            "room.occupied",
            "room.vacated",
        ]
        # Once each: no id answered 200 twice; the 500s were retried with the same id.
        delivered = Counter(s.id for s in receiver.delivered())
        assert set(delivered.values()) == {1}
        failed = [s.id for s in receiver.seen if s.answer == 500]
        assert len(failed) == 4 and set(failed) <= set(delivered)
        joined = next(
            s.payload
            for s in receiver.delivered()
            if s.payload["type"] == "room.joined" and s.payload["data"]["userId"] == "alice"
        )
        assert joined["data"]["member"] == {
            "status": "away",
            "metadata": {"cursor": 3},
            "connections": 1,
        }
        offline = next(s for s in receiver.delivered() if s.payload["type"] == "user.offline")
        assert set(offline.payload["data"]) == {
            "userId",
            "status",
            "metadata",
            "lastSeen",
            "connections",
        }
        wait_until(lambda: daemon.metrics().get("presence_webhook_pending") == 0, timeout=10)
        metrics = daemon.metrics()
        assert metrics['presence_webhook_deliveries_total{result="ok"}'] == len(delivered)
        assert metrics['presence_webhook_deliveries_total{result="retry"}'] == 4
        assert metrics['presence_webhook_deliveries_total{result="dropped"}'] == 0
        assert "t0ps3cret" not in daemon.log()  # the URL's query never reaches the log


def test_a_receiver_that_hangs_gets_the_event_again_after_the_timeout(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    with Receiver(RAW_SECRET, hang_first=1) as receiver:
        daemon = start_daemon(
            *webhook_args(tmp_path, receiver, RAW_SECRET, "--webhook-events", "user.online")
        )

        async def flow() -> None:
            carol = await connect(daemon, "carol")
            await ack(carol)
            await carol.close()

        asyncio.run(flow())
        wait_until(lambda: receiver.delivered(), timeout=30, message=lambda: str(receiver.seen))
        hung, delivered = receiver.seen[0], receiver.delivered()[0]
        assert hung.answer is None and hung.id == delivered.id
        assert receiver.events() == [("user.online", "carol")]  # --webhook-events: only these
        assert receiver.errors == []
        metrics = daemon.metrics()
        assert metrics['presence_webhook_deliveries_total{result="retry"}'] == 1
        assert metrics["presence_webhook_delivery_seconds_count"] == 2


@pytest.mark.parametrize("trusted", [True, False], ids=["ssl-cert-file", "untrusted"])
def test_https_receivers_are_verified_against_ssl_cert_file(
    start_daemon: Callable[..., Daemon], tmp_path: Path, trusted: bool
) -> None:
    """TLS to the receiver is checked (certificate and name); SSL_CERT_FILE brings a
    private CA, as for rediss://. Without it the self-signed receiver is refused."""
    tls = make_cert(tmp_path, "receiver")
    env = {"SSL_CERT_FILE": str(tls[1])} if trusted else {"SSL_CERT_FILE": str(tmp_path / "none")}
    with Receiver(RAW_SECRET, tls=tls, host="localhost") as receiver:
        daemon = start_daemon(*webhook_args(tmp_path, receiver, RAW_SECRET), env=env)

        async def flow() -> None:
            dave = await connect(daemon, "dave")
            await ack(dave)
            await dave.close()

        asyncio.run(flow())
        if trusted:
            wait_until(lambda: len(receiver.delivered()) == 2, timeout=30)
            assert receiver.events() == [("user.online", "dave"), ("user.offline", "dave")]
        else:
            retried = 'presence_webhook_deliveries_total{result="retry"}'
            wait_until(lambda: daemon.metrics()[retried] >= 2, timeout=30)
            assert receiver.delivered() == []
            assert "certificate verify failed" in daemon.log()


def test_metrics_are_there_without_webhooks(daemon: Daemon) -> None:
    metrics = daemon.metrics()
    for result in ("ok", "retry", "dropped"):
        assert metrics[f'presence_webhook_deliveries_total{{result="{result}"}}'] == 0
    assert metrics["presence_webhook_pending"] == 0
    assert metrics["presence_webhook_delivery_seconds_count"] == 0
