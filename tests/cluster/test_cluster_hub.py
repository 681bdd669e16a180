"""ClusterHub on in-memory fakes of its link and store, on a task.Clock: the order watchers
see (snapshot after subscribe, buffered diffs, nothing at or below the known version, no
diff before a watcher's PRESENCE_STATE), CONNECT as the commit point, and local presence
while Redis is away, including what Redis never answered when it went."""

from __future__ import annotations

from twisted.python.failure import Failure

from presence.cluster.store import REFUSED, Sweep, channel
from presence.core import policy
from presence.core.model import Connection, UserView
from tests.cluster.fakes import Node, Peer, make_node, opened, view


def connect(node: Node, cid: str, uid: str, peer: Peer | None = None, now: float = 0) -> Connection:
    conn = opened(node.hub.open(cid, uid, peer or Peer(), now))
    assert isinstance(conn, Connection), conn
    return conn


# -- ordering --------------------------------------------------------------------------


def test_snapshot_after_subscribe_then_only_newer_diffs_in_order() -> None:
    node = make_node()
    node.link.hold_subscribes = True
    node.store.held.add("snapshot")
    peer = Peer()
    conn = connect(node, "c1", "w", peer)
    snapshots = len(node.store.named("snapshot"))
    node.hub.subscribe(conn, ["x"], 0)
    (channels, subscribed) = node.link.subscribes[-1]
    assert channels == [channel("x")]
    assert len(node.store.named("snapshot")) == snapshots  # subscribe first
    node.link.publish("x", 3, "busy")  # before the snapshot: buffered
    subscribed.callback(None)
    snapshot = node.store.pending("snapshot")
    node.link.publish("x", 4, "away")
    assert peer.take() == []  # nothing before the PRESENCE_STATE
    snapshot.answer({"x": (3, view("busy"))})
    # the state is sent once the buffered diffs are in: v4 is inside it, never sent twice
    assert peer.take() == [("STATE", "x=away/1")]
    node.link.publish("x", 4, "away")  # again: dropped
    node.link.publish("x", 2, "online")  # older: dropped
    node.link.publish("x", 6, "online", 2)  # a gap is fine: newer
    assert peer.take() == [("DIFF", "x", "online", "2")]


def test_a_second_watcher_gets_its_state_then_only_what_follows() -> None:
    node = make_node()
    node.store.held.add("snapshot")
    first, second = Peer(), Peer()
    c1 = connect(node, "c1", "w1", first)
    c2 = connect(node, "c2", "w2", second)
    node.hub.subscribe(c1, ["x"], 0)
    node.store.pending("snapshot").answer({"x": (5, view("online", 2))})
    subscribes = len(node.link.subscribes)
    node.hub.subscribe(c2, ["x"], 0)  # x is live on this node: no new SUBSCRIBE
    assert len(node.link.subscribes) == subscribes
    node.link.publish("x", 6, "busy", 2)  # c2 waits for its state
    node.store.pending("snapshot").answer({"x": (5, view("online", 3))})  # read before v6
    assert first.take() == [("STATE", "x=online/2"), ("DIFF", "x", "busy", "2")]
    assert second.take() == [("STATE", "x=busy/3")]  # v6 inside, not sent twice
    node.link.publish("x", 7, "away", 2)
    assert first.take() == second.take() == [("DIFF", "x", "away", "2")]


def test_a_watcher_waits_for_a_watch_another_request_opened() -> None:
    node = make_node()
    node.link.hold_subscribes = True
    node.store.held.add("snapshot")
    first, second = Peer(), Peer()
    c1 = connect(node, "c1", "w1", first)
    c2 = connect(node, "c2", "w2", second)
    node.hub.subscribe(c1, ["x"], 0)
    node.hub.subscribe(c2, ["x", "y"], 0)  # x pending for c1's request; y new
    node.link.subscribes[-1][1].callback(None)
    node.store.pending("snapshot").answer({"x": (1, view("online")), "y": (0, view("offline", 0))})
    assert second.take() == []  # x is not settled yet: its snapshot may predate SUBSCRIBE x
    node.link.subscribes[-2][1].callback(None)
    node.store.pending("snapshot").answer({"x": (2, view("busy"))})
    assert first.take() == [("STATE", "x=busy/1")]
    assert second.take() == [("STATE", "x=busy/1", "y=offline/0")]


def test_last_local_watcher_gone_unsubscribes() -> None:
    node = make_node()
    conn = connect(node, "c1", "w")
    node.hub.subscribe(conn, ["x", "y"], 0)
    node.hub.unsubscribe(conn, ["x"])
    assert node.link.unsubscribed == [channel("x")]
    node.hub.close(conn, 1, clean=True)
    assert node.link.unsubscribed == [channel("x"), channel("y")]
    node.link.publish("y", 9, "busy")  # no longer watched: nobody to tell


