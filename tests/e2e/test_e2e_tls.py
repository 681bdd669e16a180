"""wss and https on one `--port ssl:...` with a certificate generated here, TLS 1.2 minimum."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.support.certs import self_signed
from tests.support.daemon import Daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module: no test here changes its state."""
    directory = tmp_path_factory.mktemp("tls")
    daemon = Daemon(
        directory,
        *("--heartbeat-interval", "1", "--heartbeat-timeout", "5"),
        tls=self_signed(directory),
    )
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_wss_connect_heartbeat_disconnect(tls_daemon: Daemon) -> None:
    assert tls_daemon.ws_url.startswith("wss://")

    async def flow() -> None:
        async with websockets.connect(
            tls_daemon.ws_url + "?userId=secure",
            ssl=tls_daemon.ssl_context(),  # verifies the chain against our certificate
            proxy=None,
            open_timeout=5,
            ping_interval=None,
        ) as ws:
            connect = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert connect["type"] == "CONNECT" and connect["userId"] == "secure"
            await ws.send(json.dumps({"type": "HEARTBEAT", "timestamp": "2024-12-18T10:00:00Z"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "HEARTBEAT_ACK"
            await ws.send(json.dumps({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}}))
            await ws.send(json.dumps({"type": "DISCONNECT"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000

    asyncio.run(flow())


def test_https_health_and_metrics(tls_daemon: Daemon) -> None:
    assert tls_daemon.http_url.startswith("https://")
    status, health = tls_daemon.get_json("/health")
    assert status == 200 and health["status"] == "OK"
    assert isinstance(health["uptime"], int | float)
    status, body = tls_daemon.get("/metrics")
    assert status == 200 and b"# TYPE ws_connections_total counter" in body


def test_plain_http_on_the_tls_port_gets_no_answer(tls_daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    assert b'"status"' not in answer and not answer.startswith(b"HTTP/1.1 200")


def handshake(port: int, maximum: ssl.TLSVersion) -> str:
    """A TLS handshake from a client that offers TLS 1.0 up to `maximum`; its version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # Let this client really offer the old versions (OpenSSL's level 2 forbids them).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
        context.wrap_socket(sock) as tls,
    ):
        version = tls.version()
        assert version is not None
        return version


def test_tls_1_2_and_1_3_are_served(tls_daemon: Daemon) -> None:
    assert handshake(tls_daemon.port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(tls_daemon.port, ssl.TLSVersion.MAXIMUM_SUPPORTED) == "TLSv1.3"


def test_a_tls_1_1_client_is_refused(tls_daemon: Daemon) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        handshake(tls_daemon.port, ssl.TLSVersion.TLSv1_1)
    # The server's protocol_version alert, not a client that could not offer TLS 1.1.
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION", refused.value


def test_the_old_client_really_speaks_tls_1_1(tmp_path: Path) -> None:
    """The control for the test above: against a loopback server that allows TLS 1.1,
    the same client does get TLS 1.1, so the daemon's refusal is the daemon's doing."""
    key, cert = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        port = listener.getsockname()[1]
        result: list[str] = []

        def serve() -> None:
            conn, _ = listener.accept()
            with conn, context.wrap_socket(conn, server_side=True) as tls:
                result.append(str(tls.version()))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert handshake(port, ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
        thread.join(5)
    assert result == ["TLSv1.1"]
