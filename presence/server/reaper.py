"""The reaper: on an injectable clock, closes connections that went quiet and lets the hub
expire offline grace deadlines."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from ..core import wire
from ..hub import PresenceHub


class Reaper(Service):
    def __init__(
        self, hub: PresenceHub, heartbeat_timeout: float, clock: IReactorTime, interval: float
    ) -> None:
        self.hub = hub
        self.heartbeat_timeout = heartbeat_timeout
        self.clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def reap(self) -> None:
        now = self.clock.seconds()
        for conn in self.hub.model.stale(now, self.heartbeat_timeout):
            conn.peer.close(wire.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
        self.hub.tick(now)

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.reap)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