# -- CONNECT as the commit point -------------------------------------------------------


def test_connect_waits_until_redis_counted_the_connection() -> None:
    node = make_node(cap=3)
    node.store.held.add("open")
    d = node.hub.open("c1", "u", Peer(), 0)
    assert not d.called and node.model.connection("c1") is None
    call = node.store.pending("open")
    assert call.args == ("c1", "u", 0, 3)  # the cap is checked in Redis, atomically
    call.answer(3)  # two more on other nodes: at the cap, not over it
    conn = opened(d)
    assert node.model.connection("c1") is conn


def test_a_connection_over_the_cluster_cap_never_opens() -> None:
    node = make_node(cap=2)
    node.store.answers["open"] = REFUSED
    result = opened(node.hub.open("c1", "u", Peer(), 0))
    assert isinstance(result, Failure) and result.check(policy.OverCapacity)
    assert node.model.connection("c1") is None and node.model.connections_of("u") == 0
    assert not node.store.named("close")  # nothing was registered: nothing to take back


def test_redis_away_before_it_counted_a_connection_counts_it_locally() -> None:
    node = make_node(cap=2)
    watcher = Peer()
    w = connect(node, "w1", "w", watcher)
    node.hub.subscribe(w, ["u"], 0)
    connect(node, "c1", "u")
    watcher.take()
    node.store.held.add("open")
    second = node.hub.open("c2", "u", Peer(), 1)
    third = node.hub.open("c3", "u", Peer(), 1)
    node.link.lose()
    assert isinstance(opened(second), Connection)  # this node's count: 2, the cap
    refused = opened(third)
    assert isinstance(refused, Failure) and refused.check(policy.OverCapacity)
    assert node.model.connections_of("u") == 2
    node.store.pending("open").fail(ConnectionError("lost"))  # late: changes nothing
    assert node.model.connections_of("u") == 2
    assert watcher.take() == []  # u was online already: no diff for a count


def test_a_re_registration_counts_waiting_openings_and_takes_back_refused_ones() -> None:
    node = make_node(cap=1)
    node.store.held.add("open")
    accepted = node.hub.open("c1", "u", Peer(), 0)
    refused = node.hub.open("c2", "v", Peer(), 0)
    node.store.answers["heartbeat"] = True  # another node took this one for dead
    node.clock.advance(node.hub.beat_interval)
    live = node.store.named("resync")[-1].args[2]
    assert ("c1", "u", "online", "") in live and ("c2", "v", "online", "") in live
    node.store.pending("open").answer(1)
    node.store.pending("open").answer(REFUSED)  # refused before the resync registered it
    assert isinstance(opened(accepted), Connection)
    assert isinstance(opened(refused), Failure)
    assert [c.args[:2] for c in node.store.named("close")] == [("c2", "v")]


# -- Redis away ------------------------------------------------------------------------


def test_redis_away_local_presence_then_one_diff_per_real_change_on_resync() -> None:
    node = make_node()
    watcher = Peer()
    w = connect(node, "c1", "w", watcher)
    node.store.views = {"x": (0, view("offline", 0)), "far": (4, view("busy"))}
    node.hub.subscribe(w, ["x", "far"], 0)
    assert watcher.take() == [("STATE", "x=offline/0", "far=busy/1")]
    node.link.lose("gone")
    assert node.hub.health_problem() == "redis unavailable: gone"
    writes = len(node.store.calls)
    x = connect(node, "c2", "x", now=1)  # local presence keeps working
    node.hub.update(x, "away", None, 2)
    assert watcher.take() == [("DIFF", "x", "online", "1"), ("DIFF", "x", "away", "1")]
    assert len(node.store.calls) == writes  # nothing was written while away
    node.store.views = {"x": (1, view("away")), "far": (5, view("online"))}
    node.clock.advance(0.5)  # the backoff
    node.link.accept()  # re-registers, re-reads every watch
    live = node.store.named("resync")[-1].args[2]
    assert [c[0] for c in live] == ["c1", "c2"]
    assert watcher.take() == [("DIFF", "far", "online", "1")]  # x: already told
    assert node.hub.health_problem() is None


