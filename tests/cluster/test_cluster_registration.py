"""Registering and liveness, on fakes and a task.Clock: each step of the link's life as
the node lives it (the machine itself is tested on its own)."""

from __future__ import annotations

from presence.cluster.options import ClusterConfig
from tests.cluster.fakes import CONFIG, Peer, make_node, opened, view


def test_the_first_registration_ends_earlier_runs_under_this_name_once() -> None:
    node = make_node(start=False)
    node.hub.startService()
    assert node.hub.phase == "connecting" and node.hub.health_problem()
    node.link.accept()
    assert [c.args[1] for c in node.store.named("sweep")] == ["n#"]
    assert node.hub.phase == "serving"
    node.link.lose()
    node.clock.advance(0.5)
    node.link.accept()
    assert [c.args[1] for c in node.store.named("sweep")] == ["n#"]  # once per start


def test_redis_came_back_empty_wait_for_the_other_nodes_before_reading() -> None:
    node = make_node()
    watcher = Peer()
    w = opened(node.hub.open("c1", "w", watcher, 0))
    node.store.views = {"x": (3, view("online"))}
    node.hub.subscribe(w, ["x"], 0)
    assert watcher.take() == [("STATE", "x=online/1")]
    node.link.lose()
    node.clock.advance(0.5)
    node.store.answers["resync"] = True  # Redis lost its data
    node.store.views = {"x": (1, view("busy"))}  # another node re-registered x meanwhile
    snapshots = len(node.store.named("snapshot"))
    node.link.accept()
    assert node.hub.phase == "waiting_for_peers"
    assert node.hub.health_problem() == "redis: re-registering this node's connections"
    wait = CONFIG.max_backoff * 1.5 + 0.5
    node.clock.advance(wait - 0.01)
    assert len(node.store.named("snapshot")) == snapshots and watcher.take() == []
    node.clock.advance(0.01)
    assert node.hub.phase == "serving"
    assert watcher.take() == [("DIFF", "x", "busy", "1")]


def test_an_empty_redis_at_the_first_start_is_no_reason_to_wait() -> None:
    node = make_node(start=False)
    node.store.answers["resync"] = True
    node.hub.startService()
    node.link.accept()
    assert node.hub.phase == "serving"


def test_taken_for_dead_by_another_node_the_node_re_registers() -> None:
    node = make_node()
    opened(node.hub.open("c1", "u", Peer(), 0))
    node.store.held.add("resync")
    node.store.answers["heartbeat"] = True
    node.clock.advance(node.hub.beat_interval)
    assert node.hub.phase == "registering"
    call = node.store.pending("resync")
    assert [item[0] for item in call.args[2]] == ["c1"]
    node.store.answers["heartbeat"] = False
    call.answer(False)
    assert node.hub.phase == "serving"


def test_a_newer_registration_supersedes_one_in_flight() -> None:
    node = make_node()
    node.store.held.add("resync")
    node.store.answers["heartbeat"] = True
    node.clock.advance(node.hub.beat_interval)  # reaped: a registration goes out
    node.clock.advance(node.hub.beat_interval)  # reaped again: another one
    first, second = node.store.named("resync")[-2:]
    first.answer(False)
    assert node.hub.phase == "registering"  # that answer is stale
    node.store.answers["heartbeat"] = False
    second.answer(False)
    assert node.hub.phase == "serving"


def test_lost_while_registering_backs_off_then_tries_again() -> None:
    node = make_node(start=False)
    node.store.held.add("resync")
    node.hub.startService()
    node.link.accept()
    assert node.hub.phase == "registering"
    node.link.lose("gone")
    assert node.hub.phase == "away" and node.hub.health_problem() == "redis unavailable: gone"
    node.store.pending("resync").fail(ConnectionError("lost"))  # stale: nothing more
    assert node.link.aborted == []
    node.clock.advance(0.49)
    assert len(node.link.attempts) == 1
    node.clock.advance(0.01)
    assert len(node.link.attempts) == 2 and node.hub.phase == "connecting"
    node.link.refuse("still down")
    assert node.hub.phase == "away"
    node.clock.advance(0.5)
    node.store.held.clear()
    node.link.accept()
    assert node.hub.phase == "serving"


def test_no_beat_off_redis() -> None:
    node = make_node()
    heartbeats = len(node.store.named("heartbeat"))
    node.link.lose()
    node.clock.advance(0.4)  # less than the backoff: still away
    assert len(node.store.named("heartbeat")) == heartbeats


def test_a_failed_re_registration_drops_the_link() -> None:
    node = make_node()
    node.store.held.add("resync")
    node.store.answers["heartbeat"] = True
    node.clock.advance(node.hub.beat_interval)
    node.store.pending("resync").fail(RuntimeError("ERR"))
    assert node.link.aborted and node.hub.phase == "away"


def test_stop_while_waiting_for_peers_cancels_the_wait() -> None:
    node = make_node()
    watcher = Peer()
    node.hub.subscribe(opened(node.hub.open("c1", "w", watcher, 0)), ["x"], 0)
    node.link.lose()
    node.clock.advance(0.5)
    node.store.answers["resync"] = True
    node.link.accept()
    assert node.hub.phase == "waiting_for_peers"
    stopped = node.hub.stopService()
    assert stopped.called and node.hub.phase == "stopped"
    snapshots = len(node.store.named("snapshot"))
    node.clock.advance(10)
    assert len(node.store.named("snapshot")) == snapshots


def test_the_beat_interval_and_detection_time_follow_the_node_timeout() -> None:
    assert make_node().hub.beat_interval == min(1.0, CONFIG.node_timeout / 4)
    slow = ClusterConfig(CONFIG.redis, "n", 30.0)
    assert (slow.reply_timeout, slow.max_backoff) == (5.0, 5.0)
    fast = ClusterConfig(CONFIG.redis, "n", 1.0)
    assert (fast.reply_timeout, fast.max_backoff) == (0.5, 0.5)
