"""ClusterHub.ready(): fires the first time the node serves (registered, watches re-read),
the moment systemd is told READY=1; never while Redis is away or registration waits."""

from __future__ import annotations

from tests.cluster.fakes import make_node


def test_ready_waits_for_the_first_registration() -> None:
    node = make_node(start=False)
    ready = node.hub.ready()
    node.hub.startService()
    assert node.hub.phase == "connecting" and not ready.called
    node.link.refuse()  # Redis unreachable: away, serving its clients alone
    assert node.hub.phase == "away" and not ready.called
    node.clock.advance(0.5)
    node.store.held.add("resync")  # connected; the registration is not answered yet
    node.link.accept()
    assert node.hub.phase == "registering" and not ready.called
    node.store.pending("resync").answer(False)
    assert node.hub.phase == "serving" and ready.called


def test_ready_after_the_first_time_fires_at_once_even_if_redis_went_since() -> None:
    node = make_node()
    assert node.hub.ready().called
    node.link.lose()
    assert node.hub.phase == "away"
    assert node.hub.ready().called  # READY is said once per run; systemd never asks again
