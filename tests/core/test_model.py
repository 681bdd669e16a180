"""The pure presence model: plain pytest, no reactor, time passed in."""

from __future__ import annotations

import pytest

from presence.core.model import Change, PresenceModel, TooManySubscriptions, UserView, aggregate
from tests.support.peers import FakePeer


def visible(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.user_id, c.view.status) for c in changes]


@pytest.fixture
def model() -> PresenceModel:
    return PresenceModel(offline_grace=10, max_subscriptions=3)


def test_first_connection_makes_a_user_online(model: PresenceModel) -> None:
    conn, changes = model.open("c1", "alice", FakePeer(), now=100)
    assert visible(changes) == [("alice", "online")]
    assert model.view("alice") == UserView("online", {}, None, 1)
    assert conn.user_id == "alice" and model.connected_user_count == 1


def test_unknown_user_is_offline_never_seen(model: PresenceModel) -> None:
    assert model.view("nobody") == UserView("offline", {}, None, 0)


def test_second_tab_changes_only_connections_so_no_diff(model: PresenceModel) -> None:
    model.open("c1", "alice", FakePeer(), now=1)
    _, changes = model.open("c2", "alice", FakePeer(), now=2)
    assert changes == []
    assert model.view("alice").connections == 2
    assert model.connected_user_count == 1 and model.connection_count == 2


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["away", "online"], "online"),
        (["away", "busy", "online"], "busy"),
        (["away", "away"], "away"),
        (["online"], "online"),
    ],
)
def test_aggregate_status(model: PresenceModel, statuses: list[str], expected: str) -> None:
    conns = []
    for i, status in enumerate(statuses):
        conn, _ = model.open(f"c{i}", "alice", FakePeer(), now=0)
        model.update(conn, status, None, now=1)
        conns.append(conn)
    assert aggregate(conns)[0] == expected
    assert model.view("alice").status == expected


def test_metadata_is_the_most_recently_set_on_an_open_connection(model: PresenceModel) -> None:
    c1, _ = model.open("c1", "alice", FakePeer(), now=0)
    c2, _ = model.open("c2", "alice", FakePeer(), now=0)
    model.update(c1, "online", {"device": "phone"}, now=1)
    model.update(c2, "online", {"device": "laptop"}, now=2)
    model.update(c1, "online", None, now=3)  # no metadata: c1 keeps its own, not newer
    assert model.view("alice").metadata == {"device": "laptop"}
    changes = model.close(c2, now=4, clean=True)
    assert model.view("alice").metadata == {"device": "phone"}
    assert [c.view.metadata for c in changes] == [{"device": "phone"}]


