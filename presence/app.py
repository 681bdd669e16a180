"""``build(config, reactor)``: the whole daemon as one MultiService. The command line
(``tap.py``) and the tests both build it here, so what the tests drive is what runs."""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from .cluster.hub import ClusterHub, build_cluster_hub
from .cluster.metrics import ClusterMetrics
from .cluster.options import ClusterConfig
from .cluster.webhook_consumer import stream_consumer
from .config import Config
from .core.model import PresenceModel
from .core.room_events import RoomJournal
from .core.rooms import Rooms
from .hub import LocalHub
from .server.dashboard import DashboardPage
from .server.factory import PresenceFactory, ProtocolConfig
from .server.metrics import Metrics
from .server.notify import NotifyService
from .server.online import OnlineQuery
from .server.services import (
    ListeningPort,
    Reaper,
    ShutdownService,
    reaper_interval,
    with_backlog,
)
from .server.stats import StatsPage
from .server.tls import TLSReloadService
from .server.web import build_site
from .server.webhook_http import TreqPoster, WebhookService
from .server.webhook_metrics import WebhookMetrics
from .server.webhooks import MemoryQueue, WebhookDelivery

log = Logger()


class Daemon(MultiService):
    """The services, and the parts tests and tools reach for."""

    def __init__(self, config: Config, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.clock = reactor
        self.model = PresenceModel(config.offline_grace, config.max_subscriptions)
        self.metrics = Metrics()
        self.metrics.max_connections = config.max_connections
        self.webhook_metrics = WebhookMetrics(self.metrics.registry)  # zeros without webhooks
        self.webhooks: WebhookDelivery | None = None
        sink: MemoryQueue | None = None
        if config.webhooks is not None:
            poster = TreqPoster(reactor, config.webhooks.concurrency)
            self.webhooks = WebhookDelivery(config.webhooks, reactor, poster, self.webhook_metrics)
            if config.cluster is None:
                sink = MemoryQueue(self.webhooks)  # with --redis: the cluster's stream feeds it
            # Added first, so it stops last, after the clients left.
            WebhookService(self.webhooks, poster, sink).setServiceParent(self)
        self.hub: LocalHub | ClusterHub
        if config.cluster is not None:
            self.hub = build_cluster_hub(
                self.model,
                config.cluster,
                reactor,
                ClusterMetrics(self.metrics.registry),
                config.max_connections_per_user,
                rooms(config, self.model),
                config.webhooks,
            )
            # On stop it removes this node's connections from Redis, after the clients left.
            self.hub.setServiceParent(self)
            if self.webhooks is not None:
                self._consume(self.hub, self.webhooks, config.cluster)
        else:
            self.hub = LocalHub(
                self.model,
                config.max_connections_per_user,
                rooms(config, self.model, journal=sink is not None),
                sink,
            )
        hub = self.hub
        self.metrics.watch(hub.figures, lambda: hub.diffs_sent, hub.users_present, hub.room_figures)
        self.factory = PresenceFactory(hub, self.metrics, protocol_config(config), reactor)
        self.site = build_site(
            self.factory,
            hub,
            self.metrics,
            reactor,
            reactor.seconds(),
            require_api_token=config.require_api_token,
            api_token=config.api_token,
            metrics_token=config.metrics_token,
            handshake_timeout=config.handshake_timeout,
            max_header_bytes=config.max_header_bytes,
            online=OnlineQuery(hub),
            api={b"stats": StatsPage(self.metrics, hub, reactor)},
            pages={b"dashboard": DashboardPage()} if config.dashboard else {},
        )
        ShutdownService(hub, reactor).setServiceParent(self)
        # The reaper's tick also sends the batched room diffs that are due.
        interval = min(reaper_interval(config.heartbeat_timeout), config.room_batch_interval)
        self.reaper = Reaper(hub, config.heartbeat_timeout, reactor, interval)
        self.reaper.setServiceParent(self)
        tls = []
        for listen in config.ports:
            # ssl: ports get our TLS policy and a context that reloads on SIGHUP.
            if listen.tls is None:
                endpoint = endpoints.serverFromString(reactor, with_backlog(listen.description))
            else:
                endpoint = listen.tls.endpoint(reactor)
                tls.append(listen.tls)
            ListeningPort(listen.description, endpoint, self.site).setServiceParent(self)
        TLSReloadService(tls, reactor).setServiceParent(self)
        # Last: started once every port is bound, stopped first (STOPPING=1 at once).
        self.notify = NotifyService(reactor, hub.ready)
        self.notify.setServiceParent(self)

    # --log-format json: twistd makes its Application after makeService and starts its
    # logger on the Application's ILogObserver component when it has one (server/logs.py).
    log_observer: ILogObserver | None = None

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def _consume(self, hub: ClusterHub, delivery: WebhookDelivery, cluster: ClusterConfig) -> None:
        """The cluster's webhook streams feed the delivery; stopped before the hub leaves.
        presence_webhook_pending is the cluster's backlog (the streams' length)."""
        endpoints = len(delivery.config.urls)
        metrics = self.webhook_metrics
        consumer = stream_consumer(
            hub.link,
            cluster.node_name,
            cluster.node_timeout,
            delivery,
            self.clock,
            lambda n: metrics.count("dropped", n * endpoints),  # per endpoint, as delivery's
        )
        metrics.pending.set_function(lambda: consumer.backlog)
        consumer.setServiceParent(self)


def rooms(config: Config, model: PresenceModel, journal: bool = False) -> Rooms:
    """The node's rooms; a RoomJournal (noting memberships) when webhooks need room events."""
    return (RoomJournal if journal else Rooms)(
        lambda user_id: model.view(user_id).status,
        offline_grace=config.offline_grace,
        max_rooms_per_connection=config.max_rooms_per_connection,
        max_room_members=config.max_room_members,
        batch_threshold=config.room_batch_threshold,
        batch_interval=config.room_batch_interval,
        list_limit=config.room_list_limit,
    )


def protocol_config(config: Config) -> ProtocolConfig:
    return ProtocolConfig(
        heartbeat_interval=config.heartbeat_interval,
        heartbeat_timeout=config.heartbeat_timeout,
        max_message_size=config.max_message_size,
        allowed_origins=config.allowed_origins,
        compression=config.compression,
        verifier=config.verifier,
        token_grace=config.token_grace,
        rate_messages=config.rate_messages,
        rate_seconds=config.rate_seconds,
        max_connections=config.max_connections,
        max_send_buffer=config.max_send_buffer,
        log_connections=config.log_level == "debug",
    )


def build(config: Config, reactor: Any = None) -> Daemon:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    daemon = Daemon(config, reactor)
    verifier = config.verifier
    log.info(
        "auth={auth}{algorithms} origins={origins} rate-limit={rate}/{per}s "
        "max-connections={total} per-user={per_user}",
        auth=config.auth,
        algorithms=f" ({', '.join(verifier.algorithms)})" if verifier else "",
        origins=",".join(config.allowed_origins),
        rate=config.rate_messages,
        per=config.rate_seconds,
        total=config.max_connections or "none",
        per_user=config.max_connections_per_user or "none",
    )
    if config.auth != "none" and config.api_token is None:
        log.warn("no --api-token-file: GET /presence answers 401 to everyone")
    if config.ports:
        log.info(
            "presence serving on {ports}", ports=", ".join(p.description for p in config.ports)
        )
    return daemon
