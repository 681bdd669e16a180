"""RedisLink against a real redis-server behind a TCP proxy that can be paused (a hung
primary). The sockets are real (the reactor runs); every reply deadline is on a task.Clock
the test advances, so nothing here waits for a timer."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor, task

from presence.cluster.link import RedisLink, RedisUnavailable
from presence.cluster.options import RedisURL
from tests.support.redis_fixture import RedisServer, TcpProxy, needs_redis

pytestmark = needs_redis

REPLY_TIMEOUT = 2.0


def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll real sockets' observable state, letting the reactor run meanwhile."""

    @defer.inlineCallbacks
    def poll() -> Generator[Any, Any, None]:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"never happened within {timeout}s: {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    return poll()


def failure_of(d: defer.Deferred[Any]) -> list[Any]:
    failures: list[Any] = []
    d.addErrback(failures.append)
    return failures


def make_link(port: int) -> tuple[RedisLink, task.Clock, list[str | None]]:
    clock = task.Clock()
    url = RedisURL.parse(f"redis://127.0.0.1:{port}/0")
    link = RedisLink(url, reactor, reply_timeout=REPLY_TIMEOUT, clock=clock)
    lost: list[str | None] = []
    link.on_lost = lambda: lost.append(link.problem)
    return link, clock, lost


@pytest_twisted.inlineCallbacks
def test_a_command_unanswered_by_a_hung_redis_drops_the_link_at_its_deadline(
    redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> Generator[Any, Any, None]:
    proxy = tcp_proxy(redis_server.port)
    link, clock, lost = make_link(proxy.port)
    yield link.connect()
    assert link.up and (yield link.eval("return 7", [])) == 7
    proxy.pause()
    d = link.eval("return 'held'", [])
    failed = failure_of(d)
    yield until(lambda: b"held" in proxy.held(), "the command reached the proxy")
    clock.advance(REPLY_TIMEOUT - 0.01)
    assert not d.called and lost == []
    clock.advance(0.01)
    assert lost == ["no reply to a script within 2s"] and not link.up
    assert failed and failed[0].check(RedisUnavailable)  # after the link was dropped
    later = failure_of(link.eval("return 1", []))  # down: fails at once
    assert later and later[0].check(RedisUnavailable)
    link.stop()


@pytest_twisted.inlineCallbacks
def test_a_pub_sub_connection_that_stopped_answering_drops_the_link(
    redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> Generator[Any, Any, None]:
    proxy = tcp_proxy(redis_server.port)
    link, clock, lost = make_link(proxy.port)
    yield link.connect()
    yield link.ping_subscriber()
    proxy.pause()
    d = link.ping_subscriber()
    failed = failure_of(d)
    yield until(lambda: b"PING" in proxy.held(), "the PING reached the proxy")
    clock.advance(REPLY_TIMEOUT)
    assert lost and not link.up and failed
    link.stop()


@pytest_twisted.inlineCallbacks
def test_connecting_to_a_hung_redis_fails_at_the_deadline(
    redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> Generator[Any, Any, None]:
    proxy = tcp_proxy(redis_server.port)
    proxy.pause()
    link, clock, lost = make_link(proxy.port)
    d = link.connect()
    failed = failure_of(d)
    yield until(lambda: b"PING" in proxy.held(), "the PING reached the proxy")
    clock.advance(REPLY_TIMEOUT)
    yield until(lambda: failed, "the attempt failed")
    assert failed[0].check(RedisUnavailable) and "cannot reach" in (link.problem or "")
    assert lost == []  # it never was up
    proxy.resume()
    yield link.connect()
    assert link.up
    link.stop()


@pytest_twisted.inlineCallbacks
def test_a_lost_connection_is_reported_once(
    redis_server: RedisServer, tcp_proxy: Callable[[int], TcpProxy]
) -> Generator[Any, Any, None]:
    proxy = tcp_proxy(redis_server.port)
    link, _, lost = make_link(proxy.port)
    yield link.connect()
    proxy.cut()
    yield until(lambda: lost, "the loss was noticed")
    assert len(lost) == 1 and "lost the connection" in (lost[0] or "")
    link.stop()


def test_the_backoff_doubles_up_to_its_cap() -> None:
    url = RedisURL.parse("redis://127.0.0.1:1/0")
    link = RedisLink(url, reactor, max_backoff=0.5, clock=task.Clock(), jitter=lambda a, b: b)
    assert [link.retry_delay() for _ in range(4)] == [0.1, 0.2, 0.4, 0.5]
    assert not link.up and "not yet connected" in (link.problem or "")
