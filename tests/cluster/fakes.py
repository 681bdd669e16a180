"""In-memory stand-ins for the cluster's Redis link and store, driven by the tests: every
call is recorded, and answers either at once (the defaults) or when the test says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.task import Clock

from presence.cluster.hub import ClusterHub
from presence.cluster.link import RedisUnavailable
from presence.cluster.options import ClusterConfig, RedisURL
from presence.cluster.store import NO_WEBHOOKS, Sweep, channel
from presence.core import wire
from presence.core.model import PresenceModel, UserView


class Peer:
    """A client connection as the hub sees it: what it was sent, in order."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        self.got.append(orjson.loads(data))

    def send_shared(self, message: wire.Shared) -> None:
        self.got.append(orjson.loads(message.payload))

    def close(self, code: int, reason: str) -> None:
        pass

    def take(self) -> list[tuple[str, ...]]:
        out = []
        for m in self.got:
            if m["type"] == "PRESENCE_STATE":
                users = (f"{u}={v['status']}/{v['connections']}" for u, v in m["users"].items())
                out.append(("STATE", *users))
            else:
                out.append(("DIFF", m["userId"], m["status"], str(m["connections"])))
        self.got = []
        return out


def view(status: str, connections: int = 1, last_seen: float | None = None) -> UserView:
    return UserView(status, {}, last_seen, connections)


def message(version: int, status: str, connections: int = 1) -> str:
    return f"{version}\n{status}\n{connections}\n\n{{}}"


class FakeLink:
    max_backoff = 1.0

    def __init__(self) -> None:
        self.problem: str | None = "not yet connected"
        self.on_lost: Any = lambda: None
        self.on_message: Any = lambda name, payload: None
        self.up = False
        self.attempts: list[defer.Deferred[None]] = []
        self.hold_subscribes = False
        self.subscribes: list[tuple[list[str], defer.Deferred[Any]]] = []
        self.unsubscribed: list[str] = []
        self.evals: list[list[Any]] = []
        self.aborted: list[str] = []
        self.stops = 0

    # what the node calls
    def connect(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self.attempts.append(d)
        return d

    def retry_delay(self) -> float:
        return 0.5

    def abort(self, reason: str) -> None:
        self.aborted.append(reason)
        if self.up:
            self.lose(reason)

    def stop(self) -> None:
        self.up = False
        self.stops += 1

    def subscribe(self, channels: Any) -> defer.Deferred[Any]:
        if not self.up:
            return defer.fail(RedisUnavailable("down"))
        d: defer.Deferred[Any] = defer.Deferred()
        self.subscribes.append((list(channels), d))
        if not self.hold_subscribes:
            d.callback(None)
        return d

    def eval(self, script: str, args: Any) -> defer.Deferred[Any]:
        """The room scripts: recorded, never answered (the user scripts go to FakeStore)."""
        self.evals.append(list(args))
        return defer.Deferred()

    def unsubscribe(self, channels: Any) -> None:
        self.unsubscribed.extend(channels)

    def ping_subscriber(self) -> defer.Deferred[Any]:
        return defer.succeed("pong") if self.up else defer.fail(RedisUnavailable("down"))

    # what the test does
    def accept(self) -> None:
        """The pending connection attempt succeeds."""
        self.up, self.problem = True, None
        self.attempts[-1].callback(None)

    def refuse(self, reason: str = "refused") -> None:
        self.problem = reason
        self.attempts[-1].errback(RedisUnavailable(reason))

    def lose(self, reason: str = "lost") -> None:
        self.up, self.problem = False, reason
        self.on_lost()

    def publish(self, user_id: str, version: int, status: str, connections: int = 1) -> None:
        self.on_message(channel(user_id), message(version, status, connections))


@dataclass
class Call:
    name: str
    args: tuple[Any, ...]
    deferred: defer.Deferred[Any] = field(default_factory=defer.Deferred)

    def answer(self, result: Any) -> None:
        self.deferred.callback(result)

    def fail(self, error: Exception) -> None:
        self.deferred.errback(error)


class FakeStore:
    """Answers at once with ``answers[name]`` unless the name is in ``held``; held calls
    wait for the test (``pending(name)``). Snapshots answer from ``views``."""

    node = "n#test"
    prelude = NO_WEBHOOKS

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.held: set[str] = set()
        self.views: dict[str, tuple[int, UserView]] = {}
        self.answers: dict[str, Any] = {
            "open": 1,
            "update": 1,
            "close": 1,
            "heartbeat": False,
            "sweep": Sweep(1, 0, 0, 0),
            "expire": 0,
            "resync": False,
            "leave": 0,
            "online": ({}, None),
        }

    def _call(self, name: str, *args: Any) -> defer.Deferred[Any]:
        call = Call(name, args)
        self.calls.append(call)
        if name not in self.held:
            if name == "snapshot":
                ids = args[0]
                call.answer({u: self.views.get(u, (0, view("offline", 0))) for u in ids})
            else:
                call.answer(self.answers[name])
        return call.deferred

    def named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def pending(self, name: str) -> Call:
        """The oldest unanswered call of this name."""
        return next(c for c in self.named(name) if not c.deferred.called)

    def open(self, cid: str, uid: str, now: float, cap: int = 0) -> defer.Deferred[Any]:
        return self._call("open", cid, uid, now, cap)

    def update(self, cid: str, uid: str, status: str, md: Any, now: float) -> defer.Deferred[Any]:
        return self._call("update", cid, uid, status, md, now)

    def close(self, cid: str, uid: str, now: float, clean: bool) -> defer.Deferred[Any]:
        return self._call("close", cid, uid, now, clean)

    def snapshot(self, ids: Any) -> defer.Deferred[Any]:
        return self._call("snapshot", list(ids))

    def heartbeat(self, now: float, node_timeout: float) -> defer.Deferred[Any]:
        return self._call("heartbeat", now, node_timeout)

    def sweep(self, now: float, same_name: str = "") -> defer.Deferred[Any]:
        return self._call("sweep", now, same_name)

    def expire(self, now: float) -> defer.Deferred[Any]:
        return self._call("expire", now)

    def resync(self, now: float, timeout: float, live: Any, ended: Any) -> defer.Deferred[Any]:
        return self._call("resync", now, timeout, list(live), list(ended))

    def leave(self, now: float) -> defer.Deferred[Any]:
        return self._call("leave", now)

    def online(self, limit: int, after: str | None, prefix: str = "") -> defer.Deferred[Any]:
        return self._call("online", limit, after, prefix)


CONFIG = ClusterConfig(RedisURL.parse("redis://127.0.0.1:1/0"), "n", 2.0)


@dataclass
class Node:
    hub: ClusterHub
    model: PresenceModel
    link: FakeLink
    store: FakeStore
    clock: Clock


def make_node(cap: int = 0, grace: float = 0, start: bool = True) -> Node:
    """A hub on fakes; started, it is connected and registered (serving)."""
    model = PresenceModel(offline_grace=grace)
    link, store, clock = FakeLink(), FakeStore(), Clock()
    hub = ClusterHub(model, CONFIG, clock, link, store, max_connections_per_user=cap)
    node = Node(hub, model, link, store, clock)
    if start:
        hub.startService()
        link.accept()
        assert hub.phase == "serving", hub.phase
    return node


def opened(d: defer.Deferred[Any]) -> Any:
    """What an already fired Deferred holds (a test fails if it has not fired)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "not fired"
    return results[0]
