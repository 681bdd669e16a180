"""The daemon's contract, line by line, against the real `twistd presence` process.

Every test here drives a real process over loopback with the `websockets` library, so the
waits are on real time: each is a bounded wait for something the process does (a frame, a
close, a metric), never a fixed sleep, and no test asserts how long something took. The
timers' exact behaviour is tested in memory, on a task.Clock (tests/server)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.frames import Close

from tests.support.daemon import ROOT, TWISTD, Daemon, free_port, wait_until
from tests.support.harness import upgrade_request

pytestmark = pytest.mark.e2e

STEP = 5.0  # the longest any single receive may take before the test fails
ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")
WS_FAMILIES = {
    "ws_connections_total": "counter",
    "ws_connections_current": "gauge",
    "ws_messages_total": "counter",
    "ws_errors_total": "counter",
    "ws_clients_current": "gauge",
    "ws_message_size_bytes": "histogram",
    "ws_latency_seconds": "histogram",
}


# -- fixtures: one daemon per module where tests do not disturb each other ------------------


def _module_daemon(factory: pytest.TempPathFactory, *args: str) -> Iterator[Daemon]:
    daemon = Daemon(factory.mktemp("presence"), *args)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """Defaults, except a heartbeat interval/timeout that no test here runs into, and the
    debug log level (a line per connection)."""
    yield from _module_daemon(
        tmp_path_factory,
        "--heartbeat-interval",
        "1",
        "--heartbeat-timeout",
        "5",
        "--log-level",
        "debug",
    )


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A short heartbeat timeout and a small message limit."""
    yield from _module_daemon(
        tmp_path_factory,
        "--heartbeat-interval",
        "0.5",
        "--heartbeat-timeout",
        "1",
        "--max-message-size",
        "1024",
    )


# -- helpers -------------------------------------------------------------------------------


def run(flow: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(flow(), timeout)

    return asyncio.run(bounded())


def url(daemon: Daemon, user_id: str | None) -> str:
    return daemon.ws_url if user_id is None else f"{daemon.ws_url}?userId={quote(user_id)}"


async def open_ws(daemon: Daemon, user_id: str | None, **kwargs: Any) -> ClientConnection:
    options: dict[str, Any] = {
        "open_timeout": STEP,
        "close_timeout": 2,
        "ping_interval": None,  # our own frames only: pings would count as liveness
        "proxy": None,  # loopback only, whatever the environment says
        "compression": None,
        "ssl": daemon.ssl_context(),
    }
    options.update(kwargs)
    return await websockets.connect(url(daemon, user_id), **options)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), STEP)
    assert isinstance(raw, str), f"expected a text frame, got {raw!r}"
    message = json.loads(raw)
    assert isinstance(message, dict), raw
    return message


async def send_json(ws: ClientConnection, message: Any) -> None:
    await ws.send(json.dumps(message))


async def connected(daemon: Daemon, user_id: str, **kwargs: Any) -> tuple[ClientConnection, dict]:
    ws = await open_ws(daemon, user_id, **kwargs)
    connect = await recv_json(ws)
    assert connect["type"] == "CONNECT", connect
    return ws, connect


async def heartbeat(ws: ClientConnection) -> dict[str, Any]:
    await send_json(ws, {"type": "HEARTBEAT", "timestamp": now_iso()})
    ack = await recv_json(ws)
    assert ack["type"] == "HEARTBEAT_ACK", ack
    assert_timestamp(ack["timestamp"])
    return ack


async def server_close(ws: ClientConnection, timeout: float = STEP) -> Close:
    """The close frame the server sent; fails if any data message arrives first."""
    try:
        message = await asyncio.wait_for(ws.recv(), timeout)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None, f"no close frame from the server: {closed!r}"
        return closed.rcvd
    pytest.fail(f"expected the server to close, got a message: {message!r}")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def assert_timestamp(stamp: Any) -> None:
    assert isinstance(stamp, str) and ISO_Z.match(stamp), stamp
    parsed = datetime.fromisoformat(stamp)
    assert parsed.tzinfo is not None
    # UTC and now: a local time labelled Z would be off by the zone's offset.
    assert abs((parsed - datetime.now(UTC)).total_seconds()) < 60, stamp


def assert_error(message: dict[str, Any], *codes: str) -> None:
    assert message["type"] == "ERROR", message
    assert message["code"] in codes, message
    assert isinstance(message["message"], str) and message["message"], message
    assert_timestamp(message["timestamp"])


