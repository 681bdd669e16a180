"""WebhookDelivery and MemoryQueue on a task.Clock with a fake HTTP client: order per key,
the concurrency cap, retries with backoff, the timeout, dropping after --webhook-retry-for,
the memory queue's cap, and the metrics."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import standardwebhooks
from prometheus_client import CollectorRegistry
from twisted.internet import defer
from twisted.internet.task import Clock

from presence.core import webhooks
from presence.core.webhooks import Event, WebhookConfig
from presence.server.webhook_metrics import WebhookMetrics
from presence.server.webhooks import MemoryQueue, WebhookDelivery, where

SECRET = b"s" * 32
T0 = 1_700_000_000.0
A, B = "http://a.example/hook?token=x", "https://b.example:8443/"


class Request:
    def __init__(self, url: str, body: bytes, headers: dict[bytes, bytes], at: float) -> None:
        self.url, self.body, self.headers, self.at = url, body, headers, at
        self.cancelled = False
        self.code: int | None = None
        self.deferred: defer.Deferred[int] = defer.Deferred(self._cancel)

    def _cancel(self, _: object) -> None:
        self.cancelled = True

    @property
    def id(self) -> str:
        return self.headers[b"webhook-id"].decode()

    def answer(self, code: int) -> None:
        self.code = code
        self.deferred.callback(code)


class FakePoster:
    """Records every request; each waits until the test answers it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[Request] = []

    def post(self, url: str, body: bytes, headers: dict[bytes, bytes]) -> defer.Deferred[int]:
        request = Request(url, body, headers, self.clock.seconds())
        self.requests.append(request)
        return request.deferred

    def open(self) -> list[Request]:
        return [r for r in self.requests if not r.deferred.called]


class World:
    def __init__(self, urls: tuple[str, ...] = (A,), rand: float = 1.0, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.poster = FakePoster(self.clock)
        self.registry = CollectorRegistry()
        self.metrics = WebhookMetrics(self.registry)
        self.config = WebhookConfig(urls=urls, secret=SECRET, **config)
        self.delivery = WebhookDelivery(
            self.config, self.clock, self.poster, self.metrics, rand=lambda: rand
        )
        self.done: list[str] = []

    def submit(self, event: Event) -> defer.Deferred[None]:
        d = self.delivery.submit(event)
        d.addCallback(lambda _: self.done.append(event.id))
        return d

    def next(self) -> None:
        """Advance the clock to the earliest timer, and run it."""
        due = min(c.getTime() for c in self.clock.getDelayedCalls())
        self.clock.advance(due - self.clock.seconds())

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def counts(self) -> tuple[float, float, float]:
        return tuple(  # type: ignore[return-value]
            self.metric("presence_webhook_deliveries_total", result=r)
            for r in ("ok", "retry", "dropped")
        )


def ev(n: int, key: str = "u:alice", kind: str = "user.online") -> Event:
    return Event(f"msg_{n}", kind, key, T0 + n, {"userId": key[2:], "n": n})


def test_a_request_is_a_signed_standard_webhook() -> None:
    w = World()
    w.clock.advance(0.7)
    w.submit(ev(1))
    (request,) = w.poster.requests
    assert request.url == A
    headers = {k.decode(): v.decode() for k, v in request.headers.items()}
    assert headers["Content-Type"] == "application/json"
    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(int(T0))  # Unix seconds of the attempt
    assert request.body == webhooks.body(ev(1))
    assert json.loads(request.body) == {
        "type": "user.online",
        "timestamp": "2023-11-14T22:13:21.000Z",
        "data": {"userId": "alice", "n": 1},
    }
    expected = standardwebhooks.Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(int(T0), tz=UTC), request.body.decode()
    )
    assert headers["webhook-signature"] == expected


