"""The cluster's Prometheus families, in the daemon's own registry (only with --redis), and
the one place failed Redis operations are counted and logged."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.logger import Logger
from twisted.python.failure import Failure

from .link import RedisUnavailable

log = Logger()


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


class Errors:
    """Failed Redis operations: counted, and logged unless Redis was simply unreachable."""

    def __init__(self, metrics: ClusterMetrics | None) -> None:
        self.metrics = metrics

    def __call__(self, failure: Failure, what: str) -> None:
        if self.metrics:
            self.metrics.redis_errors.inc()
        if not failure.check(RedisUnavailable):
            log.warn("redis {what} failed: {error}", what=what, error=failure.getErrorMessage())