def total(samples: dict[str, float], family: str) -> float:
    return sum(v for k, v in samples.items() if k == family or k.startswith(family + "{"))


# -- CONNECT -------------------------------------------------------------------------------


def test_connect_carries_the_documented_and_added_fields(shared: Daemon) -> None:
    async def flow() -> list[dict[str, Any]]:
        a, first = await connected(shared, "connect-fields")
        b, second = await connected(shared, "connect-fields")
        await a.close()
        await b.close()
        return [first, second]

    first, second = run(flow)
    for connect in (first, second):
        assert connect["userId"] == "connect-fields"
        assert connect["heartbeatInterval"] == 1
        assert connect["heartbeatTimeout"] == 5
        assert_timestamp(connect["timestamp"])
        assert isinstance(connect["connectionId"], str) and connect["connectionId"]
    assert first["connectionId"] != second["connectionId"]


@pytest.mark.parametrize(
    "user_id",
    ["u", "x" * 128, "user@example.com", "ünïcødé-用户", "a/b?c&d=e#f"],
    ids=["one-char", "128-chars", "email", "unicode", "url-specials"],
)
def test_valid_user_ids_are_accepted_and_echoed(shared: Daemon, user_id: str) -> None:
    async def flow() -> dict[str, Any]:
        ws, connect = await connected(shared, user_id)
        await heartbeat(ws)
        await ws.close()
        return connect

    assert run(flow)["userId"] == user_id


@pytest.mark.parametrize(
    "query, reason",
    [
        (None, "missing userId"),
        ("", "missing userId"),
        ("x" * 129, "invalid userId"),
        ("has space", "invalid userId"),
        ("tab\there", "invalid userId"),
        ("new\nline", "invalid userId"),
        ("bell\x07", "invalid userId"),
    ],
    ids=["absent", "empty", "129-chars", "space", "tab", "newline", "control"],
)
def test_missing_or_invalid_user_id_closes_1002_without_connect(
    shared: Daemon, query: str | None, reason: str
) -> None:
    async def flow() -> Close:
        ws = await open_ws(shared, query)  # the handshake completes...
        return await server_close(ws)  # ...then a close, and no CONNECT before it

    close = run(flow)
    assert (close.code, close.reason) == (1002, reason)


# -- messages ------------------------------------------------------------------------------


def test_heartbeat_gets_heartbeat_ack(shared: Daemon) -> None:
    async def flow() -> None:
        ws, _ = await connected(shared, "beater")
        for _ in range(3):
            await heartbeat(ws)
        # No timestamp at all is still a heartbeat.
        await send_json(ws, {"type": "HEARTBEAT"})
        assert (await recv_json(ws))["type"] == "HEARTBEAT_ACK"
        await ws.close()

    run(flow)


def test_valid_presence_update_has_no_reply_and_is_stored(shared: Daemon) -> None:
    async def flow() -> None:
        ws, _ = await connected(shared, "updater")
        for update in (
            {"status": "away"},
            {"status": "busy", "metadata": {"device": "phone", "n": [1, 2]}},
            {"status": "online", "metadata": {}},
        ):
            await send_json(ws, {"type": "PRESENCE_UPDATE", "payload": update})
            # The next message is the ACK: the update itself got no reply.
            await heartbeat(ws)
        await send_json(
            ws, {"type": "PRESENCE_UPDATE", "payload": {"status": "busy", "metadata": {"k": 1}}}
        )
        await heartbeat(ws)
        status, body = await asyncio.to_thread(shared.get_json, "/presence/updater")
        assert status == 200 and body["status"] == "busy" and body["metadata"] == {"k": 1}
        await ws.close()

    run(flow)


