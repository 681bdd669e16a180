"""The webhook families, in the daemon's own registry: always registered (zeros without
--webhook-url), so a dashboard shows them from the start. No label names a URL or user."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RESULTS: Final = ("ok", "retry", "dropped")
SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "presence_webhook_deliveries",
            "Webhook requests by outcome, per endpoint: ok (2xx in time), retry (failed, "
            "tried again later), dropped (given up after --webhook-retry-for, or pushed out "
            "by --webhook-retain).",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.deliveries.labels(result)  # every series exists from the start
        self.pending = Gauge(
            "presence_webhook_pending",
            "Webhook events accepted and not yet delivered to every endpoint nor dropped.",
            registry=registry,
        )
        self.seconds = Histogram(
            "presence_webhook_delivery_seconds",
            "Duration of each webhook request, until its answer or its timeout.",
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )

    def count(self, result: str, amount: int = 1) -> None:
        if amount:
            self.deliveries.labels(result).inc(amount)