def test_update_with_no_visible_change_sends_nothing(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    assert model.update(conn, "online", None, now=1) == []
    assert visible(model.update(conn, "away", {"a": 1}, now=2)) == [("alice", "away")]
    assert model.update(conn, "away", {"a": 1}, now=3) == []


def test_clean_close_of_last_connection_is_offline_at_once(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=5)
    changes = model.close(conn, now=7, clean=True)
    assert visible(changes) == [("alice", "offline")]
    assert model.view("alice") == UserView("offline", {}, 7, 0)
    assert model.stats.transitions["offline"] == 1


def test_abrupt_close_keeps_the_user_present_through_the_grace(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.update(conn, "busy", {"x": 1}, now=1)
    assert model.close(conn, now=2, clean=False) == []
    assert model.view("alice") == UserView("busy", {"x": 1}, None, 0)
    assert model.online_user_count == 1 and model.connected_user_count == 0
    assert model.expire(now=11.9) == []
    changes = model.expire(now=12)
    assert visible(changes) == [("alice", "offline")]
    # lastSeen is when presence ended (the drop), not when the grace ran out.
    assert changes[0].view.last_seen == 2
    assert model.expire(now=100) == []


def test_reconnect_within_grace_is_invisible(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.close(conn, now=1, clean=False)
    _, changes = model.open("c2", "alice", FakePeer(), now=5)
    assert changes == []
    assert model.expire(now=50) == []
    assert model.view("alice") == UserView("online", {}, None, 1)
    assert model.stats.offline_suppressed == 1
    assert model.stats.transitions["offline"] == 0


def test_reconnect_within_grace_shows_a_status_change_only(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.update(conn, "away", None, now=0)
    model.close(conn, now=1, clean=False)
    _, changes = model.open("c2", "alice", FakePeer(), now=2)
    assert visible(changes) == [("alice", "online")]


def test_grace_zero_means_offline_at_once() -> None:
    model = PresenceModel(offline_grace=0)
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    assert visible(model.close(conn, now=1, clean=False)) == [("alice", "offline")]


def test_a_second_grace_after_reconnect_uses_its_own_deadline(model: PresenceModel) -> None:
    c1, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.close(c1, now=1, clean=False)  # deadline 11
    c2, _ = model.open("c2", "alice", FakePeer(), now=5)
    model.close(c2, now=6, clean=False)  # deadline 16
    assert model.expire(now=12) == []
    assert [c.view.last_seen for c in model.expire(now=16)] == [6]


def test_last_seen_is_null_again_while_present(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.close(conn, now=3, clean=True)
    model.open("c2", "alice", FakePeer(), now=4)
    assert model.view("alice").last_seen is None


def test_subscribe_returns_exactly_the_requested_snapshot(model: PresenceModel) -> None:
    model.open("c1", "alice", FakePeer(), now=0)
    watcher, _ = model.open("w", "bob", FakePeer(), now=0)
    snapshot = model.subscribe(watcher, ["alice", "carol", "alice"])
    assert snapshot == {
        "alice": UserView("online", {}, None, 1),
        "carol": UserView("offline", {}, None, 0),
    }
    assert model.subscription_count == 2


def test_changes_carry_the_watchers_of_that_user_only(model: PresenceModel) -> None:
    alice_peer, watcher_peer, other_peer = FakePeer("a"), FakePeer("w"), FakePeer("o")
    alice, _ = model.open("c1", "alice", alice_peer, now=0)
    watcher, _ = model.open("w", "bob", watcher_peer, now=0)
    other, _ = model.open("o", "carol", other_peer, now=0)
    model.subscribe(watcher, ["alice"])
    model.subscribe(other, ["dave"])
    (change,) = model.update(alice, "away", None, now=1)
    assert change.watchers == (watcher_peer,)


def test_subscription_limit_is_all_or_nothing(model: PresenceModel) -> None:
    watcher, _ = model.open("w", "bob", FakePeer(), now=0)
    model.subscribe(watcher, ["a", "b"])
    with pytest.raises(TooManySubscriptions):
        model.subscribe(watcher, ["c", "d"])
    assert watcher.watching == {"a", "b"} and model.subscription_count == 2
    model.subscribe(watcher, ["a", "c"])  # a is already watched: only c is new
    assert watcher.watching == {"a", "b", "c"}


def test_unsubscribe_and_close_remove_watches(model: PresenceModel) -> None:
    alice, _ = model.open("c1", "alice", FakePeer(), now=0)
    watcher, _ = model.open("w", "bob", FakePeer(), now=0)
    model.subscribe(watcher, ["alice", "carol"])
    model.unsubscribe(watcher, ["alice", "never-watched"])
    assert model.update(alice, "away", None, now=1)[0].watchers == ()
    model.close(watcher, now=2, clean=True)
    assert model.subscription_count == 0 and list(model.watched_users()) == []


def test_a_user_may_watch_themselves(model: PresenceModel) -> None:
    peer = FakePeer()
    conn, _ = model.open("c1", "alice", peer, now=0)
    model.subscribe(conn, ["alice"])
    (change,) = model.update(conn, "busy", None, now=1)
    assert change.watchers == (peer,)


def test_stale_connections(model: PresenceModel) -> None:
    c1, _ = model.open("c1", "alice", FakePeer(), now=0)
    c2, _ = model.open("c2", "bob", FakePeer(), now=0)
    c2.last_active = 20
    assert model.stale(now=30, timeout=30) == [c1]
    assert model.stale(now=29.9, timeout=30) == []


def test_closing_twice_is_harmless(model: PresenceModel) -> None:
    conn, _ = model.open("c1", "alice", FakePeer(), now=0)
    model.close(conn, now=1, clean=True)
    assert model.close(conn, now=2, clean=True) == []


def test_connections_that_never_watch_share_one_empty_set(model: PresenceModel) -> None:
    """Memory: no set of its own until the first SUBSCRIBE; watching one user gives a
    connection its own, and nobody else's changes."""
    first, _ = model.open("c1", "alice", FakePeer(), now=0)
    second, _ = model.open("c2", "bob", FakePeer(), now=0)
    assert first.watching is second.watching and not first.watching
    model.unsubscribe(first, ["carol"])  # nothing watched: nothing to end
    model.subscribe(first, [])
    assert first.watching is second.watching
    model.subscribe(first, ["carol"])
    assert first.watching == {"carol"} and not second.watching
    model.unsubscribe(first, ["carol"])
    assert not first.watching and model.subscription_count == 0
