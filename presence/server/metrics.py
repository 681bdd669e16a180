"""The daemon's own Prometheus registry: the API document's ws_* families, and the
presence_* families read from the model at scrape time (nothing on the hot path)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..core.model import TRANSITION_TARGETS
from ..hub import Figures, RoomFigures

MESSAGE_TYPES: Final = (
    "HEARTBEAT",
    "PRESENCE_UPDATE",
    "DISCONNECT",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "REFRESH_TOKEN",
    "JOIN",
    "ROOM_UPDATE",
    "LEAVE",
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
    "capacity",
    "slow_reader",
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
    def __init__(
        self,
        figures: Figures,
        diffs_sent: Callable[[], int],
        users_present: Callable[[], int],
        rooms: RoomFigures,
    ) -> None:
        self._figures = figures
        self._rooms = rooms
        self._diffs_sent = diffs_sent
        self._users_present = users_present

    def collect(self) -> Iterator[Metric]:
        model = self._figures
        yield GaugeMetricFamily(
            "presence_users_online",
            "Users anyone would see as present (offline grace included).",
            value=self._users_present(),
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
        rooms = self._rooms
        yield GaugeMetricFamily(
            "presence_rooms_current", "Rooms with at least one member.", value=rooms.room_count
        )
        yield GaugeMetricFamily(
            "presence_room_members_current",
            "Distinct (user, room) memberships.",
            value=rooms.membership_count,
        )
        yield CounterMetricFamily(
            "presence_room_diffs_sent", "ROOM_DIFF messages sent.", value=rooms.diffs_sent
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Tally:
    """A counter for the reactor thread: no lock, read at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class FastHistogram:
    """A histogram for the reactor thread: one bisect and two adds per observation."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class _WebSocketCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield CounterMetricFamily(
            "ws_connections", "WebSocket connections opened.", value=m.connections_total.value
        )
        yield GaugeMetricFamily(
            "ws_connections_current", "WebSocket connections open now.", value=m.connections()
        )
        yield GaugeMetricFamily(
            "presence_max_connections",
            "--max-connections: WebSocket connections this process accepts (0: no cap).",
            value=m.max_connections,
        )
        yield GaugeMetricFamily(
            "ws_clients_current", "Distinct userIds connected now.", value=m.clients()
        )
        messages = CounterMetricFamily(
            "ws_messages", "Messages received, by type.", labels=["type"]
        )
        for kind, tally in m.messages.items():
            messages.add_metric([kind], tally.value)
        yield messages
        errors = CounterMetricFamily("ws_errors", "Errors, by reason.", labels=["reason"])
        for reason, tally in m.errors.items():
            errors.add_metric([reason], tally.value)
        yield errors
        yield m.message_size.family("ws_message_size_bytes", "Size of received messages.")
        yield m.latency.family("ws_latency_seconds", "Server handling time per message.")

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The daemon's own registry. The ws_* figures are plain counters bumped on the
    reactor thread and turned into Prometheus families only when /metrics is read."""

    def __init__(self) -> None:
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self.connections_total = Tally()
        self.messages = {kind: Tally() for kind in MESSAGE_TYPES}
        self.errors = {reason: Tally() for reason in ERROR_REASONS}
        self.message_size = FastHistogram(SIZE_BUCKETS)
        self.latency = FastHistogram(LATENCY_BUCKETS)
        self.connections: Callable[[], int] = lambda: 0
        self.max_connections = 0  # --max-connections (0: no cap)
        self.clients: Callable[[], int] = lambda: 0
        registry.register(_WebSocketCollector(self))

    def watch(
        self,
        figures: Figures,
        diffs_sent: Callable[[], int],
        users_present: Callable[[], int],
        rooms: RoomFigures,
    ) -> None:
        """Read this node's figures at scrape time; ``users_present`` is the hub's
        (cluster-wide with --redis)."""
        self.clients = lambda: figures.connected_user_count
        self.connections = lambda: figures.connection_count
        self.registry.register(_PresenceCollector(figures, diffs_sent, users_present, rooms))
