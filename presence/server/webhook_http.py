"""The webhooks' HTTP side in the daemon: treq over one persistent connection pool, and the
service that starts and stops delivery with the daemon.

TLS to a receiver: treq's Agent uses Twisted's ``BrowserLikePolicyForHTTPS``, which checks
the certificate and the hostname against ``platformTrust()``, OpenSSL's default verify
paths. pyOpenSSL loads those from ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set (a private
CA, exactly as for ``rediss://``), else the system's bundle.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from .webhooks import MemoryQueue, WebhookDelivery

log = Logger()


def _discard(_: bytes) -> None:
    pass


class TreqPoster:
    """POST with treq; fires with the status once the whole answer was read (and dropped),
    so the connection goes back to the pool. Redirects are not followed: a 3xx is a
    failure like any other non-2xx."""

    def __init__(self, reactor: Any, connections: int) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections
        self.pool.retryAutomatically = False  # a retry is ours to decide (and count)
        self.client = HTTPClient(Agent(reactor, pool=self.pool))

    def post(self, url: str, body: bytes, headers: dict[bytes, bytes]) -> defer.Deferred[int]:
        d = self.client.post(
            url,
            data=body,
            headers=Headers({k: [v] for k, v in headers.items()}),
            allow_redirects=False,
            unbuffered=True,
        )

        def answered(response: Any) -> defer.Deferred[int]:
            read = treq.collect(response, _discard)
            return read.addCallback(lambda _: int(response.code))

        return d.addCallback(answered)

    def close(self) -> defer.Deferred[None]:
        closed: defer.Deferred[None] = self.pool.closeCachedConnections()
        return closed


class WebhookService(Service):
    """Delivery lives as long as the daemon: on stop it stops and says what it loses."""

    def __init__(
        self, delivery: WebhookDelivery, poster: TreqPoster, queue: MemoryQueue | None
    ) -> None:
        self.delivery = delivery
        self.poster = poster
        self.queue = queue

    def startService(self) -> None:
        super().startService()
        config = self.delivery.config
        log.info(
            "webhooks: {endpoints} endpoint(s), events {events}, timeout {timeout}s, "
            "retry for {retry}s, concurrency {concurrency}, retain {retain}{where}",
            endpoints=len(config.urls),
            events=",".join(sorted(config.events)),
            timeout=config.timeout,
            retry=config.retry_for,
            concurrency=config.concurrency,
            retain=config.retain,
            where=" (in memory)" if self.queue is not None else "",
        )

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        lost = self.delivery.stop()
        if lost:
            log.warn("webhooks: {lost} undelivered event(s) lost on stop", lost=lost)
        return self.poster.close()