@pytest.mark.parametrize(
    "payload, code",
    [
        ({"status": "offline"}, "INVALID_STATUS"),
        ({"status": "ONLINE"}, "INVALID_STATUS"),
        ({"status": 1}, "INVALID_STATUS"),
        ({}, "INVALID_STATUS"),
        ({"status": "online", "metadata": "phone"}, "INVALID_PAYLOAD"),
        ({"status": "online", "metadata": [1, 2]}, "INVALID_PAYLOAD"),
        ({"status": "online", "metadata": 7}, "INVALID_PAYLOAD"),
        ("online", "INVALID_PAYLOAD"),
        (None, "INVALID_PAYLOAD"),
        ({"status": "online", "metadata": {"blob": "x" * 5000}}, "METADATA_TOO_LARGE"),
    ],
    ids=[
        "unknown-status",
        "wrong-case",
        "number-status",
        "no-status",
        "string-metadata",
        "array-metadata",
        "number-metadata",
        "string-payload",
        "null-payload",
        "metadata-over-4KiB",
    ],
)
def test_invalid_presence_update_gets_error_and_keeps_connection(
    shared: Daemon, payload: Any, code: str
) -> None:
    async def flow() -> None:
        ws, _ = await connected(shared, "bad-updater")
        await send_json(ws, {"type": "PRESENCE_UPDATE", "payload": payload})
        assert_error(await recv_json(ws), code)
        await heartbeat(ws)  # still connected
        await ws.close()

    run(flow)


@pytest.mark.parametrize(
    "frame, codes",
    [
        ("not json", ("INVALID_JSON",)),
        ("{", ("INVALID_JSON",)),
        ("", ("INVALID_JSON",)),
        ('[{"type": "HEARTBEAT"}]', ("INVALID_JSON", "INVALID_MESSAGE")),
        ("42", ("INVALID_JSON", "INVALID_MESSAGE")),
        ("null", ("INVALID_JSON", "INVALID_MESSAGE")),
        ('"HEARTBEAT"', ("INVALID_JSON", "INVALID_MESSAGE")),
        ('{"type": "TELEPORT"}', ("UNKNOWN_TYPE",)),
        ('{"type": "heartbeat"}', ("UNKNOWN_TYPE",)),
        ('{"payload": {}}', ("INVALID_MESSAGE", "UNKNOWN_TYPE")),
        ('{"type": 7}', ("INVALID_MESSAGE", "UNKNOWN_TYPE")),
    ],
    ids=[
        "text",
        "truncated",
        "empty",
        "array",
        "number",
        "null",
        "string",
        "unknown-type",
        "lowercase-type",
        "no-type",
        "number-type",
    ],
)
def test_bad_text_frame_gets_error_and_keeps_connection(
    shared: Daemon, frame: str, codes: tuple[str, ...]
) -> None:
    async def flow() -> None:
        ws, _ = await connected(shared, "bad-sender")
        await ws.send(frame)
        assert_error(await recv_json(ws), *codes)
        await heartbeat(ws)
        await ws.close()

    run(flow)


def test_extra_fields_are_allowed(shared: Daemon) -> None:
    async def flow() -> None:
        ws, _ = await connected(shared, "extra")
        await send_json(ws, {"type": "HEARTBEAT", "timestamp": now_iso(), "seq": 1, "x": {}})
        assert (await recv_json(ws))["type"] == "HEARTBEAT_ACK"
        await send_json(
            ws,
            {"type": "PRESENCE_UPDATE", "payload": {"status": "away", "extra": True}, "id": 9},
        )
        await heartbeat(ws)
        await ws.close()

    run(flow)


def test_disconnect_closes_1000(shared: Daemon) -> None:
    async def flow() -> Close:
        ws, _ = await connected(shared, "leaver")
        await send_json(ws, {"type": "DISCONNECT", "timestamp": now_iso()})
        return await server_close(ws)

    assert run(flow).code == 1000


def test_binary_frame_closes_1003(shared: Daemon) -> None:
    async def flow() -> Close:
        ws, _ = await connected(shared, "binary")
        await ws.send(b'{"type": "HEARTBEAT"}')
        return await server_close(ws)

    assert run(flow).code == 1003


def test_message_over_max_message_size_closes_1009(strict: Daemon) -> None:
    async def flow() -> Close:
        ws, _ = await connected(strict, "big")
        await ws.send(json.dumps({"type": "HEARTBEAT", "pad": "x" * 1100}))
        return await server_close(ws)

    assert run(flow).code == 1009


def test_message_at_max_message_size_is_accepted(strict: Daemon) -> None:
    async def flow() -> None:
        ws, _ = await connected(strict, "exactly")
        frame = json.dumps({"type": "HEARTBEAT", "pad": ""})
        frame = json.dumps({"type": "HEARTBEAT", "pad": "x" * (1024 - len(frame))})
        assert len(frame.encode()) == 1024
        await ws.send(frame)
        assert (await recv_json(ws))["type"] == "HEARTBEAT_ACK"
        await ws.close()

    run(flow)


# -- heartbeat timeout ----------------------------------------------------------------------


