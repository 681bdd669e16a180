"""The Lua aggregate is the pure model's: random opens, updates and closes of one user's
connections on several nodes give the same statuses, metadata, counts, lastSeen and the
same diffs (hypothesis drives both; Redis is real)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.cluster.store import load_script, parse_message, parse_view
from presence.core import wire
from presence.core.model import PresenceModel
from tests.support.redis_fixture import REDIS_SERVER, RedisServer, Resp, needs_redis

pytestmark = needs_redis

STATUSES = ("online", "away", "busy")


class Nobody:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: wire.Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Resp, Resp]]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    r, sub = Resp(server.port), Resp(server.port)
    yield r, sub
    r.close()
    sub.close()
    server.stop()


op = st.one_of(
    st.tuples(st.just("open"), st.sampled_from("AB")),
    st.tuples(
        st.just("update"),
        st.integers(0, 5),
        st.sampled_from(STATUSES),
        st.one_of(st.none(), st.dictionaries(st.sampled_from("xy"), st.integers(0, 3), max_size=2)),
    ),
    st.tuples(st.just("close"), st.integers(0, 5)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(op, max_size=25))
def test_lua_aggregate_matches_the_model(redis: tuple[Resp, Resp], ops: list[Any]) -> None:
    r, sub = redis
    r.call("FLUSHALL")
    sha = {
        n: r.call("SCRIPT", "LOAD", load_script(n)) for n in ("open", "update", "close", "snapshot")
    }
    assert sub.call("SUBSCRIBE", "presence:ch:u")[0] == "subscribe"
    model = PresenceModel(offline_grace=0)
    conns: list[tuple[str, str]] = []  # (connectionId, node), open ones
    expected: list[tuple[str, Any, float | None, int]] = []
    serial = 0
    for now, step in enumerate(ops, start=1):
        if step[0] == "open":
            serial += 1
            cid = f"c{serial}"
            _, changes = model.open(cid, "u", Nobody(), now)
            r.call("EVALSHA", sha["open"], 0, step[1], cid, "u", f"{now:.3f}", 3600)
            conns.append((cid, step[1]))
        elif not conns:
            continue
        elif step[0] == "update":
            cid, node = conns[step[1] % len(conns)]
            conn = model.connection(cid)
            assert conn is not None
            changes = model.update(conn, step[2], step[3], now)
            md = "" if step[3] is None else orjson.dumps(step[3]).decode()
            r.call("EVALSHA", sha["update"], 0, node, cid, "u", step[2],
                   "0" if step[3] is None else "1", md, f"{now:.3f}", 3600)  # fmt: skip
        else:
            cid, node = conns.pop(step[1] % len(conns))
            conn = model.connection(cid)
            assert conn is not None
            changes = model.close(conn, now, clean=True)
            r.call("EVALSHA", sha["close"], 0, node, cid, "u", f"{now:.3f}", 1, 0, 3600)
        expected += [(c.view.status, dict(c.view.metadata), c.view.last_seen, c.view.connections)
                     for c in changes]  # fmt: skip
        _, status, count, last_seen, metadata = r.call("EVALSHA", sha["snapshot"], 0, "u")
        got = parse_view(status, count, last_seen, metadata)
        want = model.view("u")
        assert (got.status, dict(got.metadata), got.last_seen, got.connections) == (
            want.status,
            dict(want.metadata),
            want.last_seen,
            want.connections,
        )
    sub.send("UNSUBSCRIBE", "presence:ch:u")
    published = []
    while True:
        reply = sub.read()
        if reply[0] == "unsubscribe":
            break
        published.append(parse_message(reply[2]))
    assert [version for version, _ in published] == list(range(1, len(published) + 1))
    assert [
        (view.status, dict(view.metadata), view.last_seen, view.connections)
        for _, view in published
    ] == expected
