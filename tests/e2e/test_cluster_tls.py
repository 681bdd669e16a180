"""rediss://: TLS to Redis, verified against the system trust or SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cluster_client import Client, presence, start_node, wait_health, wait_until
from tests.support.daemon import Daemon, free_port
from tests.support.redis_fixture import REDIS_SERVER, needs_redis

pytestmark = [
    pytest.mark.e2e,
    needs_redis,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]


def make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=presence-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext")  # fmt: skip


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_rediss(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    make_certs(tmp_path)
    port = free_port()
    assert REDIS_SERVER is not None
    server = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: accepts(port), "redis-server listening for TLS")
        url = f"rediss://localhost:{port}/0"
        trusted = start_node(start_daemon, url, env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")})
        untrusted = start_daemon("--redis", url)  # the test CA is not in the system trust
        assert "redis" in wait_health(untrusted, 503)["reason"]

        async def flow() -> None:
            alice = await Client.connect(trusted, "alice")
            await alice.update("away")
            await alice.handled()  # sent to Redis: the read below comes after it
            assert presence(trusted, "alice")["alice"]["status"] == "away"
            await Client.close_all()

        asyncio.run(flow())
    finally:
        server.terminate()
        server.wait(5)