def test_quiet_connection_is_closed_4408_heartbeat_timeout(strict: Daemon) -> None:
    """When, exactly, is tested on a Clock (test_protocol.py); here: that it happens."""

    async def flow() -> Close:
        ws, _ = await connected(strict, "quiet")
        return await server_close(ws, timeout=STEP)

    close = run(flow)
    assert (close.code, close.reason) == (4408, "heartbeat timeout")


async def quiet_one_closed(daemon: Daemon, user_id: str) -> asyncio.Future[Close]:
    """A connection that sends nothing: its 4408 close shows a heartbeat timeout passed."""
    ws, _ = await connected(daemon, user_id)
    return asyncio.ensure_future(server_close(ws, timeout=STEP))


def test_any_inbound_frame_keeps_the_connection_alive(strict: Daemon) -> None:
    """Heartbeats alone, then updates alone, then pings alone, each for as long as a quiet
    connection opened alongside takes to be closed for silence: three timeouts' worth, and
    the lively connection is still open."""

    async def liveness(ws: ClientConnection, kind: str) -> None:
        if kind == "heartbeat":
            await heartbeat(ws)
        elif kind == "update":
            await send_json(ws, {"type": "PRESENCE_UPDATE", "payload": {"status": "away"}})
        else:
            await asyncio.wait_for(await ws.ping(), STEP)

    async def flow() -> None:
        ws, _ = await connected(strict, "lively")
        for kind in ("heartbeat", "update", "ping"):
            closed = await quiet_one_closed(strict, f"quiet-{kind}")
            while not closed.done():
                await liveness(ws, kind)
                await asyncio.wait({closed}, timeout=0.3)  # a frame every 0.3 s until then
            assert closed.result().code == 4408
        await heartbeat(ws)  # still open
        await ws.close()

    run(flow)


def test_heartbeat_timeout_drops_a_client_that_never_answers_the_close(strict: Daemon) -> None:
    """A raw socket that reads the 4408 close frame but never replies is dropped."""
    with socket.create_connection(("127.0.0.1", strict.port), timeout=STEP) as sock:
        sock.sendall(upgrade_request("/?userId=mute"))
        received = b""
        # Generous: the close comes after about a second, the drop three seconds later.
        sock.settimeout(15)
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass  # dropped, with a reset
        except TimeoutError:
            pytest.fail(f"the server kept the connection open; got {received!r}")
        # (an empty read: the server dropped us)
    assert received.startswith(b"HTTP/1.1 101")
    assert b"CONNECT" in received
    # An unmasked close frame: 0x88, length, code 4408 big-endian, the reason.
    assert b"\x88" + bytes([2 + len(b"heartbeat timeout")]) + (4408).to_bytes(2, "big") in received
    assert b"heartbeat timeout" in received


# -- isolation and load ---------------------------------------------------------------------


def test_bad_input_on_one_connection_leaves_others_working(shared: Daemon) -> None:
    async def flow() -> None:
        good, _ = await connected(shared, "bystander")
        bad, _ = await connected(shared, "troublemaker")
        victim, _ = await connected(shared, "bystander")  # the same user, another tab
        for frame in ("nope", "[]", '{"type": "X"}', '{"type":"PRESENCE_UPDATE"}'):
            await bad.send(frame)
            assert (await recv_json(bad))["type"] == "ERROR"
            await heartbeat(good)
        await bad.send(json.dumps({"type": "HEARTBEAT", "pad": "x" * 70000}))
        assert (await server_close(bad)).code == 1009
        await heartbeat(good)
        await heartbeat(victim)
        await victim.send(b"\x00\x01")
        assert (await server_close(victim)).code == 1003
        await heartbeat(good)
        await good.close()

    run(flow)


def test_200_concurrent_clients_each_connect_and_get_heartbeat_ack(shared: Daemon) -> None:
    count = 200
    before = shared.metrics()

    async def client(i: int) -> tuple[ClientConnection, str]:
        ws, connect = await connected(shared, f"crowd-{i}", open_timeout=15)
        return ws, connect["connectionId"]

    async def flow() -> None:
        clients = await asyncio.gather(*(client(i) for i in range(count)))
        assert len({connection_id for _, connection_id in clients}) == count
        await asyncio.gather(*(heartbeat(ws) for ws, _ in clients))
        during = await asyncio.to_thread(shared.metrics)
        assert during["ws_connections_current"] >= before["ws_connections_current"] + count
        assert during["ws_clients_current"] >= before["ws_clients_current"] + count
        await asyncio.gather(*(ws.close() for ws, _ in clients))

    run(flow, timeout=45)
    wait_until(
        lambda: shared.metrics()["ws_connections_current"] == before["ws_connections_current"]
    )


