"""The single-node hub (presence.hub.LocalHub): it drives the pure model and delivers its
changes, answering open and lookup with (already fired) Deferreds."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from presence.core import policy, wire
from presence.core.model import PresenceModel, UserView
from presence.core.wire import Shared
from presence.hub import LocalHub
from tests.support.peers import FakePeer


def result_of(d: defer.Deferred[Any]) -> Any:
    """What an already fired Deferred answered with."""
    results: list[Any] = []
    d.addBoth(results.append)
    (result,) = results
    return result


def test_hub_encodes_one_diff_for_all_watchers_and_sends_state() -> None:
    model = PresenceModel(offline_grace=0)
    hub = LocalHub(model)
    shared: list[Shared] = []

    class Recorder(FakePeer):
        def send_shared(self, message: Shared) -> None:
            shared.append(message)

    w1, w2 = Recorder(), Recorder()
    alice = result_of(hub.open("a", "alice", FakePeer(), now=0))
    for i, peer in enumerate((w1, w2)):
        conn = result_of(hub.open(f"w{i}", f"watcher{i}", peer, now=0))
        hub.subscribe(conn, ["alice"], now=0)
        assert peer.sent[0].startswith(b'{"type":"PRESENCE_STATE"')
    hub.update(alice, "away", {"k": "v"}, now=1)
    assert len(shared) == 2 and shared[0] is shared[1]
    assert shared[0].payload.startswith(b'{"type":"PRESENCE_DIFF","userId":"alice"')
    assert hub.diffs_sent == 2


def test_a_connection_over_the_per_user_cap_fails_and_never_counts() -> None:
    model = PresenceModel(offline_grace=0)
    hub = LocalHub(model, max_connections_per_user=2)
    for i in range(2):
        result_of(hub.open(f"c{i}", "alice", FakePeer(), now=0))
    refused = result_of(hub.open("c2", "alice", FakePeer(), now=0))
    assert refused.check(policy.OverCapacity)
    assert model.connections_of("alice") == 2 and hub.figures.connection_count == 2
    assert result_of(hub.open("b", "bob", FakePeer(), now=0)).user_id == "bob"


def test_lookup_answers_what_a_watcher_would_be_told() -> None:
    hub = LocalHub(PresenceModel(offline_grace=0))
    result_of(hub.open("a", "alice", FakePeer(), now=0))
    assert result_of(hub.lookup(["alice", "carol"])) == {
        "alice": UserView("online", {}, None, 1),
        "carol": UserView("offline", {}, None, 0),
    }


def test_too_many_subscriptions_is_a_wire_error_and_subscribes_nothing() -> None:
    model = PresenceModel(offline_grace=0, max_subscriptions=1)
    hub = LocalHub(model)
    peer = FakePeer()
    conn = result_of(hub.open("w", "watcher", peer, now=0))
    with pytest.raises(wire.WireError) as refused:
        hub.subscribe(conn, ["a", "b"], now=0)
    assert refused.value.code == "TOO_MANY_SUBSCRIPTIONS"
    assert model.subscription_count == 0 and peer.sent == []


def test_tick_delivers_the_offline_diff_when_the_grace_runs_out() -> None:
    hub = LocalHub(PresenceModel(offline_grace=10))
    watcher = FakePeer()
    hub.subscribe(result_of(hub.open("w", "watcher", watcher, now=0)), ["alice"], now=0)
    alice = result_of(hub.open("a", "alice", FakePeer(), now=0))
    hub.close(alice, now=5, clean=False)
    hub.tick(now=14.9)
    assert [m.split(b'"status":"')[1][:6] for m in watcher.sent[1:]] == [b"online"]
    assert hub.users_present() == 2  # the watcher, and alice within her grace
    hub.tick(now=15)
    assert b'"status":"offline"' in watcher.sent[-1]
    assert hub.users_present() == 1 and hub.diffs_sent == 2
