"""Authentication, origins, rate limits, caps, slow clients and TLS end to end: the real
`twistd presence` on loopback, real clients. (Bad security options are tested in process,
in tests/server/test_options.py.)"""

from __future__ import annotations

import asyncio
import json
import secrets
import select
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from tests.support.certs import der_fingerprint, fingerprint, make_cert
from tests.support.daemon import Daemon, wait_until
from tests.support.harness import client_frame, upgrade_request

pytestmark = pytest.mark.e2e

SECRET = "s3cret-" + "x" * 40
API_TOKEN = "api-token-" + "y" * 30


def token(sub: str, exp_in: float = 300, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in)}, secret, algorithm="HS256")


def connect(url: str, **kwargs: Any) -> Any:
    return websockets.connect(url, proxy=None, open_timeout=5, **kwargs)


async def closed_with(ws: Any, timeout: float = 5) -> tuple[int | None, str | None, list[Any]]:
    """Read until the server closes; the frames seen and the close code and reason."""
    seen = []
    try:
        while True:
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), timeout)))
    except websockets.ConnectionClosed as e:
        rcvd = e.rcvd
        return (rcvd.code, rcvd.reason, seen) if rcvd else (None, None, seen)


@pytest.fixture
def jwt_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    (tmp_path / "jwt.secret").write_text(SECRET + "\n")
    (tmp_path / "api.token").write_text(API_TOKEN + "\n")
    return start_daemon(
        "--auth",
        "jwt",
        "--jwt-secret-file",
        str(tmp_path / "jwt.secret"),
        "--allowed-origins",
        "https://app.example.com",
        "--api-token-file",
        str(tmp_path / "api.token"),
    )