def test_flutter_style_client_flow(shared: Daemon) -> None:
    """The API document's Dart client: `$baseUrl?userId=$userId` (no slash), a status-only
    PRESENCE_UPDATE with Dart's local toIso8601String() timestamp, periodic heartbeats,
    then `sink.close()` (a close frame without a code)."""
    base_url = f"ws://127.0.0.1:{shared.port}"

    async def flow() -> None:
        ws = await websockets.connect(
            f"{base_url}?userId=flutter-user", proxy=None, ping_interval=None, open_timeout=STEP
        )
        connect = await recv_json(ws)
        assert connect["type"] == "CONNECT" and connect["userId"] == "flutter-user"
        for status in ("online", "away", "busy"):
            await send_json(
                ws,
                {
                    "type": "PRESENCE_UPDATE",
                    "payload": {"status": status},
                    "timestamp": datetime.now().isoformat(),  # Dart: local, no zone
                },
            )
            await send_json(ws, {"type": "HEARTBEAT", "timestamp": datetime.now().isoformat()})
            assert (await recv_json(ws))["type"] == "HEARTBEAT_ACK"
            _, body = await asyncio.to_thread(shared.get_json, "/presence/flutter-user")
            assert body["status"] == status
        # Dart's sink.close() sends a close frame with no status code; websockets only does
        # that through its protocol object (close() refuses the reserved code 1005).
        async with ws.send_context():
            ws.protocol.send_close()
        await asyncio.wait_for(ws.wait_closed(), STEP)
        assert ws.protocol.close_rcvd is not None  # the server answered the close

    run(flow)
    wait_until(lambda: shared.get_json("/presence/flutter-user")[1]["connections"] == 0)


# -- HTTP ----------------------------------------------------------------------------------


def test_health(shared: Daemon) -> None:
    status, first = shared.get_json("/health")
    assert status == 200
    assert first["status"] == "OK"
    assert_timestamp(first["timestamp"])
    uptime = first["uptime"]
    assert isinstance(uptime, int | float) and not isinstance(uptime, bool)
    assert uptime >= 0
    wait_until(lambda: shared.get_json("/health")[1]["uptime"] > uptime)


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/favicon.ico",
        "/HEALTH",
        "/.env",
        "/presence/a/b",
        "/health/extra",
        "/metrics/x",
    ],
)
def test_other_paths_are_404(shared: Daemon, path: str) -> None:
    status, _ = shared.get(path)
    assert status == 404


def test_plain_get_on_the_websocket_path_is_not_a_200(shared: Daemon) -> None:
    status, _ = shared.get("/?userId=curl")
    assert status == 426


def test_metrics_families_types_and_content_type(shared: Daemon) -> None:
    with urllib.request.urlopen(shared.http_url + "/metrics", timeout=STEP) as response:
        assert response.status == 200
        content_type = response.headers["content-type"]
        body = response.read().decode()
    # The Prometheus text format (prometheus_client says version=0.0.4 or, newer, 1.0.0).
    assert content_type.startswith("text/plain; version="), content_type
    types = dict(line.split()[2:4] for line in body.splitlines() if line.startswith("# TYPE "))
    for family, kind in WS_FAMILIES.items():
        assert types.get(family) == kind, (family, types.get(family))
    for histogram in ("ws_message_size_bytes", "ws_latency_seconds"):
        for suffix in ("_bucket{", "_count ", "_sum "):
            assert histogram + suffix in body
    # Latency buckets resolve sub-millisecond handling times.
    latency_bounds = [
        float(m) for m in re.findall(r'^ws_latency_seconds_bucket\{le="([^"+]+)"\}', body, re.M)
    ]
    assert sum(1 for bound in latency_bounds if bound < 0.001) >= 3, latency_bounds
    # The process and platform collectors are there too.
    assert "process_resident_memory_bytes" in body and "python_info" in body