def test_one_event_of_a_key_at_a_time_in_order() -> None:
    w = World()
    for n in range(3):
        w.submit(ev(n))
    assert [r.id for r in w.poster.open()] == ["msg_0"]
    w.poster.requests[0].answer(204)
    assert [r.id for r in w.poster.open()] == ["msg_1"]
    w.poster.open()[0].answer(200)
    w.poster.open()[0].answer(299)
    assert w.done == ["msg_0", "msg_1", "msg_2"]
    assert w.counts() == (3, 0, 0) and w.metric("presence_webhook_pending") == 0


def test_a_failing_event_holds_back_its_key_but_not_the_others() -> None:
    w = World()
    w.submit(ev(1, "u:alice"))
    w.submit(ev(2, "u:alice", "user.offline"))
    w.submit(ev(3, "u:bob"))
    alice, bob = w.poster.open()
    alice.answer(500)
    bob.answer(200)
    assert w.done == ["msg_3"]
    assert w.poster.open() == []  # alice's offline waits for her online's retry
    w.clock.advance(1.0)  # backoff(0, 1.0) == 1 s
    (retry,) = w.poster.open()
    assert retry.id == "msg_1"  # the same webhook-id on a retry
    retry.answer(200)
    (offline,) = w.poster.open()
    assert offline.id == "msg_2"


def test_different_keys_concurrently_up_to_the_cap() -> None:
    w = World(concurrency=3)
    for n in range(5):
        w.submit(ev(n, f"u:user{n}"))
    assert [r.id for r in w.poster.open()] == ["msg_0", "msg_1", "msg_2"]
    assert w.delivery.active == 3 and w.metric("presence_webhook_pending") == 5
    w.poster.requests[1].answer(200)
    assert [r.id for r in w.poster.open()] == ["msg_0", "msg_2", "msg_3"]
    for request in w.poster.open():
        request.answer(200)
    w.poster.open()[0].answer(200)
    assert sorted(w.done) == [f"msg_{n}" for n in range(5)]
    assert w.delivery.active == 0 and w.delivery.pending == 0


def test_the_backoff_doubles_with_full_jitter() -> None:
    w = World(rand=0.5)
    w.submit(ev(1))
    delays = []
    for _ in range(11):
        w.poster.open()[0].answer(503)
        (retry,) = w.clock.getDelayedCalls()  # the timeout timer is gone with the answer
        delays.append(retry.getTime() - w.clock.seconds())
        w.clock.advance(delays[-1])
    # 0.5 x the ceiling: 1 s doubling, capped at 300 s.
    assert delays == [0.5 * c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300)]
    assert len(w.poster.requests) == 12 and {r.id for r in w.poster.requests} == {"msg_1"}


def test_a_request_without_an_answer_in_time_is_cancelled_and_retried() -> None:
    w = World(timeout=2.0)
    w.submit(ev(1))
    (first,) = w.poster.open()
    w.clock.advance(1.9)
    assert not first.cancelled
    w.clock.advance(0.1)
    assert first.cancelled and w.counts() == (0, 1, 0)
    w.clock.advance(1.0)
    (second,) = w.poster.open()
    assert second.id == "msg_1" and second.headers[b"webhook-timestamp"] == b"%d" % (T0 + 3)
    second.answer(201)
    assert w.done == ["msg_1"]
    assert w.metric("presence_webhook_delivery_seconds_count") == 2
    assert w.metric("presence_webhook_delivery_seconds_sum") == pytest.approx(2.0)


def test_dropped_after_retry_for_with_a_last_attempt_at_the_deadline() -> None:
    w = World(retry_for=10.0)
    w.submit(ev(1))
    w.submit(ev(2))
    while True:
        (request,) = w.poster.open()
        if request.id != "msg_1":
            break
        request.answer(500)
        if not w.poster.open():
            w.next()
    attempts = [r.at - T0 for r in w.poster.requests if r.id == "msg_1"]
    assert attempts == [0, 1, 3, 7, 10]  # 1, 2, 4, then capped by the deadline
    assert w.done == ["msg_1"]  # dropped fires the Deferred too; the key moves on
    ok, retry, dropped = w.counts()
    assert (ok, retry, dropped) == (0, 4, 1)
    assert w.metric("presence_webhook_pending") == 1


