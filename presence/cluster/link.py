"""The link to Redis: two connections (commands, and pub/sub), every reply on a deadline.

txredisapi supplies the protocol (RESP, AUTH/SELECT, EVAL/EVALSHA with its script cache,
SUBSCRIBE). Its connection pool is not used: while disconnected the pool queues commands
until Redis is back, and presence must instead fail fast, keep serving local clients and
re-register on reconnect. When to connect, and what to do once connected or lost, is the
node's state machine (``machine``); the link only connects when asked, says when an
established link is lost, and computes the backoff between attempts.

A Redis that accepts TCP but answers nothing (a hung primary) is noticed by the deadline
on each reply: a command unanswered for ``reply_timeout`` seconds drops both connections
at once, on the injected clock, before the command's own Deferred fails.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from .options import RedisURL

log = Logger()


class RedisUnavailable(Exception):
    """Redis is not connected, or did not answer in time (local clients are served)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ignore(*args: Any) -> None:
    pass


class _Factory:
    """What txredisapi's protocol expects of its factory (reconnecting is ours)."""

    isLazy = True

    def __init__(self) -> None:
        self.error: str | None = None

    def stopTrying(self) -> None:
        pass

    def connectionError(self, why: str) -> None:
        self.error = why


class _Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    on_message: Callable[[str, str], None] = staticmethod(_ignore)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.on_message(_text(channel), _text(message))