def test_metrics_values_move(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "5")
    base = daemon.metrics()
    assert base["ws_connections_current"] == 0 and base["ws_clients_current"] == 0

    def delta(samples: dict[str, float], name: str) -> float:
        return samples.get(name, 0.0) - base.get(name, 0.0)

    async def flow() -> None:
        a1, _ = await connected(daemon, "metric-user-a")
        a2, _ = await connected(daemon, "metric-user-a")
        b, _ = await connected(daemon, "metric-user-b")
        for ws in (a1, a1, a2, b):
            await heartbeat(ws)
        m = await asyncio.to_thread(daemon.metrics)
        assert delta(m, "ws_connections_total") == 3
        assert m["ws_connections_current"] == 3
        assert m["ws_clients_current"] == 2  # two connections of one user count once
        assert delta(m, 'ws_messages_total{type="HEARTBEAT"}') == 4
        assert delta(m, "ws_message_size_bytes_count") == 4
        assert delta(m, "ws_latency_seconds_count") == 4
        assert delta(m, "ws_message_size_bytes_sum") > 4 * len('{"type":"HEARTBEAT"}')
        assert total(m, "ws_errors_total") == total(base, "ws_errors_total")

        await b.send("not json")
        assert (await recv_json(b))["type"] == "ERROR"
        await send_json(b, {"type": "PRESENCE_UPDATE", "payload": {"status": "gone"}})
        assert (await recv_json(b))["type"] == "ERROR"
        m2 = await asyncio.to_thread(daemon.metrics)
        assert total(m2, "ws_errors_total") - total(base, "ws_errors_total") == 2
        assert delta(m2, "ws_message_size_bytes_count") == 6
        assert delta(m2, "ws_latency_seconds_count") == 6

        await send_json(a2, {"type": "DISCONNECT"})
        assert (await server_close(a2)).code == 1000
        await heartbeat(a1)  # the server has handled a2's end before this ACK
        await asyncio.to_thread(wait_until, lambda: daemon.metrics()["ws_connections_current"] == 2)
        m3 = await asyncio.to_thread(daemon.metrics)
        assert m3["ws_clients_current"] == 2  # metric-user-a is still connected on a1
        assert delta(m3, 'ws_messages_total{type="DISCONNECT"}') == 1
        await a1.close()
        await b.close()

    run(flow)
    wait_until(lambda: daemon.metrics()["ws_connections_current"] == 0)
    end = daemon.metrics()
    assert end["ws_clients_current"] == 0
    assert delta(end, "ws_connections_total") == 3  # a counter does not go down
    _, body = daemon.get("/metrics")
    assert b"metric-user" not in body  # no label carries a userId


def test_refused_handshake_is_not_counted_as_a_connection(shared: Daemon) -> None:
    before = shared.metrics()

    async def flow() -> None:
        ws = await open_ws(shared, "bad id")
        assert (await server_close(ws)).code == 1002

    run(flow)
    after = shared.metrics()
    assert after["ws_connections_total"] == before["ws_connections_total"]
    assert total(after, "ws_errors_total") > total(before, "ws_errors_total")


# -- SIGTERM -------------------------------------------------------------------------------


def test_sigterm_closes_every_client_1001_and_exits_0(start_daemon: Any) -> None:
    daemon = start_daemon("--heartbeat-interval", "1", "--heartbeat-timeout", "5")

    async def flow() -> list[Close]:
        clients = [(await connected(daemon, user))[0] for user in ("t1", "t1", "t2", "t3")]
        await asyncio.gather(*(heartbeat(ws) for ws in clients))
        daemon.signal(signal.SIGTERM)
        return list(await asyncio.gather(*(server_close(ws) for ws in clients)))

    closes = run(flow)
    assert [close.code for close in closes] == [1001] * 4
    assert_orderly_exit(daemon)


def test_sigterm_with_no_clients_exits_in_order(start_daemon: Any) -> None:
    """That the shutdown then waits for no one is tested on a Clock (test_protocol.py)."""
    daemon = start_daemon()
    daemon.signal(signal.SIGTERM)
    assert_orderly_exit(daemon)


def assert_orderly_exit(daemon: Daemon) -> None:
    """twistd stops its services, then re-raises the signal that stopped it
    (twisted.scripts.twistd.runApp calls app._exitWithSignal), so after an orderly
    shutdown the status is -SIGTERM (143 in a shell; systemd counts it as success);
    0 is accepted too. A process that died without shutting down would not log the end."""
    assert daemon.wait(10) in (0, -signal.SIGTERM)
    log = daemon.log()
    assert "Received SIGTERM, shutting down." in log
    assert "Server Shut Down." in log
    assert "Traceback" not in log


