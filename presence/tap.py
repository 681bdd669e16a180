"""twistd presence: options (each coerced and validated) and the MultiService they build."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from . import wire
from .cluster import CLUSTER_OPTIONS, ClusterHub, build_cluster_hub, check_cluster_options
from .hub import LocalHub, PresenceHub
from .metrics import Metrics
from .model import PresenceModel
from .reaper import Reaper
from .web import build_site
from .ws import PresenceFactory, ProtocolConfig

log = Logger()

DEFAULT_PORT = "tcp:3000"
SHUTDOWN_WAIT = 3.0


def _number(kind: Callable[[str], Any], minimum: float, name: str) -> Callable[[str], Any]:
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, not {value!r}") from None
        if number != number or number in (float("inf"), float("-inf")) or number < minimum:
            raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
        return number

    coerce.coerceDoc = f"At least {minimum}."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A WebSocket presence daemon: ws://HOST:PORT/?userId=ID, GET /health, GET /metrics, "
        "GET /presence/{userId} on every --port."
    )
    optParameters: list[Sequence[Any]] = [
        [
            "heartbeat-interval",
            None,
            15.0,
            "Seconds between heartbeats the server advises clients to send.",
            _number(float, 0.1, "--heartbeat-interval"),
        ],
        [
            "heartbeat-timeout",
            None,
            45.0,
            "Seconds without an inbound frame before a connection is closed (4408).",
            _number(float, 0.1, "--heartbeat-timeout"),
        ],
        [
            "max-message-size",
            None,
            65536,
            "Largest message in bytes; a larger one closes the connection (1009).",
            _number(int, 256, "--max-message-size"),
        ],
        [
            "offline-grace",
            None,
            10.0,
            "Seconds a user stays present after an abrupt disconnect (0 disables).",
            _number(float, 0, "--offline-grace"),
        ],
        [
            "max-subscriptions",
            None,
            1000,
            "Users one connection may watch.",
            _number(int, 1, "--max-subscriptions"),
        ],
        *CLUSTER_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, description: str) -> None:
        """A Twisted server endpoint (tcp:3000, ssl:3443:privateKey=K:certKey=C,
        systemd:domain=INET:index=0, unix:/run/presence.sock); repeatable.
        [default: tcp:3000]"""
        if not description or ":" not in description:
            raise usage.UsageError(f"--port: {description!r} is not an endpoint like tcp:3000")
        self["ports"].append(description)

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = [DEFAULT_PORT]
        if self["heartbeat-timeout"] <= self["heartbeat-interval"]:
            raise usage.UsageError("--heartbeat-timeout must be longer than --heartbeat-interval")
        check_cluster_options(self)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        # twistd prints its whole usage before a UsageError; ours is one clear line.
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"presence: {e}") from None


class ShutdownService(Service):
    """On stop, closes every client with 1001 and waits (briefly) for them to go."""

    def __init__(self, hub: PresenceHub, clock: IReactorTime) -> None:
        self.hub = hub
        self.clock = clock

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        for conn in self.hub.model.all_connections():
            conn.peer.close(wire.CLOSE_GOING_AWAY, "server shutting down")
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.clock.seconds() + SHUTDOWN_WAIT

        def check() -> None:
            if self.hub.model.connection_count == 0 or self.clock.seconds() >= deadline:
                done.callback(None)
            else:
                self.clock.callLater(0.05, check)

        check()
        return done


def reaper_interval(heartbeat_timeout: float) -> float:
    return min(1.0, heartbeat_timeout / 4)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    root = MultiService()
    model = PresenceModel(
        offline_grace=options["offline-grace"], max_subscriptions=options["max-subscriptions"]
    )
    metrics = Metrics()
    hub: LocalHub | ClusterHub
    if options["redis"]:
        hub = build_cluster_hub(options, model, metrics.registry, reactor)
        hub.setServiceParent(root)  # on stop it removes this node's connections from Redis
        health_problem: Callable[[], Any] = hub.health_problem
    else:
        hub = LocalHub(model)
        health_problem = lambda: None  # noqa: E731
    metrics.watch(lambda: hub.model, lambda: hub.diffs_sent)
    config = ProtocolConfig(
        heartbeat_interval=options["heartbeat-interval"],
        heartbeat_timeout=options["heartbeat-timeout"],
        max_message_size=options["max-message-size"],
    )
    factory = PresenceFactory(hub, metrics, config, reactor)
    site = build_site(factory, hub, metrics, reactor, reactor.seconds(), health_problem)

    ShutdownService(hub, reactor).setServiceParent(root)
    Reaper(
        hub, options["heartbeat-timeout"], reactor, reaper_interval(options["heartbeat-timeout"])
    ).setServiceParent(root)
    for description in options["ports"]:
        # strports.service raises at start-up if the port cannot be bound.
        strports.service(description, site, reactor=reactor).setServiceParent(root)
    log.info("presence serving on {ports}", ports=", ".join(options["ports"]))
    return root
