"""systemd notify (server/notify.py) on a task.Clock, to a real datagram socket the test
binds: READY=1 when the hub is ready, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1
on stop; nothing at all without NOTIFY_SOCKET."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from presence.app import build
from presence.config import Config
from presence.server.notify import (
    READY,
    STOPPING,
    WATCHDOG,
    NotifyService,
    socket_address,
    watchdog_interval,
)


class Listener:
    """The systemd side: a datagram socket; ``take`` reads what arrived, in order."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.name)
        self.sock.setblocking(False)

    def take(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    listening = Listener(tmp_path / "notify")
    yield listening
    listening.sock.close()


def service(
    clock: Clock, env: dict[str, str], ready: defer.Deferred[None] | None = None, pid: int = 42
) -> NotifyService:
    return NotifyService(clock, lambda: ready or defer.succeed(None), environ=env, pid=lambda: pid)


def test_socket_names() -> None:
    assert socket_address("@systemd/notify") == b"\0systemd/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, 0.5),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "43"}, None),  # another process's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_and_ours_only(
    env: dict[str, str], interval: float | None
) -> None:
    assert watchdog_interval(env, 42) == interval


def test_without_notify_socket_nothing_is_sent(listener: Listener) -> None:
    clock = Clock()
    notify = service(clock, {"WATCHDOG_USEC": "1000000"})
    notify.startService()
    clock.advance(5)
    notify.stopService()
    assert notify.notifier is None and listener.take() == []
    assert not clock.getDelayedCalls()


def test_ready_once_the_hub_is_ready_then_watchdog_then_stopping(listener: Listener) -> None:
    clock = Clock()
    hub_ready: defer.Deferred[None] = defer.Deferred()
    notify = service(clock, {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "1000000"}, hub_ready)
    notify.startService()
    assert listener.take() == []  # the hub is not ready: no READY, no ping before 0.5 s
    clock.advance(0.5)
    assert listener.take() == [WATCHDOG]  # pings do not wait for READY
    hub_ready.callback(None)
    assert listener.take() == [READY]
    for _ in range(3):
        clock.advance(0.5)
    assert listener.take() == [WATCHDOG] * 3
    notify.stopService()
    assert listener.take() == [STOPPING]
    clock.advance(5)
    assert listener.take() == [] and not clock.getDelayedCalls()


def test_no_watchdog_pings_for_another_pid(listener: Listener) -> None:
    clock = Clock()
    env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    notify = service(clock, env)
    notify.startService()
    clock.advance(10)
    notify.stopService()
    assert listener.take() == [READY, STOPPING]


def test_ready_after_stop_is_not_sent(listener: Listener) -> None:
    clock = Clock()
    hub_ready: defer.Deferred[None] = defer.Deferred()
    notify = service(clock, {"NOTIFY_SOCKET": listener.name}, hub_ready)
    notify.startService()
    notify.stopService()
    hub_ready.callback(None)
    assert listener.take() == [STOPPING]


def test_abstract_socket_name(listener: Listener) -> None:
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    abstract.bind(b"\0presence-test-" + str(id(abstract)).encode())
    abstract.setblocking(False)
    name = "@" + abstract.getsockname()[1:].decode()
    try:
        notify = service(Clock(), {"NOTIFY_SOCKET": name})
        notify.startService()
        assert abstract.recv(100) == READY
    finally:
        abstract.close()


def test_a_socket_nobody_listens_on_is_logged_once_per_kind(tmp_path: Path) -> None:
    clock = Clock()
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody"), "WATCHDOG_USEC": "1000000"}
    notify = service(clock, env)
    with capturedLogs() as events:
        notify.startService()
        clock.advance(3)  # six pings, all failing; the loop keeps running
        notify.stopService()
    failed = [
        e["state"]
        for e in events
        if e.get("log_namespace") == "presence.server.notify" and "state" in e
    ]
    assert failed == ["READY=1", "WATCHDOG=1", "STOPPING=1"]
    assert notify.watchdog == 0.5 and notify.is_ready


def test_the_daemon_sends_ready_at_start_and_stopping_first_on_stop(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    clock = Clock()
    daemon = build(Config(ports=()), clock)
    assert list(daemon)[-1] is daemon.notify  # started last, stopped first
    daemon.startService()
    assert listener.take() == [READY]
    stopped = daemon.stopService()
    assert listener.take() == [STOPPING]
    clock.advance(5)
    assert stopped.called