def test_a_local_change_redis_never_answered_reaches_local_watchers_when_it_goes() -> None:
    node = make_node()
    watcher = Peer()
    w = connect(node, "w1", "w", watcher)
    x = connect(node, "c1", "x")
    y = connect(node, "c2", "y")
    node.store.views = {"x": (1, view("online")), "y": (1, view("online"))}
    node.hub.subscribe(w, ["x", "y"], 0)
    watcher.take()
    node.hub.update(y, "busy", None, 1)  # answered, and published by Redis
    node.link.publish("y", 2, "busy")
    assert watcher.take() == [("DIFF", "y", "busy", "1")]
    node.store.held.update({"update", "close"})
    node.hub.update(x, "away", {"m": 1}, 2)  # Redis hangs: never answered
    node.hub.close(y, 3, clean=True)
    assert watcher.take() == []  # on a healthy link the diffs come from Redis
    node.link.abort("no reply to a script within 0.5s")
    assert watcher.take() == [("DIFF", "x", "away", "1"), ("DIFF", "y", "offline", "0")]
    node.store.pending("update").fail(ConnectionError("lost"))  # late: drops nothing
    assert node.hub.phase == "away" and watcher.take() == []
    node.clock.advance(0.5)
    node.store.views = {
        "x": (3, UserView("away", {"m": 1}, None, 1)),
        "y": (3, view("offline", 0, 3.0)),
    }
    node.link.accept()
    ended = node.store.named("resync")[-1].args[3]
    assert ended == [("c2", "y", 3, True)]  # the close Redis never answered, as it was
    assert watcher.take() == []  # told already


def test_closes_while_away_are_ended_on_reconnect_with_their_time() -> None:
    node = make_node(grace=10)
    conn = connect(node, "c1", "u")
    node.link.lose()
    node.hub.close(conn, 5, clean=False)
    node.clock.advance(0.5)
    node.link.accept()
    assert node.store.named("resync")[-1].args[3] == [("c1", "u", 5, False)]
    node.link.lose()
    node.clock.advance(0.5)
    node.link.accept()
    assert node.store.named("resync")[-1].args[3] == []  # ended once


def test_lookup_is_unavailable_while_away() -> None:
    node = make_node()
    node.store.views = {"u": (2, view("busy"))}
    assert opened(node.hub.lookup(["u"])) == {"u": view("busy")}
    node.link.lose("gone")
    failed = opened(node.hub.lookup(["u"]))
    assert isinstance(failed, Failure) and "gone" in failed.getErrorMessage()


def test_the_online_listing_is_read_from_redis_and_unavailable_while_away() -> None:
    node = make_node()
    node.store.answers["online"] = ({"a": view("busy"), "b": view("online", 0)}, "b")
    page = opened(node.hub.online_page(2, "0", "x"))
    assert (page.users, page.next) == ({"a": view("busy"), "b": view("online", 0)}, "b")
    assert node.store.named("online")[-1].args == (2, "0", "x")
    node.link.lose("gone")
    failed = opened(node.hub.online_page(2, None))
    assert isinstance(failed, Failure) and "gone" in failed.getErrorMessage()


def test_an_update_redis_does_not_know_re_registers() -> None:
    node = make_node()
    conn = connect(node, "c1", "u")
    registrations = len(node.store.named("resync"))
    node.store.answers["update"] = -1
    node.hub.update(conn, "busy", None, 1)
    assert len(node.store.named("resync")) == registrations + 1
    assert node.hub.phase == "serving"


def test_a_failed_write_drops_the_link() -> None:
    node = make_node()
    conn = connect(node, "c1", "u")
    node.store.held.add("update")
    node.hub.update(conn, "busy", None, 1)
    node.store.pending("update").fail(RuntimeError("ERR script"))
    assert node.link.aborted and node.hub.phase == "away"


def test_tick_expires_in_redis_one_at_a_time() -> None:
    node = make_node()
    node.store.held.add("expire")
    node.hub.tick(1)
    node.hub.tick(2)
    assert len(node.store.named("expire")) == 1
    node.store.pending("expire").answer(0)
    node.hub.tick(3)
    assert len(node.store.named("expire")) == 2


def test_users_present_is_the_clusters_once_swept() -> None:
    node = make_node(start=False)
    connect(node, "c1", "u")  # before start: counted here
    assert node.hub.users_present() == 1
    node.hub.startService()
    node.link.accept()
    assert node.hub.users_present() == 0  # the first sweep's figure
    node.store.answers["sweep"] = Sweep(2, 0, 0, 7)
    node.clock.advance(node.hub.beat_interval)
    assert node.hub.users_present() == 7
    node.link.lose()
    assert node.hub.users_present() == 7  # the last known count while away


def test_stop_leaves_the_cluster_then_drops_the_link() -> None:
    node = make_node()
    node.store.held.add("leave")
    stopped = node.hub.stopService()
    assert not stopped.called and node.hub.phase == "stopping"
    node.store.pending("leave").answer(3)
    assert stopped.called and node.link.stops == 1 and node.hub.phase == "stopped"


def test_stop_while_away_does_not_try_to_leave() -> None:
    node = make_node()
    node.link.lose()
    stopped = node.hub.stopService()
    assert stopped.called and not node.store.named("leave") and node.link.stops == 1
    node.clock.advance(10)  # no retry, no beat after the stop
    assert len(node.link.attempts) == 1
