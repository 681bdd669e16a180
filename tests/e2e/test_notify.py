"""Type=notify against a fake NOTIFY_SOCKET: a real `twistd presence` tells the datagram
socket this test binds READY=1 once its port accepts (with --redis: once it is registered),
WATCHDOG=1 again and again, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster_client import wait_health
from tests.support.daemon import ROOT, Daemon, wait_until
from tests.support.redis_fixture import RedisServer, TcpProxy, needs_redis

pytestmark = pytest.mark.e2e

READY, WATCHDOG, STOPPING = b"READY=1", b"WATCHDOG=1", b"STOPPING=1"


class FakeSystemd:
    """The notify socket: a datagram socket bound at a path or an abstract name, which
    learns each sender's pid from the kernel (SO_PASSCRED), as systemd does to enforce
    NotifyAccess=main."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(b"\0" + name[1:].encode() if name.startswith("@") else name)
        self.sock.setblocking(False)
        self.got: list[tuple[int, bytes]] = []  # (sender pid, datagram), in order

    def poll(self) -> list[bytes]:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return [data for _, data in self.got]
            pid = 0
            for level, kind, value in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = struct.unpack("3i", value[:12])[0]
            self.got.append((pid, data))

    def from_pid(self, pid: int) -> list[bytes]:
        self.poll()
        return [data for sender, data in self.got if sender == pid]

    def count(self, state: bytes, pid: int) -> int:
        return self.from_pid(pid).count(state)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        name = str(tmp_path / "notify")
    else:
        name = f"@presence-test-{os.getpid()}-{time.monotonic_ns()}"
    fake = FakeSystemd(name)
    yield fake
    fake.close()


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Starts `twistd presence` without waiting for it to answer: READY is the signal."""
    daemons: list[Daemon] = []

    def start(systemd: FakeSystemd, *args: str, **more_env: str) -> Daemon:
        env = {"NOTIFY_SOCKET": systemd.name, "WATCHDOG_USEC": "1000000", **more_env}
        daemon = Daemon(tmp_path, *args, env=env)
        daemons.append(daemon)
        with open(daemon.log_path, "ab") as log:
            daemon.proc = subprocess.Popen(
                daemon.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **daemon.env},
                cwd=ROOT,
            )
        return daemon

    yield start
    for daemon in daemons:
        daemon.stop()


def pid(daemon: Daemon) -> int:
    assert daemon.proc is not None
    return daemon.proc.pid


def wait_for(systemd: FakeSystemd, daemon: Daemon, state: bytes, count: int = 1) -> None:
    """Until ``daemon``'s own process sent ``state`` ``count`` times (in all)."""

    def seen() -> bool:
        assert daemon.proc is not None
        done = systemd.count(state, pid(daemon)) >= count
        if not done and daemon.proc.poll() is not None:
            raise AssertionError(f"presence exited with {daemon.proc.returncode}:\n{daemon.log()}")
        return done

    wait_until(seen, 20, message=lambda: f"{state!r} x{count}; got {systemd.got}\n{daemon.log()}")


def test_ready_when_the_port_accepts_then_watchdog_then_stopping_on_sigterm(
    launch: Callable[..., Daemon], systemd: FakeSystemd
) -> None:
    daemon = launch(systemd)
    wait_for(systemd, daemon, READY)
    # READY means serving: the very first attempt connects and is answered.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5):
        pass
    assert daemon.get_json("/health")[0] == 200
    # every datagram came from the main process (NotifyAccess=main would drop others)
    assert {sender for sender, _ in systemd.got} == {pid(daemon)}
    # every 0.5 s (half WATCHDOG_USEC): the count keeps growing
    pings = systemd.count(WATCHDOG, pid(daemon))
    wait_for(systemd, daemon, WATCHDOG, pings + 3)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == -signal.SIGTERM  # twistd re-raises it: a clean stop for systemd
    sent = systemd.from_pid(pid(daemon))
    assert sent.count(READY) == 1 and sent.count(STOPPING) == 1
    assert sent[-1] == STOPPING, "nothing after STOPPING=1"
    assert set(sent) == {READY, WATCHDOG, STOPPING}


def test_no_watchdog_pings_when_they_are_for_another_process(
    launch: Callable[..., Daemon], tmp_path: Path
) -> None:
    """WATCHDOG_PID names another process: READY and STOPPING only. The absence is shown
    by order: a second daemon, started once the first is ready, pings the same socket
    three times (1.5 s) before the first is stopped."""
    systemd = FakeSystemd(str(tmp_path / "notify"))
    try:
        quiet = launch(systemd, WATCHDOG_PID="1")
        wait_for(systemd, quiet, READY)
        pinging = launch(systemd)
        wait_for(systemd, pinging, WATCHDOG, 3)
        quiet.stop()
        assert systemd.from_pid(pid(quiet)) == [READY, STOPPING]
    finally:
        systemd.close()


@needs_redis
def test_with_redis_ready_only_once_registered(
    launch: Callable[..., Daemon],
    systemd: FakeSystemd,
    redis_server: RedisServer,
    tcp_proxy: Callable[[int], TcpProxy],
) -> None:
    proxy = tcp_proxy(redis_server.port)
    proxy.pause()  # a hung Redis: connections are accepted, nothing is answered
    daemon = launch(systemd, "--redis", f"redis://127.0.0.1:{proxy.port}/0", "--node-timeout", "2")
    # The port is bound and serving this node's clients alone, but not registered...
    wait_until(lambda: answers(daemon), 20, message=daemon.log)
    health = wait_health(daemon, 503)
    assert "redis" in health["reason"]
    # ...and pings go on meanwhile: READY would have come before them (it came first
    # without --redis), so three pings without it show it is held back.
    wait_for(systemd, daemon, WATCHDOG, 3)
    assert READY not in systemd.from_pid(pid(daemon))
    proxy.resume()
    wait_for(systemd, daemon, READY)
    assert wait_health(daemon, 200)["status"] != "DEGRADED"
    assert daemon.metrics()["presence_redis_up"] == 1
    assert systemd.from_pid(pid(daemon)).count(READY) == 1


def answers(daemon: Daemon) -> bool:
    try:
        daemon.get("/health")
    except (OSError, urllib.error.URLError):
        return False
    return True
