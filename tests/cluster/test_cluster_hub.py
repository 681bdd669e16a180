"""ClusterHub's ordering rules with the Redis side replaced by Deferreds the test fires:
snapshot after subscribe, buffered diffs, nothing at or below the known version, no diff
before a watcher's PRESENCE_STATE, local presence while Redis is away."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import defer
from twisted.internet.task import Clock

from presence.cluster.hub import ClusterConfig, ClusterHub
from presence.cluster.store import RedisURL, channel
from presence.core import wire
from presence.core.model import PresenceModel, UserView


def result_of(d: Any) -> Any:
    """The connection a hub's open answered with (already fired here)."""
    return d.result


class Peer:
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
                out.append(
                    (
                        "STATE",
                        *(f"{u}={v['status']}/{v['connections']}" for u, v in m["users"].items()),
                    )
                )
            else:
                out.append(("DIFF", m["userId"], m["status"], str(m["connections"])))
        self.got = []
        return out


class FakeLink:
    problem: str | None = None
    max_backoff = 1.0

    def __init__(self) -> None:
        self.subscribes: list[tuple[list[str], defer.Deferred[Any]]] = []
        self.unsubscribed: list[str] = []

    def subscribe(self, channels: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.subscribes.append((list(channels), d))
        return d

    def unsubscribe(self, channels: Any) -> None:
        self.unsubscribed.extend(channels)

    def abort(self, reason: str) -> None:
        pass


class FakeStore:
    def __init__(self) -> None:
        self.snapshots: list[tuple[list[str], defer.Deferred[Any]]] = []
        self.writes: list[tuple[str, tuple[Any, ...]]] = []

    def snapshot(self, ids: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.snapshots.append((list(ids), d))
        return d

    def __getattr__(self, name: str) -> Any:
        def write(*args: Any) -> defer.Deferred[Any]:
            self.writes.append((name, args))
            return defer.succeed(False if name == "resync" else 1)

        return write


def view(status: str, connections: int = 1) -> UserView:
    return UserView(status, {}, None, connections)


def message(version: int, status: str, connections: int = 1) -> str:
    return f"{version}\n{status}\n{connections}\n\n{{}}"


def make_hub() -> tuple[ClusterHub, FakeLink, FakeStore]:
    config = ClusterConfig(RedisURL.parse("redis://127.0.0.1:1/0"), "n", 2.0)
    hub = ClusterHub(PresenceModel(offline_grace=0), config, Clock())
    link, store = FakeLink(), FakeStore()
    hub.link, hub.store = link, store  # type: ignore[assignment]
    hub._writable = hub._synced = True
    hub._first_sweep = False
    return hub, link, store


def test_snapshot_after_subscribe_then_only_newer_diffs_in_order() -> None:
    hub, link, store = make_hub()
    peer = Peer()
    conn = result_of(hub.open("c1", "w", peer, 0))
    hub.subscribe(conn, ["x"], 0)
    (channels, subscribed) = link.subscribes[0]
    assert channels == [channel("x")] and not store.snapshots  # subscribe first
    hub._message(channel("x"), message(3, "busy"))  # before the snapshot: buffered
    subscribed.callback(None)
    _, snap = store.snapshots[0]
    hub._message(channel("x"), message(4, "away"))
    assert peer.take() == []  # nothing before the PRESENCE_STATE
    snap.callback({"x": (3, view("busy"))})
    # the state is sent once the buffered diffs are in: v4 is inside it, never sent twice
    assert peer.take() == [("STATE", "x=away/1")]
    hub._message(channel("x"), message(4, "away"))  # again: dropped
    hub._message(channel("x"), message(2, "online"))  # older: dropped
    hub._message(channel("x"), message(6, "online", 2))  # a gap is fine: newer
    assert peer.take() == [("DIFF", "x", "online", "2")]


def test_a_second_watcher_gets_its_state_then_only_what_follows() -> None:
    hub, link, store = make_hub()
    first, second = Peer(), Peer()
    c1 = result_of(hub.open("c1", "w1", first, 0))
    c2 = result_of(hub.open("c2", "w2", second, 0))
    hub.subscribe(c1, ["x"], 0)
    link.subscribes[0][1].callback(None)
    store.snapshots[0][1].callback({"x": (5, view("online", 2))})
    hub.subscribe(c2, ["x"], 0)  # x is live on this node: no new SUBSCRIBE
    assert len(link.subscribes) == 1
    hub._message(channel("x"), message(6, "busy", 2))  # c2 waits for its state
    store.snapshots[1][1].callback({"x": (5, view("online", 3))})  # read before v6
    assert first.take() == [("STATE", "x=online/2"), ("DIFF", "x", "busy", "2")]
    assert second.take() == [("STATE", "x=busy/3")]  # v6 inside, not sent twice
    hub._message(channel("x"), message(7, "away", 2))
    assert first.take() == second.take() == [("DIFF", "x", "away", "2")]


def test_a_watcher_waits_for_a_watch_another_request_opened() -> None:
    hub, link, store = make_hub()
    first, second = Peer(), Peer()
    c1 = result_of(hub.open("c1", "w1", first, 0))
    c2 = result_of(hub.open("c2", "w2", second, 0))
    hub.subscribe(c1, ["x"], 0)
    hub.subscribe(c2, ["x", "y"], 0)  # x pending for c1's request; y new
    link.subscribes[1][1].callback(None)
    store.snapshots[0][1].callback({"x": (1, view("online")), "y": (0, view("offline", 0))})
    assert second.take() == []  # x is not settled yet: its snapshot may predate SUBSCRIBE x
    link.subscribes[0][1].callback(None)
    store.snapshots[1][1].callback({"x": (2, view("busy"))})
    assert first.take() == [("STATE", "x=busy/1")]
    assert second.take() == [("STATE", "x=busy/1", "y=offline/0")]


def test_last_local_watcher_gone_unsubscribes() -> None:
    hub, link, store = make_hub()
    peer = Peer()
    conn = result_of(hub.open("c1", "w", peer, 0))
    hub.subscribe(conn, ["x", "y"], 0)
    link.subscribes[0][1].callback(None)
    store.snapshots[0][1].callback({"x": (1, view("online")), "y": (1, view("online"))})
    hub.unsubscribe(conn, ["x"])
    assert link.unsubscribed == [channel("x")]
    hub.close(conn, 1, clean=True)
    assert link.unsubscribed == [channel("x"), channel("y")]
    assert not hub._watch


def test_redis_away_local_presence_then_one_diff_per_real_change_on_resync() -> None:
    hub, link, store = make_hub()
    watcher = Peer()
    w = result_of(hub.open("c1", "w", watcher, 0))
    hub.subscribe(w, ["x", "far"], 0)
    link.subscribes[0][1].callback(None)
    store.snapshots[0][1].callback({"x": (0, view("offline", 0)), "far": (4, view("busy"))})
    assert watcher.take() == [("STATE", "x=offline/0", "far=busy/1")]
    hub._redis_down("gone")
    assert hub.health_problem()
    x = result_of(hub.open("c2", "x", Peer(), 1))  # local presence keeps working
    hub.update(x, "away", None, 2)
    assert watcher.take() == [("DIFF", "x", "online", "1"), ("DIFF", "x", "away", "1")]
    writes = len(store.writes)
    hub._redis_up()  # re-registers, re-reads every watch
    name, args = store.writes[writes]
    assert name == "resync" and [c[0] for c in args[2]] == ["c1", "c2"]
    link.subscribes[-1][1].callback(None)
    store.snapshots[-1][1].callback({"x": (1, view("away")), "far": (5, view("online"))})
    assert watcher.take() == [("DIFF", "far", "online", "1")]  # x: already told
    assert hub.health_problem() is None


def test_connection_rank_and_count_for_a_cluster_wide_cap() -> None:
    hub, _, store = make_hub()
    opened: defer.Deferred[Any] = defer.Deferred()
    store.open = lambda *args: opened  # type: ignore[method-assign]
    conn = result_of(hub.open("c1", "u", Peer(), 0))
    ranks: list[int] = []
    hub.connection_rank("c1").addCallback(ranks.append)
    assert ranks == []  # waits for Redis to count it
    opened.callback(3)  # two more on other nodes
    assert ranks == [3]
    hub.connection_rank("c1").addCallback(ranks.append)
    assert ranks == [3, 3]
    counts: list[int] = []
    hub.user_connection_count("u").addCallback(counts.append)
    assert counts == [1]  # FakeStore's HLEN answer
    hub._redis_down("gone")
    hub.user_connection_count("u").addCallback(counts.append)
    assert counts == [1, 1]  # this node's own while Redis is away
    hub.close(conn, 1, clean=True)
    assert not hub._ranks