# -- start-up ------------------------------------------------------------------------------
#
# Option errors are tested in process (tests/server/test_options.py). What needs a real
# `twistd presence` run: that twistd prints our one line and no usage or traceback, and a
# port that cannot be bound (found only when the service starts). Each run must end by
# itself; they are independent, so they run at once (in a module fixture) and each test
# reads its own result.


def twistd(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Runs `twistd -n presence ARGS` and waits for it to end (it must end by itself)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run(
            [str(TWISTD), "-n", "--pidfile=", "presence", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed the child
        pytest.fail(f"twistd presence {' '.join(args)} kept running: {e.stdout!r}")


SAFE_PORT = "tcp:0:interface=127.0.0.1"  # if a bad option were accepted, nothing is exposed


@pytest.fixture(scope="module")
def bound_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def startups(bound_port: int) -> dict[str, subprocess.CompletedProcess[str]]:
    bound = f"tcp:{bound_port}:interface=127.0.0.1"
    cases: dict[str, list[str]] = {
        "bad-option": ["--port", SAFE_PORT, "--heartbeat-timeout", "abc"],
        "bound": ["--port", bound],
        "bound-second": ["--port", f"tcp:{free_port()}:interface=127.0.0.1", "--port", bound],
    }
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(twistd, *args) for name, args in cases.items()}
        return {name: future.result() for name, future in futures.items()}


def test_a_bad_option_exits_with_one_line_and_no_usage_or_traceback(
    startups: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = startups["bad-option"]
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert result.stdout == ""  # not twistd's usage either
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("presence: "), lines
    assert "--heartbeat-timeout" in lines[0], lines


def test_port_already_bound_stops_start_up_with_one_clear_line(
    startups: dict[str, subprocess.CompletedProcess[str]], bound_port: int
) -> None:
    result = startups["bound"]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    assert f"presence: cannot listen on tcp:{bound_port}" in output, output
    assert "Address already in use" in output, output


def test_one_bound_port_of_two_stops_start_up(
    startups: dict[str, subprocess.CompletedProcess[str]], bound_port: int
) -> None:
    result = startups["bound-second"]
    assert result.returncode != 0
    assert f"cannot listen on tcp:{bound_port}" in result.stdout + result.stderr


# -- logs ----------------------------------------------------------------------------------


def test_log_has_connects_and_disconnects_without_payloads(shared: Daemon) -> None:
    secret = "s3cr3t-metadata-value"
    user_id = 'log"{user}\\%s'  # format and quoting characters reach the log escaped

    async def flow() -> str:
        ws, connect = await connected(shared, user_id)
        await send_json(
            ws,
            {"type": "PRESENCE_UPDATE", "payload": {"status": "busy", "metadata": {"t": secret}}},
        )
        await heartbeat(ws)
        await send_json(ws, {"type": "DISCONNECT"})
        await server_close(ws)
        return str(connect["connectionId"])

    connection_id = run(flow)
    wait_until(lambda: f"disconnect {connection_id} " in shared.log())
    log = shared.log()
    (connect_line,) = [line for line in log.splitlines() if f"] connect {connection_id} " in line]
    (end_line,) = [line for line in log.splitlines() if f"disconnect {connection_id} " in line]
    assert repr(user_id) in connect_line and repr(user_id) in end_line
    assert "code=1000" in end_line
    assert secret not in log


def test_at_the_default_log_level_a_connection_writes_no_line(strict: Daemon) -> None:
    """A reconnect storm would write two lines per client: connections are debug events.
    The close is proven handled (the gauge is back to 0) before the log is read."""

    async def flow() -> str:
        ws, connect = await connected(strict, "quiet-user")
        await send_json(ws, {"type": "DISCONNECT"})
        await server_close(ws)
        return str(connect["connectionId"])

    connection_id = run(flow)
    wait_until(lambda: strict.metrics().get("ws_connections_current") == 0)
    log = strict.log()
    assert "presence serving on" in log
    assert connection_id not in log and "quiet-user" not in log


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_the_port_listens_with_a_backlog_for_reconnect_storms(shared: Daemon) -> None:
    """Twisted's default backlog (50) overflows when thousands reconnect at once; a --port
    without backlog= gets 511 (capped by the kernel's somaxconn). `ss` shows a listening
    socket's backlog as its Send-Q."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{shared.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    assert out[0] == "LISTEN" and int(out[2]) == min(511, somaxconn), out
