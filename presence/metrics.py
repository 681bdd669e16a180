"""The daemon's own Prometheus registry: the API document's ws_* families, and the
presence_* families read from the model at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import TRANSITION_TARGETS, PresenceModel

MESSAGE_TYPES: Final = (
    "HEARTBEAT",
    "PRESENCE_UPDATE",
    "DISCONNECT",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "REFRESH_TOKEN",
    "INVALID",
)
ERROR_REASONS: Final = (
    "invalid_message",
    "binary_frame",
    "too_big",
    "protocol",
    "internal",
    "rate_limited",
    "auth",
    "handshake",
)
SIZE_BUCKETS: Final = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536, 262144)
LATENCY_BUCKETS: Final = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class _PresenceCollector(Collector):
    def __init__(self, model: Callable[[], PresenceModel], diffs_sent: Callable[[], int]) -> None:
        self._model = model
        self._diffs_sent = diffs_sent

    def collect(self) -> Iterator[Metric]:
        model = self._model()
        yield GaugeMetricFamily(
            "presence_users_online",
            "Users anyone would see as present (offline grace included).",
            value=model.online_user_count,
        )
        transitions = CounterMetricFamily(
            "presence_transitions_total", "User status transitions.", labels=["to"]
        )
        for target in TRANSITION_TARGETS:
            transitions.add_metric([target], model.stats.transitions[target])
        yield transitions
        yield GaugeMetricFamily(
            "presence_subscriptions_current",
            "(watching connection, watched user) pairs.",
            value=model.subscription_count,
        )
        yield CounterMetricFamily(
            "presence_diffs_sent", "PRESENCE_DIFF messages sent.", value=self._diffs_sent()
        )
        yield CounterMetricFamily(
            "presence_offline_suppressed",
            "Offline diffs not sent because the user came back within the grace.",
            value=model.stats.offline_suppressed,
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.connections_total = Counter(
            "ws_connections_total", "WebSocket connections opened.", registry=registry
        )
        self.connections_current = Gauge(
            "ws_connections_current", "WebSocket connections open now.", registry=registry
        )
        self.clients_current = Gauge(
            "ws_clients_current", "Distinct userIds connected now.", registry=registry
        )
        messages = Counter(
            "ws_messages_total", "Messages received, by type.", ["type"], registry=registry
        )
        self.messages = {kind: messages.labels(kind) for kind in MESSAGE_TYPES}
        errors = Counter("ws_errors_total", "Errors, by reason.", ["reason"], registry=registry)
        self.errors = {reason: errors.labels(reason) for reason in ERROR_REASONS}
        self.message_size = Histogram(
            "ws_message_size_bytes",
            "Size of received messages.",
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "ws_latency_seconds",
            "Server handling time per message.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def watch(self, model: Callable[[], PresenceModel], diffs_sent: Callable[[], int]) -> None:
        """Read the presence figures (and distinct clients) from the model at scrape time."""
        self.clients_current.set_function(lambda: model().connected_user_count)
        self.connections_current.set_function(lambda: model().connection_count)
        self.registry.register(_PresenceCollector(model, diffs_sent))


class ClusterMetrics:
    """The cluster's families, in the daemon's own registry (only with --redis)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.redis_up = Gauge(
            "presence_redis_up", "1 while this node is connected to Redis.", registry=registry
        )
        self.redis_errors = Counter(
            "presence_redis_errors_total",
            "Redis connection losses and failed Redis operations.",
            registry=registry,
        )
        self.nodes_current = Gauge(
            "presence_nodes_current", "Live nodes in the cluster, as last seen.", registry=registry
        )
        self.node_cleanups = Counter(
            "presence_node_cleanups_total",
            "Dead nodes whose connections this node ended.",
            registry=registry,
        )