def test_jwt_auth_end_to_end(jwt_daemon: Daemon) -> None:
    url = jwt_daemon.ws_url
    forged = token("alice", secret="z" * 47)

    async def flow() -> None:
        async with connect(f"{url}?userId=alice&token={token('alice')}") as ws:
            assert json.loads(await ws.recv())["type"] == "CONNECT"
            bearer = {"Authorization": f"Bearer {token('bob')}"}
            async with connect(f"{url}?userId=bob", additional_headers=bearer) as ws2:
                assert json.loads(await ws2.recv())["type"] == "CONNECT"
        for bad, reason in [
            (forged, "token signature invalid"),
            (token("alice", exp_in=-10), "token expired"),
            (token("mallory"), "token sub does not match userId"),
        ]:
            async with connect(f"{url}?userId=alice&token={bad}") as ws:
                code, got_reason, seen = await closed_with(ws)
                assert (code, got_reason, seen) == (1008, reason, [])
        async with connect(f"{url}?userId=alice") as ws:
            assert (await closed_with(ws))[:2] == (1008, "missing token")
        for origin in ("https://evil.example", "null"):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with connect(f"{url}?userId=alice&token={token('alice')}", origin=origin):
                    pass
            assert refused.value.response.status_code == 403
        async with connect(
            f"{url}?userId=alice&token={token('alice')}", origin="https://app.example.com"
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "CONNECT"

    asyncio.run(flow())
    assert jwt_daemon.get("/presence/alice")[0] == 401
    assert jwt_daemon.get("/presence?userIds=alice", {"Authorization": "Bearer nope" * 3})[0] == 401
    ok, body = jwt_daemon.get_json("/presence/alice", {"Authorization": f"Bearer {API_TOKEN}"})
    assert ok == 200 and body["userId"] == "alice"
    assert jwt_daemon.get("/health")[0] == 200
    assert jwt_daemon.get("/metrics")[0] == 200
    log = jwt_daemon.log()
    assert "refused connection for user='alice': token signature invalid" in log
    for secret in (SECRET, API_TOKEN, forged, forged.split(".")[2]):
        assert secret not in log


def test_refresh_token_end_to_end(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    (tmp_path / "jwt.secret").write_text(SECRET)
    daemon = start_daemon(
        "--auth",
        "jwt",
        "--jwt-secret-file",
        str(tmp_path / "jwt.secret"),
        "--allowed-origins",
        "*",
        "--token-grace",
        "0.5",
    )
    url = daemon.ws_url

    async def flow() -> None:
        async with (
            connect(f"{url}?userId=fresh&token={token('fresh', exp_in=2)}") as fresh,
            connect(f"{url}?userId=stale&token={token('stale', exp_in=2)}") as stale,
        ):
            await fresh.recv(), await stale.recv()
            refresh = {"type": "REFRESH_TOKEN", "payload": {"token": token("fresh", 300)}}
            await fresh.send(json.dumps(refresh))
            # The stale one is closed at its exp + grace (exactly when: test_security_protocol).
            code, reason, _ = await closed_with(stale, timeout=10)
            assert (code, reason) == (1008, "token expired")
            await fresh.send('{"type":"HEARTBEAT"}')
            assert json.loads(await fresh.recv())["type"] == "HEARTBEAT_ACK"

    asyncio.run(flow())


def test_metrics_token(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    (tmp_path / "metrics.token").write_text("m" * 32)
    daemon = start_daemon("--metrics-token-file", str(tmp_path / "metrics.token"))
    assert daemon.get("/metrics")[0] == 401
    assert daemon.get("/metrics", {"Authorization": "Bearer " + "m" * 32})[0] == 200
    assert daemon.get("/health")[0] == 200
    assert daemon.get("/presence/alice")[0] == 200  # --auth none, no --api-token-file


def test_benchmark_limits_are_accepted(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--rate-limit", "1000000/1", "--max-connections-per-user", "1000000")

    async def flow() -> None:
        async with connect(daemon.ws_url + "?userId=a") as ws:
            await ws.recv()
            for _ in range(200):
                await ws.send('{"type":"HEARTBEAT"}')
            replies = [json.loads(await ws.recv()) for _ in range(200)]
            assert {r["type"] for r in replies} == {"HEARTBEAT_ACK"}

    asyncio.run(flow())


def test_rate_limit_and_caps_end_to_end(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(
        "--rate-limit", "3/10", "--max-connections-per-user", "1", "--max-connections", "2"
    )
    url = daemon.ws_url

    async def flow() -> None:
        async with connect(url + "?userId=a") as a, connect(url + "?userId=b") as b:
            await a.recv(), await b.recv()
            for _ in range(4):
                await a.send('{"type":"HEARTBEAT"}')
            kinds = [json.loads(await a.recv()) for _ in range(4)]
            assert [k.get("code") for k in kinds] == [None, None, None, "RATE_LIMITED"]
            with pytest.raises(websockets.InvalidStatus) as full:
                async with connect(url + "?userId=c"):
                    pass
            assert full.value.response.status_code == 503
        async with connect(url + "?userId=a") as a1, connect(url + "?userId=a") as a2:
            await a1.recv()
            assert (await closed_with(a2))[:2] == (1013, "too many connections for this user")

    asyncio.run(flow())


def test_slow_reader_is_cut_off(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--rate-limit", "1000000/1", "--max-send-buffer", "65536")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", daemon.port))
    sock.sendall(upgrade_request("/?userId=sloth"))
    response = b""
    while b"\r\n\r\n" not in response:  # a client waits for the 101 before sending frames
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    sock.sendall(client_frame(b'{"type":"SUBSCRIBE","payload":{"userIds":["busy"]}}'))
    # Then it never reads again, once the server has its subscription.
    wait_until(lambda: daemon.metrics()["presence_subscriptions_current"] == 1)

    def slow_readers() -> float:
        return daemon.metrics().get('ws_errors_total{reason="slow_reader"}', 0)

    async def flood() -> None:
        async with connect(daemon.ws_url + "?userId=busy") as ws:
            await ws.recv()
            pad = "x" * 3500
            while await asyncio.to_thread(slow_readers) < 1:
                for i in range(50):
                    update = {"status": "online", "metadata": {"i": i, "pad": pad}}
                    await ws.send(json.dumps({"type": "PRESENCE_UPDATE", "payload": update}))
                await ws.send('{"type":"HEARTBEAT"}')
                while json.loads(await ws.recv())["type"] != "HEARTBEAT_ACK":
                    pass

    try:
        asyncio.run(asyncio.wait_for(flood(), 30))
    except TimeoutError:
        errors = {k: v for k, v in daemon.metrics().items() if k.startswith("ws_")}
        raise AssertionError(f"the slow reader was never disconnected: {errors}") from None
    finally:
        sock.close()


def test_slow_and_oversized_handshakes_are_dropped(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--handshake-timeout", "1")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        # A byte every 0.1 s: the whole request line would take 4.7 s.
        request = b"GET /?userId=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        sent = 0
        try:
            for byte in request:
                sock.sendall(bytes([byte]))
                sent += 1
                if select.select([sock], [], [], 0.1)[0]:  # the server ended it
                    break
        except OSError:
            pass  # reset by the server: dropped
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""  # dropped with a reset (the reset not yet seen by a send)
        assert answer == b""  # dropped, no answer
    # While the client was still sending: the deadline counts from the start, busy or not.
    assert sent < len(request)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer == b"" or answer.startswith(b"HTTP/1.1 400")
    assert daemon.get("/health")[0] == 200


# -- TLS --------------------------------------------------------------------------------


def tls_client(max_version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = max_version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def handshake(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


@pytest.fixture
def tls_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    key, cert = make_cert(tmp_path, "live")
    return start_daemon(tls=(key, cert))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_old_tls_and_weak_ciphers_refused_modern_served(tls_daemon: Daemon) -> None:
    old = tls_client(ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(tls_daemon.port, old).close()
    no_ecdhe = tls_client(ssl.TLSVersion.TLSv1_2, "AES128-GCM-SHA256:AES256-SHA")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(tls_daemon.port, no_ecdhe).close()
    cbc = tls_client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        handshake(tls_daemon.port, cbc).close()
    tls12 = tls_client(ssl.TLSVersion.TLSv1_2)
    tls12.set_alpn_protocols(["h2", "http/1.1"])
    with handshake(tls_daemon.port, tls12) as s:
        assert s.version() == "TLSv1.2"
        assert (s.cipher() or ("",))[0].startswith("ECDHE-")
        assert s.selected_alpn_protocol() == "http/1.1"
    with handshake(tls_daemon.port, tls_client(ssl.TLSVersion.TLSv1_3)) as s:
        assert s.version() == "TLSv1.3"

    async def flow() -> None:
        async with connect(tls_daemon.ws_url + "?userId=a", ssl=tls_daemon.ssl_context()) as ws:
            assert json.loads(await ws.recv())["type"] == "CONNECT"

    asyncio.run(flow())
    assert tls_daemon.get("/health")[0] == 200


def served_fingerprint(port: int) -> bytes:
    with handshake(port, tls_client(ssl.TLSVersion.TLSv1_3)) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der_fingerprint(der)


def test_sighup_reloads_the_certificate_for_new_connections(
    tls_daemon: Daemon, tmp_path: Path
) -> None:
    assert tls_daemon.tls is not None
    key, cert = tls_daemon.tls
    first = fingerprint(cert)
    next_key, next_cert = make_cert(tmp_path, "next")
    assert served_fingerprint(tls_daemon.port) == first

    async def flow() -> None:
        async with connect(tls_daemon.ws_url + "?userId=a", ssl=tls_daemon.ssl_context()) as ws:
            await ws.recv()
            shutil.copy(next_key, key)
            shutil.copy(next_cert, cert)
            tls_daemon.signal(signal.SIGHUP)
            await asyncio.to_thread(
                wait_until,
                lambda: served_fingerprint(tls_daemon.port) == fingerprint(next_cert),
                message="the new certificate was never served",
            )
            # The connection made before the reload carries on.
            await ws.send('{"type":"HEARTBEAT"}')
            assert json.loads(await ws.recv())["type"] == "HEARTBEAT_ACK"
            # A broken file: the last good certificate stays, an error is logged.
            cert.write_text("not a certificate")
            tls_daemon.signal(signal.SIGHUP)
            await asyncio.to_thread(
                wait_until,
                lambda: "TLS reload for port" in tls_daemon.log(),
                message="no reload error logged",
            )
            assert served_fingerprint(tls_daemon.port) == fingerprint(next_cert)
            await ws.send('{"type":"HEARTBEAT"}')
            assert json.loads(await ws.recv())["type"] == "HEARTBEAT_ACK"

    asyncio.run(flow())
    assert tls_daemon.proc is not None and tls_daemon.proc.poll() is None


def test_compression_sends_a_snapshot_larger_than_the_inbound_limit(
    start_daemon: Callable[..., Daemon],
) -> None:
    """--max-message-size bounds what clients send, not the server's own PRESENCE_STATE
    (Autobahn applies it to outgoing messages too, after compression)."""
    daemon = start_daemon("--compression", "--max-message-size", "4096")
    # Random metadata does not compress: three users' worth is well over 4096 bytes.
    metadata = {f"u{i}": {"blob": secrets.token_urlsafe(2700)} for i in range(3)}

    async def flow() -> None:
        users = []
        for user_id, meta in metadata.items():
            ws = await websockets.connect(
                f"{daemon.ws_url}?userId={user_id}", compression="deflate"
            )
            await ws.recv()
            update = {"type": "PRESENCE_UPDATE", "payload": {"status": "busy", "metadata": meta}}
            await ws.send(json.dumps(update))
            users.append(ws)
        async with websockets.connect(daemon.ws_url + "?userId=w", compression="deflate") as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert extensions.startswith("permessage-deflate")
            await ws.recv()  # CONNECT
            await ws.send(json.dumps({"type": "SUBSCRIBE", "payload": {"userIds": list(metadata)}}))
            state = json.loads(await ws.recv())
            assert {u: v["metadata"] for u, v in state["users"].items()} == metadata
        for user in users:
            await user.close()

    asyncio.run(flow())
