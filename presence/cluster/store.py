"""Redis for the cluster: the connection supervisor and the atomic operations (Lua scripts).

txredisapi supplies the protocol (RESP, AUTH/SELECT, EVAL/EVALSHA with its script cache,
SUBSCRIBE). Its connection pool is not used: while disconnected the pool queues commands
until Redis is back, and presence must instead fail fast, keep serving local clients and
re-register on reconnect. ``RedisLink`` owns two connections (commands and pub/sub),
reconnects both with capped exponential backoff and tells the hub when Redis goes away and
comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger

from ..core.model import OFFLINE, UserView
from .options import RedisURL

log = Logger()

PREFIX = "presence:"
CHANNEL_PREFIX = PREFIX + "ch:"
SCRIPTS = (
    "open",
    "update",
    "close",
    "snapshot",
    "heartbeat",
    "sweep",
    "expire",
    "resync",
    "leave",
)


class RedisUnavailable(Exception):
    """Redis is not connected (the hub serves local clients meanwhile)."""


def channel(user_id: str) -> str:
    return CHANNEL_PREFIX + user_id


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_view(status: str, connections: str, last_seen: str, metadata: str) -> UserView:
    return UserView(
        status or OFFLINE,
        orjson.loads(metadata) if metadata else {},
        float(last_seen) if last_seen else None,
        int(connections),
    )


def parse_message(payload: str) -> tuple[int, UserView]:
    """A channel message: version, status, connections, lastSeen, metadata (one a line)."""
    version, status, connections, last_seen, metadata = payload.split("\n", 4)
    return int(version), parse_view(status, connections, last_seen, metadata)


def stamp(now: float) -> str:
    return f"{now:.3f}"


def load_script(name: str) -> str:
    package = resources.files("presence.cluster") / "lua"
    common = package.joinpath("_common.lua").read_text()
    return common + "\n" + package.joinpath(f"{name}.lua").read_text()


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
    on_message: Callable[[str, str], None] = staticmethod(lambda channel, message: None)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.on_message(_text(channel), _text(message))


class RedisLink:
    """Two connections to Redis, kept up. ``command`` and ``subscriber`` are None while down."""

    def __init__(
        self,
        url: RedisURL,
        reactor: Any,
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        on_message: Callable[[str, str], None],
        on_error: Callable[[str], None] = lambda reason: None,
        reply_timeout: float = 5.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.on_up, self.on_down, self.on_message = on_up, on_down, on_message
        self.on_error = on_error
        self.reply_timeout = reply_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.command: Any = None
        self.subscriber: Any = None
        self.problem: str | None = f"not yet connected to {url.describe()}"
        self.errors = 0
        self._backoff = min_backoff
        self._generation = 0
        self._retry: Any = None
        self._stopped = True
        self._protocols: list[Any] = []

    @property
    def up(self) -> bool:
        return self.command is not None

    def start(self) -> None:
        self._stopped = False
        self._connect()

    def stop(self) -> None:
        self._stopped = True
        self._generation += 1
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._drop()

    def _endpoint(self) -> Any:
        endpoint = HostnameEndpoint(
            self.reactor, self.url.host, self.url.port, timeout=self.reply_timeout
        )
        if self.url.tls:
            return wrapClientTLS(optionsForClientTLS(self.url.host), endpoint)
        return endpoint

    def _protocol(self, kind: Any) -> Any:
        proto = kind(
            "utf-8",
            replyTimeout=self.reply_timeout if kind is txredisapi.RedisProtocol else None,
            password=self.url.password,
            dbid=self.url.db or None,
            convertNumbers=False,
            username=self.url.username,
        )
        proto.factory = _Factory()
        return proto

    @defer.inlineCallbacks
    def _connect(self) -> Any:
        self._generation += 1
        generation = self._generation
        command = self._protocol(txredisapi.RedisProtocol)
        subscriber = self._protocol(_Subscriber)
        subscriber.on_message = self.on_message
        self._protocols = [command, subscriber]
        try:
            for proto in (command, subscriber):
                ready = proto.whenConnected()
                yield connectProtocol(self._endpoint(), proto)
                ready.addTimeout(self.reply_timeout, self.reactor)
                yield ready
            yield command.ping()
        except Exception as e:
            if generation == self._generation:
                reason = command.factory.error or subscriber.factory.error or str(e) or repr(e)
                self._failed(f"cannot reach {self.url.describe()}: {reason}")
            return
        if generation != self._generation:
            for proto in (command, subscriber):
                proto.transport.loseConnection()
            return
        for proto in (command, subscriber):
            proto.whenDisconnected().addCallback(lambda _, g=generation: self._lost(g))
        self.command, self.subscriber = command, subscriber
        self._backoff = self.min_backoff
        self.problem = None
        log.info("connected to {url}", url=self.url.describe())
        self.on_up()

    def _drop(self) -> None:
        self.command = self.subscriber = None
        for proto in self._protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._protocols = []

    def _lost(self, generation: int) -> None:
        if generation != self._generation:
            return
        self._failed(f"lost the connection to {self.url.describe()}")

    def _failed(self, reason: str) -> None:
        was_up = self.up
        self.errors += 1
        self.on_error(reason)
        self._generation += 1
        self._drop()
        self.problem = reason
        if was_up:
            log.warn("redis down: {reason}", reason=reason)
            self.on_down(reason)
        if self._stopped:
            return
        delay = random.uniform(0.5, 1.0) * self._backoff
        self._backoff = min(self.max_backoff, self._backoff * 2)
        self._retry = self.reactor.callLater(delay, self._connect)

    def abort(self, reason: str) -> None:
        """Drop the connections (e.g. a command failed mysteriously): reconnect, re-register."""
        if self.up:
            self._failed(reason)

    def call(self, name: str, args: Sequence[Any]) -> defer.Deferred[Any]:
        command = self.command
        if command is None:
            return defer.fail(RedisUnavailable(self.problem or "redis is down"))
        return defer.maybeDeferred(command.eval, _SCRIPT_TEXT[name], [], [str(a) for a in args])

    def hlen(self, key: str) -> defer.Deferred[Any]:
        command = self.command
        if command is None:
            return defer.fail(RedisUnavailable(self.problem or "redis is down"))
        return defer.maybeDeferred(command.hlen, key)

    def subscribe(self, channels: Iterable[str]) -> defer.Deferred[Any]:
        """One SUBSCRIBE per channel: txredisapi pairs one confirmation with one command."""
        subscriber = self.subscriber
        if subscriber is None:
            return defer.fail(RedisUnavailable(self.problem or "redis is down"))
        waits = [defer.maybeDeferred(subscriber.subscribe, [name]) for name in channels]
        return defer.gatherResults(waits, consumeErrors=True)

    def ping_subscriber(self) -> defer.Deferred[Any]:
        """The pub/sub connection only receives: a PING proves it is not half-open."""
        subscriber = self.subscriber
        if subscriber is None:
            return defer.fail(RedisUnavailable(self.problem or "redis is down"))
        d = defer.maybeDeferred(subscriber.ping)
        d.addTimeout(self.reply_timeout, self.reactor)
        return d

    def unsubscribe(self, channels: Iterable[str]) -> None:
        subscriber = self.subscriber
        if subscriber is None:
            return
        for name in channels:
            d = defer.maybeDeferred(subscriber.unsubscribe, [name])
            d.addErrback(lambda _: None)


_SCRIPT_TEXT = {name: load_script(name) for name in SCRIPTS}


@dataclass(frozen=True)
class Sweep:
    alive: int
    nodes_ended: int
    connections_ended: int
    users_present: int


class Store:
    """The atomic operations, one Lua script each; every method returns a Deferred."""

    def __init__(self, link: RedisLink, node: str, grace: float, last_seen_ttl: int) -> None:
        self.link = link
        self.node = node
        self.grace = grace
        self.ttl = last_seen_ttl

    def open(self, connection_id: str, user_id: str, now: float) -> defer.Deferred[Any]:
        return self.link.call("open", [self.node, connection_id, user_id, stamp(now), self.ttl])

    def update(
        self,
        connection_id: str,
        user_id: str,
        status: str,
        metadata: Any,
        now: float,
    ) -> defer.Deferred[Any]:
        has, encoded = ("0", "") if metadata is None else ("1", orjson.dumps(metadata).decode())
        args = [self.node, connection_id, user_id, status, has, encoded, stamp(now), self.ttl]
        return self.link.call("update", args).addCallback(int)

    def close(
        self, connection_id: str, user_id: str, now: float, clean: bool
    ) -> defer.Deferred[Any]:
        args = [self.node, connection_id, user_id, stamp(now), int(clean), self.grace, self.ttl]
        return self.link.call("close", args)

    def snapshot(self, user_ids: Sequence[str]) -> defer.Deferred[dict[str, tuple[int, UserView]]]:
        ids = list(user_ids)

        def parse(reply: list[Any]) -> dict[str, tuple[int, UserView]]:
            out = {}
            values = [_text(v) for v in reply]
            for i, user_id in enumerate(ids):
                v, status, connections, last_seen, metadata = values[i * 5 : i * 5 + 5]
                out[user_id] = (int(v), parse_view(status, connections, last_seen, metadata))
            return out

        if not ids:
            return defer.succeed({})
        return self.link.call("snapshot", ids).addCallback(parse)

    def heartbeat(self, now: float, node_timeout: float) -> defer.Deferred[Any]:
        args = [self.node, stamp(now), int(node_timeout * 1000)]
        return self.link.call("heartbeat", args).addCallback(int)

    def sweep(self, now: float, same_name: str = "") -> defer.Deferred[Sweep]:
        args = [self.node, stamp(now), self.ttl, self.grace, same_name]
        return self.link.call("sweep", args).addCallback(lambda r: Sweep(*(int(x) for x in r)))

    def expire(self, now: float, limit: int = 500) -> defer.Deferred[Any]:
        return self.link.call("expire", [stamp(now), self.ttl, limit]).addCallback(int)

    def resync(
        self,
        now: float,
        node_timeout: float,
        live: Sequence[tuple[str, str, str, str]],
        ended: Sequence[tuple[str, str, float, bool]],
    ) -> defer.Deferred[bool]:
        """Returns whether Redis had no presence data (first start, or it lost its data)."""
        args: list[Any] = [
            self.node,
            stamp(now),
            self.ttl,
            self.grace,
            int(node_timeout * 1000),
            len(live),
        ]
        for item in live:
            args.extend(item)
        for connection_id, user_id, at, clean in ended:
            args.extend((connection_id, user_id, stamp(at), int(clean)))
        return self.link.call("resync", args).addCallback(lambda r: int(r[1]) == 1)

    def leave(self, now: float) -> defer.Deferred[Any]:
        return self.link.call("leave", [self.node, stamp(now), self.ttl, self.grace])

    def connection_count(self, user_id: str) -> defer.Deferred[int]:
        return self.link.hlen(PREFIX + "uc:" + user_id).addCallback(int)
