"""Webhook delivery: every event POSTed, signed, to every endpoint; retried with backoff
until --webhook-retry-for; one event of a key at a time and in order; different keys
concurrently, up to --webhook-concurrency. And the memory queue of the single node.

Timers run on the injected clock and requests go through an injected ``Poster`` (treq in
the daemon, a fake in tests), so the whole schedule is testable on ``task.Clock``.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..core import webhooks
from ..core.webhooks import Event, WebhookConfig
from .webhook_metrics import WebhookMetrics

log = Logger()


class Poster(Protocol):
    def post(self, url: str, body: bytes, headers: dict[bytes, bytes]) -> defer.Deferred[int]:
        """POST; fires with the HTTP status once the answer was read (cancellable)."""


def where(url: str) -> str:
    """What a log line may say of an endpoint: scheme, host and port (a path or query may
    hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


class Phase(Enum):
    QUEUED = "queued"  # waiting for the previous event of its key, or for a slot
    DELIVERING = "delivering"
    DONE = "done"  # delivered everywhere, dropped, or cancelled


class _Job:
    __slots__ = ("attempts", "body", "deferred", "event", "first", "phase", "requests", "timers")

    def __init__(self, event: Event, deferred: defer.Deferred[None]) -> None:
        self.event = event
        self.body = webhooks.body(event)  # encoded once, the same bytes on every attempt
        self.deferred = deferred
        self.phase = Phase.QUEUED
        self.first: float | None = None  # when its first attempt began
        self.attempts: dict[str, int] = {}  # endpoints still to deliver to -> failed attempts
        self.requests: dict[str, defer.Deferred[Any]] = {}
        self.timers: dict[str, Any] = {}  # endpoint -> its retry or timeout DelayedCall


class WebhookDelivery:
    def __init__(
        self,
        config: WebhookConfig,
        clock: Any,
        poster: Poster,
        metrics: WebhookMetrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.clock = clock
        self.poster = poster
        self.metrics = metrics
        self.rand = rand
        self._lanes: dict[str, deque[_Job]] = {}  # key -> its events, the head first
        self._ready: deque[str] = deque()  # keys whose head waits for a slot, oldest first
        self._active = 0
        self.stopped = False

    @property
    def pending(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    @property
    def active(self) -> int:
        return self._active

    def submit(self, event: Event) -> defer.Deferred[None]:
        """Fires (with None) once the event was delivered to every endpoint or dropped
        after --webhook-retry-for; cancelling it drops the event (counted)."""
        job = _Job(event, defer.Deferred(lambda d: self._cancel(job)))
        lane = self._lanes.get(event.key)
        if lane is None:
            lane = self._lanes[event.key] = deque()
            self._ready.append(event.key)
        lane.append(job)
        self.metrics.pending.inc()
        self._pump()
        return job.deferred

    def stop(self) -> int:
        """Stop delivering (the daemon stops); returns how many events were still pending.
        Their Deferreds never fire."""
        self.stopped = True
        lost = 0
        for lane in self._lanes.values():
            for job in lane:
                lost += 1
                self._abandon(job)
        self._lanes.clear()
        self._ready.clear()
        return lost

    # -- the lanes -----------------------------------------------------------------------

    def _pump(self) -> None:
        while not self.stopped and self._ready and self._active < self.config.concurrency:
            job = self._lanes[self._ready.popleft()][0]
            self._active += 1
            job.phase = Phase.DELIVERING
            job.first = self.clock.seconds()
            for url in self.config.urls:
                job.attempts[url] = 0
            for url in self.config.urls:
                self._attempt(job, url)

    def _finish(self, job: _Job) -> None:
        """Delivered everywhere, or dropped: the next event of the key may go."""
        self._release(job)
        job.deferred.callback(None)

    def _release(self, job: _Job) -> None:
        """The job leaves its lane (the head's lane becomes ready again if not empty)."""
        key = job.event.key
        lane = self._lanes[key]
        if job.phase is Phase.DELIVERING:
            self._active -= 1
            lane.popleft()
            if lane:
                self._ready.append(key)
        else:  # still queued: the head (its key in _ready) or further back
            was_head = lane[0] is job
            lane.remove(job)
            if was_head and not lane:
                self._ready.remove(key)
        if not lane:
            del self._lanes[key]
        job.phase = Phase.DONE
        self.metrics.pending.dec()
        self._pump()

    def _cancel(self, job: _Job) -> None:
        """Dropped from outside (the memory queue is full): counted once per endpoint."""
        if job.phase is Phase.DONE:
            return
        self.metrics.count("dropped", len(job.attempts) or len(self.config.urls))
        self._abandon(job)
        self._release(job)

    def _abandon(self, job: _Job) -> None:
        for timer in job.timers.values():
            if timer.active():
                timer.cancel()
        job.timers.clear()
        requests, job.requests = job.requests, {}
        job.attempts.clear()
        for request in requests.values():
            request.cancel()

    # -- one endpoint ----------------------------------------------------------------------

    def _attempt(self, job: _Job, url: str) -> None:
        job.timers.pop(url, None)
        started = self.clock.seconds()
        stamp = int(started)
        headers = webhooks.headers(self.config.secret, job.event.id, stamp, job.body)
        try:
            request = self.poster.post(url, job.body, headers)
        except Exception:
            request = defer.fail()
        job.requests[url] = request
        job.timers[url] = self.clock.callLater(self.config.timeout, request.cancel)
        request.addBoth(self._answered, job, url, started)

    def _answered(self, result: int | Failure, job: _Job, url: str, started: float) -> None:
        if job.requests.pop(url, None) is None:
            return  # abandoned: the job was cancelled or the daemon stops
        timer = job.timers.pop(url, None)
        if timer is not None and timer.active():
            timer.cancel()
        now = self.clock.seconds()
        self.metrics.seconds.observe(max(0.0, now - started))
        if isinstance(result, int) and 200 <= result < 300:
            self.metrics.count("ok")
            self._done(job, url)
            return
        failed = job.attempts[url]
        assert job.first is not None
        why = f"HTTP {result}" if isinstance(result, int) else timeout_or(result)
        if now - job.first >= self.config.retry_for:
            self.metrics.count("dropped")
            log.warn(
                "webhook {type} {id} to {endpoint} dropped after {attempts} attempts: {why}",
                type=job.event.type,
                id=job.event.id,
                endpoint=where(url),
                attempts=failed + 1,
                why=why,
            )
            self._done(job, url)
            return
        self.metrics.count("retry")
        job.attempts[url] = failed + 1
        delay = webhooks.backoff(failed, self.rand())
        delay = min(delay, job.first + self.config.retry_for - now)
        if failed == 0:
            log.info(
                "webhook {type} {id} to {endpoint} failed ({why}); retrying",
                type=job.event.type,
                id=job.event.id,
                endpoint=where(url),
                why=why,
            )
        job.timers[url] = self.clock.callLater(max(0.0, delay), self._attempt, job, url)

    def _done(self, job: _Job, url: str) -> None:
        del job.attempts[url]
        if not job.attempts and job.phase is Phase.DELIVERING:
            self._finish(job)


def timeout_or(failure: Failure) -> str:
    if failure.check(defer.CancelledError):
        return "no answer in time"
    return failure.getErrorMessage() or type(failure.value).__name__


class MemoryQueue:
    """The EventSink without Redis: events of the chosen types go to the delivery, and at
    most --webhook-retain are kept; past it the oldest is dropped (and counted). A restart
    loses what it holds."""

    def __init__(self, delivery: WebhookDelivery) -> None:
        self.delivery = delivery
        self.events = delivery.config.events
        self.retain = delivery.config.retain
        self._held: OrderedDict[str, defer.Deferred[None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def emit(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.type not in self.events or self.delivery.stopped:
                continue
            while len(self._held) >= self.retain:
                _, oldest = self._held.popitem(last=False)
                oldest.cancel()
            d = self.delivery.submit(event)
            if d.called:
                continue
            self._held[event.id] = d
            d.addBoth(self._settled, event.id)

    def _settled(self, result: object, event_id: str) -> None:
        self._held.pop(event_id, None)
        if isinstance(result, Failure):
            result.trap(defer.CancelledError)
