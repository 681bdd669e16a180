"""systemd's notify protocol (sd_notify), spoken directly: one datagram per state on the
AF_UNIX socket named by $NOTIFY_SOCKET. No libsystemd, no new dependency.

    READY=1      once every port listens and the hub is ready (with --redis: registered
                 and serving for the first time)
    WATCHDOG=1   every half $WATCHDOG_USEC, from the reactor (a stuck reactor stops it)
    STOPPING=1   when the daemon starts stopping (SIGTERM, systemctl stop)

Without $NOTIFY_SOCKET none of this happens. A failed send is logged once per kind and
never stops the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

READY = b"READY=1"
WATCHDOG = b"WATCHDOG=1"
STOPPING = b"STOPPING=1"


def socket_address(name: str) -> str | bytes:
    """$NOTIFY_SOCKET as an address: "@name" is Linux's abstract namespace (a leading NUL)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 (half of $WATCHDOG_USEC), or None when the watchdog is
    not ours: unset, not a positive integer, or $WATCHDOG_PID names another process."""
    usec, owner = environ.get("WATCHDOG_USEC"), environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if owner and owner.strip() != str(pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warn("WATCHDOG_USEC={usec!r} is not a number: no watchdog pings", usec=usec)
        return None
    return value / 2e6 if value > 0 else None


class Notifier:
    """Sends notify datagrams to one address; ``send`` never raises."""

    def __init__(self, address: str | bytes) -> None:
        self.address = address
        self._socket: socket.socket | None = None
        self._failed: set[bytes] = set()

    def send(self, state: bytes) -> bool:
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(state, self.address)
        except OSError as e:
            if state not in self._failed:  # a watchdog ping each 0.5 s must not flood the log
                self._failed.add(state)
                log.warn(
                    "systemd notify {state} failed: {error}",
                    state=state.decode(),
                    error=e.strerror or str(e),
                )
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class NotifyService(Service):
    """READY=1 once ``ready()`` fires after start; WATCHDOG=1 on the clock; STOPPING=1 on
    stop. Added after the listening ports: when it starts, they are bound (each port binds
    in privilegedStartService, which twistd runs for every service before any start)."""

    def __init__(
        self,
        clock: IReactorTime,
        ready: Callable[[], defer.Deferred[None]],
        environ: Mapping[str, str] | None = None,
        pid: Callable[[], int] = os.getpid,
        notifier: Callable[[str | bytes], Notifier] = Notifier,
    ) -> None:
        self.clock = clock
        self._ready = ready
        self._environ = os.environ if environ is None else environ
        self._pid = pid
        self._make_notifier = notifier
        self.notifier: Notifier | None = None
        self.watchdog: float | None = None
        self.is_ready = False
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        # Read at start, not at build: a daemonizing twistd has forked by now (WATCHDOG_PID).
        name = self._environ.get("NOTIFY_SOCKET")
        if not name:
            return
        self.notifier = notifier = self._make_notifier(socket_address(name))
        self.watchdog = watchdog_interval(self._environ, self._pid())
        if self.watchdog is not None:
            self._loop = LoopingCall(notifier.send, WATCHDOG)
            self._loop.clock = self.clock
            self._loop.start(self.watchdog, now=False)
        self._ready().addCallbacks(self._became_ready, self._not_ready)

    def _became_ready(self, _: object) -> None:
        if self.running and self.notifier is not None and not self.is_ready:
            self.is_ready = True
            self.notifier.send(READY)
            log.info("systemd: ready")

    def _not_ready(self, failure: Failure) -> None:
        log.failure("systemd: readiness failed", failure)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self.notifier is not None:
            self.notifier.send(STOPPING)
            self.notifier.close()
            self.notifier = None
