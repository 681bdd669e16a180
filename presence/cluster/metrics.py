"""The cluster's Prometheus families, in the daemon's own registry (only with --redis)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


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