class RedisLink:
    """``connect()`` brings both connections up; ``on_lost`` is called when an established
    link goes (lost, or dropped by ``abort``). Commands fail with ``RedisUnavailable``
    while down and when unanswered in time."""

    def __init__(
        self,
        url: RedisURL,
        reactor: Any,
        reply_timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        clock: IReactorTime | None = None,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.reply_timeout = reply_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.on_lost: Callable[[], None] = _ignore
        self.on_message: Callable[[str, str], None] = _ignore
        self.problem: str | None = f"not yet connected to {url.describe()}"
        self.command: Any = None
        self.subscriber: Any = None
        self._backoff = min_backoff
        self._generation = 0
        self._protocols: list[Any] = []

    @property
    def up(self) -> bool:
        return self.command is not None

    # -- connecting ------------------------------------------------------------------------

    def connect(self) -> defer.Deferred[None]:
        """One attempt: both connections and a PING answered. Fails with the reason (also
        kept in ``problem``); an attempt overtaken by ``stop`` fails too."""
        self._generation += 1
        return defer.ensureDeferred(self._attempt(self._generation))

    async def _attempt(self, generation: int) -> None:
        command = self._protocol(txredisapi.RedisProtocol)
        subscriber = self._protocol(_Subscriber)
        subscriber.on_message = lambda name, payload: self.on_message(name, payload)
        self._protocols = [command, subscriber]
        try:
            for proto in (command, subscriber):
                ready = proto.whenConnected()
                await connectProtocol(self._endpoint(), proto)
                await ready.addTimeout(self.reply_timeout, self.clock)
            await self._reply(command.ping(), "PING", generation)
        except Exception as e:
            if generation != self._generation:
                raise RedisUnavailable("stopped") from None
            reason = command.factory.error or subscriber.factory.error or str(e) or repr(e)
            self.problem = f"cannot reach {self.url.describe()}: {reason}"
            self._drop()
            raise RedisUnavailable(self.problem) from None
        if generation != self._generation:
            for proto in (command, subscriber):
                proto.transport.abortConnection()
            raise RedisUnavailable("stopped")
        for proto in (command, subscriber):
            proto.whenDisconnected().addCallback(lambda _, g=generation: self._lost(g))
            # Commands are small writes while earlier ones await their replies: without
            # TCP_NODELAY, Nagle holds each until the previous one is acknowledged.
            no_delay = getattr(proto.transport, "setTcpNoDelay", None)
            if no_delay is not None:
                no_delay(True)
        self.command, self.subscriber = command, subscriber
        self._backoff = self.min_backoff
        self.problem = None
        log.info("connected to {url}", url=self.url.describe())

    def retry_delay(self) -> float:
        """Seconds before the next attempt: jittered, doubling up to ``max_backoff``."""
        delay = self.jitter(0.5, 1.0) * self._backoff
        self._backoff = min(self.max_backoff, self._backoff * 2)
        return delay

    def _endpoint(self) -> Any:
        endpoint = HostnameEndpoint(
            self.reactor, self.url.host, self.url.port, timeout=self.reply_timeout
        )
        if self.url.tls:
            return wrapClientTLS(optionsForClientTLS(self.url.host), endpoint)
        return endpoint

    def _protocol(self, kind: Any) -> Any:
        # No txredisapi reply timeout: ours (``_reply``) runs on the injected clock.
        proto = kind(
            "utf-8",
            replyTimeout=None,
            password=self.url.password,
            dbid=self.url.db or None,
            convertNumbers=False,
            username=self.url.username,
        )
        proto.factory = _Factory()
        return proto

    # -- losing it -------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Drop an established link (a command failed or went unanswered): ``on_lost``."""
        if self.up:
            self._fail(reason)

    def stop(self) -> None:
        """Drop everything, an attempt in progress included; no ``on_lost``."""
        self._generation += 1
        self._drop()

    def _lost(self, generation: int) -> None:
        if generation == self._generation and self.up:
            self._fail(f"lost the connection to {self.url.describe()}")

    def _fail(self, reason: str) -> None:
        self._generation += 1
        self._drop()
        self.problem = reason
        log.warn("redis down: {reason}", reason=reason)
        self.on_lost()

    def _drop(self) -> None:
        self.command = self.subscriber = None
        for proto in self._protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._protocols = []

    def _reply(self, d: defer.Deferred[Any], what: str, generation: int) -> defer.Deferred[Any]:
        """``d`` with a deadline: unanswered in ``reply_timeout`` s, the link is dropped
        first (so the node goes local knowing what was pending), then it fails."""
        out: defer.Deferred[Any] = defer.Deferred()

        def expire() -> None:
            if generation == self._generation:
                self.abort(f"no reply to {what} within {self.reply_timeout:g}s")
            if not out.called:
                out.errback(RedisUnavailable(f"no reply to {what}"))

        timer = self.clock.callLater(self.reply_timeout, expire)

        def settle(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if out.called:
                return
            if isinstance(result, Failure):
                if result.check(txredisapi.ConnectionError):
                    result = Failure(RedisUnavailable(result.getErrorMessage()))
                out.errback(result)
            else:
                out.callback(result)

        d.addBoth(settle)
        return out

    # -- commands --------------------------------------------------------------------------

    def _down(self) -> defer.Deferred[Any]:
        return defer.fail(RedisUnavailable(self.problem or "redis is down"))

    def eval(self, script: str, args: Sequence[Any]) -> defer.Deferred[Any]:
        """txredisapi sends EVAL until Redis has answered one for this script, EVALSHA
        after: commands keep the order they were sent in. (EVALSHA first with EVAL on
        NOSCRIPT would not: in a burst before the script is loaded, a retried EVAL runs
        after later commands that found the script by then.)"""
        command = self.command
        if command is None:
            return self._down()
        d = defer.maybeDeferred(command.eval, script, [], [str(a) for a in args])
        return self._reply(d, "a script", self._generation)

    def subscribe(self, channels: Iterable[str]) -> defer.Deferred[Any]:
        """One SUBSCRIBE per channel: txredisapi pairs one confirmation with one command."""
        subscriber = self.subscriber
        if subscriber is None:
            return self._down()
        waits = [defer.maybeDeferred(subscriber.subscribe, [name]) for name in channels]
        return self._reply(
            defer.gatherResults(waits, consumeErrors=True), "SUBSCRIBE", self._generation
        )

    def unsubscribe(self, channels: Iterable[str]) -> None:
        subscriber = self.subscriber
        if subscriber is None:
            return
        for name in channels:
            defer.maybeDeferred(subscriber.unsubscribe, [name]).addErrback(_ignore)

    def ping_subscriber(self) -> defer.Deferred[Any]:
        """The pub/sub connection only receives: a PING proves it is not half-open."""
        subscriber = self.subscriber
        if subscriber is None:
            return self._down()
        d = defer.maybeDeferred(subscriber.ping)
        return self._reply(d, "PING (pub/sub)", self._generation)
