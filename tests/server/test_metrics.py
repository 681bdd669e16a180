"""The daemon's registry: the ws_* families are plain counters rendered at scrape time."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from presence.core.model import PresenceModel
from presence.core.rooms import Rooms
from presence.server.metrics import FastHistogram, Metrics

SEVEN = {
    "ws_connections": "counter",
    "ws_connections_current": "gauge",
    "ws_messages": "counter",
    "ws_errors": "counter",
    "ws_clients_current": "gauge",
    "ws_message_size_bytes": "histogram",
    "ws_latency_seconds": "histogram",
}


def families(metrics: Metrics) -> dict[str, object]:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_seven_families_and_their_types() -> None:
    metrics = Metrics()
    found = families(metrics)
    for name, kind in SEVEN.items():
        assert found[name].type == kind, name  # type: ignore[attr-defined]
    assert "process_cpu_seconds" in found
    # Our registry, not the global one.
    assert b"ws_connections_total" not in generate_latest(REGISTRY)


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = FastHistogram((1.0, 2.0))
    for value in (0.5, 1.0, 1.5, 2.0, 9.0):
        histogram.observe(value)
    family = histogram.family("h", "doc")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("h_bucket", "1.0")] == 2  # le is "less than or equal"
    assert samples[("h_bucket", "2.0")] == 4
    assert samples[("h_bucket", "+Inf")] == 5
    assert samples[("h_count", None)] == 5 and samples[("h_sum", None)] == 14.0


def test_presence_families_read_the_model() -> None:
    metrics = Metrics()
    model = PresenceModel(offline_grace=0)
    metrics.watch(model, lambda: 7, lambda: model.online_user_count, Rooms(lambda u: "online"))

    class Peer:
        def send(self, data: bytes) -> None: ...
        def send_shared(self, message: object) -> None: ...
        def close(self, code: int, reason: str) -> None: ...

    conn, _ = model.open("c", "alice", Peer(), now=0)
    model.subscribe(conn, ["bob", "carol"])
    model.update(conn, "away", None, now=1)
    text = generate_latest(metrics.registry).decode()
    assert "presence_users_online 1.0" in text
    assert "presence_subscriptions_current 2.0" in text
    assert 'presence_transitions_total{to="away"} 1.0' in text
    assert "presence_diffs_sent_total 7.0" in text
    assert "ws_clients_current 1.0" in text and "ws_connections_current 1.0" in text