def test_exceptions_and_errors_are_failures_like_a_500() -> None:
    w = World(retry_for=0)
    w.submit(ev(1))
    w.poster.requests[0].deferred.errback(ConnectionRefusedError("refused"))
    assert w.done == ["msg_1"] and w.counts() == (0, 0, 1)


def test_every_endpoint_gets_every_event_and_each_retries_alone() -> None:
    w = World(urls=(A, B))
    w.submit(ev(1))
    w.submit(ev(2))
    a, b = w.poster.open()
    assert (a.url, b.url, a.id, b.id) == (A, B, "msg_1", "msg_1")
    a.answer(200)
    b.answer(502)
    assert w.done == [] and w.poster.open() == []
    w.clock.advance(1)
    (again,) = w.poster.open()
    assert again.url == B
    again.answer(200)
    assert w.done == ["msg_1"] and {r.url for r in w.poster.open()} == {A, B}
    assert w.counts() == (2, 1, 0)


def test_the_memory_queue_keeps_at_most_retain_and_drops_the_oldest() -> None:
    w = World(retain=3, events=frozenset({"user.online", "user.offline"}))
    queue = MemoryQueue(w.delivery)
    queue.emit([ev(n, f"u:user{n}") for n in range(3)])
    queue.emit([ev(9, "u:zed", "user.updated")])  # not a chosen type: never sent
    assert len(queue) == 3 and w.metric("presence_webhook_pending") == 3
    queue.emit([ev(3, "u:user3")])
    assert len(queue) == 3 and w.counts() == (0, 0, 1)  # msg_0 pushed out
    assert w.poster.requests[0].cancelled
    for request in w.poster.open():
        request.answer(200)
    assert {r.id for r in w.poster.requests if r.code == 200} == {
        "msg_1",
        "msg_2",
        "msg_3",
    }
    assert len(queue) == 0 and w.counts() == (3, 0, 1)
    assert w.metric("presence_webhook_pending") == 0


def test_a_queued_event_pushed_out_never_goes() -> None:
    w = World(retain=2, concurrency=1)
    queue = MemoryQueue(w.delivery)
    queue.emit([ev(0, "u:a"), ev(1, "u:b")])
    queue.emit([ev(2, "u:c")])  # msg_0 (in flight) is dropped; msg_1 goes next
    assert [r.id for r in w.poster.open()] == ["msg_1"]
    queue.emit([ev(3, "u:b")])  # msg_1 (in flight) dropped, msg_2 goes, msg_3 waits
    assert [r.id for r in w.poster.open()] == ["msg_2"]
    w.poster.open()[0].answer(200)
    (last,) = w.poster.open()
    assert last.id == "msg_3"
    last.answer(200)
    assert w.counts() == (2, 0, 2) and len(queue) == 0
    assert w.delivery.pending == 0 and w.delivery.active == 0


def test_stop_abandons_what_is_pending() -> None:
    w = World()
    queue = MemoryQueue(w.delivery)
    queue.emit([ev(1), ev(2)])
    assert w.delivery.stop() == 2
    assert w.poster.requests[0].cancelled and w.clock.getDelayedCalls() == []
    queue.emit([ev(3)])
    assert len(w.poster.requests) == 1 and w.done == []


def test_metrics_exist_before_any_event() -> None:
    w = World()
    assert w.registry.get_sample_value("presence_webhook_deliveries_total", {"result": "ok"}) == 0
    assert w.registry.get_sample_value("presence_webhook_pending") == 0
    for family in w.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= {"result", "le"}


def test_log_lines_name_only_the_endpoint_host() -> None:
    assert where(A) == "http://a.example"
    assert where("https://user:pw@h:1/p?q") == "https://h:1"
