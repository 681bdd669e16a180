"""The daemon's small services, all on an injectable clock: the reaper, the shutdown that
says goodbye to every client, and a listening port that fails start-up in one line."""

from __future__ import annotations

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import LoopingCall

from ..core import wire
from ..hub import PresenceHub
from .tls import DEFAULT_BACKLOG


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
        for conn in self.hub.stale(now, self.heartbeat_timeout):
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


SHUTDOWN_WAIT = 3.0


def reaper_interval(heartbeat_timeout: float) -> float:
    return min(1.0, heartbeat_timeout / 4)


class ShutdownService(Service):
    """On stop, closes every client with 1001 and waits (briefly) for them to go."""

    def __init__(self, hub: PresenceHub, clock: IReactorTime) -> None:
        self.hub = hub
        self.clock = clock

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for conn in self.hub.connections():
            conn.peer.close(wire.CLOSE_GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.clock.seconds() + SHUTDOWN_WAIT

        def check() -> None:
            if self.hub.figures.connection_count == 0 or self.clock.seconds() >= deadline:
                done.callback(None)
            else:
                self.clock.callLater(0.05, check)

        check()
        return done


def with_backlog(description: str) -> str:
    """A tcp:, tcp6: or unix: endpoint description with our listen backlog unless it gives
    one (``backlog=N`` in the description wins)."""
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "tcp6", "unix") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


class ListeningPort(StreamServerEndpointService):
    """A listening port whose failure to bind stops start-up with one clear line."""

    _raiseSynchronously = True

    def __init__(
        self, description: str, endpoint: IStreamServerEndpoint, factory: IProtocolFactory
    ) -> None:
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise SystemExit(
                f"presence: cannot listen on {self.description}: {e.socketError}"
            ) from None
