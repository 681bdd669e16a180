"""The room scripts keep the pure rooms model's memberships: hypothesis tells both the same
story (joins, room updates, leaves, presence updates, closes clean or not, graces running
out, a node dying) and, after every step, Redis must hold the members ``core.rooms.Rooms``
holds (status, metadata, connections), the same rooms and membership counts, and the
room's published changes, applied in order, must rebuild those members. Redis is real; time
is passed in as ``now`` and TTLs are long (nothing sleeps, nothing runs out by itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from presence.cluster.room_store import ROOM_SCRIPTS, parse_room_message
from presence.cluster.store import load_script, stamp
from presence.core import wire
from presence.core.model import OFFLINE, Connection, PresenceModel, UserView
from presence.core.rooms import Member, Rooms
from presence.hub import page_of
from tests.support.redis_fixture import REDIS_SERVER, RedisServer, Resp, needs_redis

pytestmark = needs_redis

TTL = 3600
NODE_TTL_MS = 3_600_000
ROOMS = ("a", "b")
USERS = ("u", "v")
SCRIPTS = ("open", "update", "close", "expire", "sweep", "resync", "heartbeat", *ROOM_SCRIPTS)


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
    assert sub.call("PSUBSCRIBE", "presence:rch:*")[0] == "psubscribe"
    yield r, sub
    r.close()
    sub.close()
    server.stop()


class _Empty:
    users: dict[str, Any] = {}


class Twin:
    def __init__(self, redis: tuple[Resp, Resp], grace: float) -> None:
        self.r, self.sub = redis
        self.r.call("FLUSHALL")
        self.drain()
        self.sha = {n: self.r.call("SCRIPT", "LOAD", load_script(n)) for n in SCRIPTS}
        self.grace = grace
        self.model = PresenceModel(offline_grace=grace)
        self.rooms = Rooms(
            lambda u: self.model.view(u).status, grace, batch_threshold=10**9, list_limit=10**9
        )
        self.now = 100.0
        self.nodes: dict[str, float] = {}
        self.conns: dict[str, tuple[str, Connection]] = {}
        self.serial = 0
        self.node_serial = 0
        self.seen: dict[str, dict[str, Member]] = {room: {} for room in ROOMS}
        self.versions = dict.fromkeys(ROOMS, 0)
        self.add_node()
        self.add_node()

    def lua(self, name: str, *args: object) -> Any:
        return self.r.call("EVALSHA", self.sha[name], 0, *args)

    def drain(self) -> list[tuple[str, str]]:
        out = []
        self.sub.send("PING")
        while True:
            reply: Any = self.sub.read()
            if reply[0] == "pong":
                return out
            assert reply[0] == "pmessage"
            out.append((reply[2].removeprefix("presence:rch:"), reply[3]))

    def check(self) -> None:
        for room, payload in self.drain():
            message = parse_room_message(payload)
            kind = "leave" if message.member is None else "forced" if message.force else "member"
            event(f"published: {kind}")
            if message.member is None and message.at is not None and message.at < self.now:
                event("published: a leave after the grace")
            assert message.version == self.versions[room] + 1
            self.versions[room] = message.version
            if message.member is None:
                self.seen[room].pop(message.user_id, None)
            else:
                self.seen[room][message.user_id] = message.member
        for room in ROOMS:
            reply = self.lua("room_snapshot", room)
            assert int(reply[0]) == self.versions[room]
            got = {}
            for i in range(1, len(reply), 4):
                uid, status, count, md = reply[i : i + 4]
                got[uid] = Member(status, orjson.loads(md), int(count))
            want = {
                u: Member(m.status, dict(m.metadata), m.connections)
                for u, m in self.rooms.members(room).items()
            }
            assert got == want
            assert self.seen[room] == want
            for limit in (1, 2):  # GET /rooms/{room} pages as the model's page_of does
                for after in (None, *sorted(want)):
                    page = page_of(want, limit, after)
                    reply = self.lua("room_page", room, limit, after or "")
                    assert int(reply[0]) == page.count and (reply[1] or None) == page.next
                    assert reply[2::4] == list(page.members)
        assert self.r.call("SCARD", "presence:rooms") == self.rooms.room_count
        assert int(self.r.call("GET", "presence:rmembers") or 0) == self.rooms.membership_count

    def keep_seen_in_grace(self, before: dict[str, UserView]) -> None:
        """A batch (a sweep, a re-registration) that ended all of a user's connections into
        the grace keeps what watchers saw before it, where the model keeps the view of the
        last connection it closed (as in test_cluster_equivalence): hand the model the same."""
        for uid in USERS:
            view = self.model.view(uid)
            in_grace = view.status != OFFLINE and self.model.connections_of(uid) == 0
            if in_grace and not view.looks_like(before[uid]):
                user = self.model._users[uid]
                user.view = UserView(before[uid].status, before[uid].metadata, None, 0)

    def add_node(self) -> str:
        self.node_serial += 1
        node = f"n{self.node_serial}"
        self.lua("resync", node, stamp(self.now), TTL, self.grace, NODE_TTL_MS, 0)
        self.nodes[node] = self.now
        return node

    def pick(self, i: int) -> tuple[str, Connection] | None:
        conns = sorted(self.conns)
        return self.conns[conns[i % len(conns)]] if conns else None

    # -- the story -------------------------------------------------------------------------

    def open(self, i: int, uid: str) -> None:
        node = sorted(self.nodes)[i % len(self.nodes)]
        self.serial += 1
        cid = f"c{self.serial}"
        conn, changes = self.model.open(cid, uid, Nobody(), self.now)
        self.lua("open", node, cid, uid, stamp(self.now), TTL)
        self.conns[cid] = (node, conn)
        self.user_changed(changes)
        self.check()

    def user_changed(self, changes: list[Any]) -> None:
        for change in changes:
            self.rooms.user_changed(change.user_id, self.now)

    def join(self, i: int, room: str, md: dict[str, int] | None) -> None:
        picked = self.pick(i)
        if picked is None:
            return
        node, conn = picked
        lingering = any(
            not p.joined and p.lingering for p in self.rooms._rooms.get(room, _Empty).users.values()
        )
        if lingering:
            event("join: into a room with a lingering membership")
        self.rooms.join(conn, room, md, self.now)
        has, encoded = ("0", "") if md is None else ("1", orjson.dumps(md).decode())
        args = (node, conn.id, conn.user_id, room, has, encoded, stamp(self.now), 0, TTL)
        assert self.lua("room_join", *args)[0] == 1
        self.check()

    def room_update(self, i: int, room: str, md: dict[str, int]) -> None:
        picked = self.pick(i)
        if picked is None or not picked[1].rooms or room not in picked[1].rooms:
            return
        _, conn = picked
        self.rooms.update(conn, room, md, self.now)
        args = (conn.id, conn.user_id, room, orjson.dumps(md).decode(), stamp(self.now), TTL)
        assert self.lua("room_update", *args)[0] == 1
        self.check()

    def leave(self, i: int, room: str) -> None:
        picked = self.pick(i)
        if picked is None:
            return
        node, conn = picked
        self.rooms.leave(conn, room, self.now)
        self.lua("room_leave", node, conn.id, conn.user_id, room, stamp(self.now), TTL)
        self.check()

    def update(self, i: int, status: str) -> None:
        picked = self.pick(i)
        if picked is None:
            return
        node, conn = picked
        changes = self.model.update(conn, status, None, self.now)
        self.lua("update", node, conn.id, conn.user_id, status, "0", "", stamp(self.now), TTL)
        self.user_changed(changes)
        self.check()

    def close(self, i: int, clean: bool) -> None:
        picked = self.pick(i)
        if picked is None:
            return
        node, conn = picked
        del self.conns[conn.id]
        rooms = list(conn.rooms or ())
        self.rooms.closed(conn, self.now, clean)
        changes = self.model.close(conn, self.now, clean)
        args = (node, conn.id, conn.user_id, stamp(self.now), int(clean), self.grace, TTL)
        self.lua("room_close", *args, *rooms)
        self.lua("close", *args)
        self.user_changed(changes)
        self.check()

    def wait(self, dt: float) -> None:
        self.now += dt
        self.rooms.expire(self.now)
        self.user_changed(self.model.expire(self.now))
        self.lua("room_expire", stamp(self.now), TTL, 100)
        self.lua("expire", stamp(self.now), TTL, 100)
        self.check()

    def die(self, i: int) -> None:
        held = sorted({node for node, _ in self.conns.values()})
        if not held:
            return
        node = held[i % len(held)]
        before = {uid: self.model.view(uid) for uid in USERS}
        last_seen = self.nodes.pop(node)
        self.r.call("DEL", f"presence:alive:{node}")
        sweeper = self.add_node()
        for cid, (n, conn) in list(self.conns.items()):
            if n == node:
                del self.conns[cid]
                self.rooms.closed(conn, last_seen, clean=False)
                self.user_changed(self.model.close(conn, last_seen, clean=False))
        self.rooms.expire(self.now)
        self.user_changed(self.model.expire(self.now))
        self.keep_seen_in_grace(before)
        self.lua("sweep", sweeper, stamp(self.now), TTL, self.grace, "")
        self.lua("room_expire", stamp(self.now), TTL, 100)
        self.lua("expire", stamp(self.now), TTL, 100)
        self.check()

    def outage(self, i: int, clean: bool) -> None:
        """A node off Redis for a second: one of its connections closes and another leaves a
        room meanwhile; back, it re-registers (resync.lua, then room_resync.lua)."""
        held = sorted({node for node, _ in self.conns.values()})
        if not held:
            return
        node = held[i % len(held)]
        mine = sorted(cid for cid, (n, _) in self.conns.items() if n == node)
        before = {uid: self.model.view(uid) for uid in USERS}
        at = self.now
        ended, room_ended = [], []
        closing = self.conns.pop(mine[i % len(mine)])[1]
        for name in closing.rooms or ():
            room_ended.extend((name, closing.id, stamp(at), int(clean)))
        self.rooms.closed(closing, at, clean)
        self.user_changed(self.model.close(closing, at, clean))
        ended.extend((closing.id, closing.user_id, stamp(at), int(clean)))
        rest = [self.conns[cid][1] for cid in mine if cid in self.conns]
        if rest and rest[0].rooms:
            leaving, name = rest[0], sorted(rest[0].rooms)[0]
            self.rooms.leave(leaving, name, at)
            room_ended.extend((name, leaving.id, stamp(at), 1))
        self.now += 1.0
        self.rooms.expire(self.now)
        self.user_changed(self.model.expire(self.now))
        self.keep_seen_in_grace(before)
        live: list[object] = []
        room_live: list[object] = []
        for conn in sorted(rest, key=lambda c: c.metadata_seq):
            md = orjson.dumps(conn.metadata).decode() if conn.metadata_seq else ""
            live.extend((conn.id, conn.user_id, conn.status, md))
            for name, joined in sorted((conn.rooms or {}).items(), key=lambda x: x[1].seq):
                room_md = orjson.dumps(joined.metadata).decode() if joined.seq else ""
                room_live.append((joined.seq, (conn.id, conn.user_id, name, room_md)))
        args = (node, stamp(self.now), TTL, self.grace, NODE_TTL_MS, len(rest))
        self.lua("resync", *args, *live, *ended)
        self.nodes[node] = self.now  # a registration counts as a heartbeat
        flat = [x for _, item in sorted(room_live, key=lambda x: x[0]) for x in item]
        n = len(room_live)
        self.lua("room_resync", node, stamp(self.now), self.grace, TTL, n, *flat, *room_ended)
        self.lua("room_expire", stamp(self.now), TTL, 100)
        self.lua("expire", stamp(self.now), TTL, 100)
        self.check()

    def beat(self) -> None:
        for node in self.nodes:
            self.lua("heartbeat", node, stamp(self.now), NODE_TTL_MS)
            self.nodes[node] = self.now


i = st.integers(0, 7)
room = st.sampled_from(ROOMS)
md = st.none() | st.fixed_dictionaries({"k": st.integers(0, 2)})
steps = st.one_of(
    st.tuples(st.just("open"), i, st.sampled_from(USERS)),
    st.tuples(st.just("join"), i, room, md),
    st.tuples(st.just("join"), i, room, md),
    st.tuples(st.just("room_update"), i, room, st.fixed_dictionaries({"k": st.integers(0, 2)})),
    st.tuples(st.just("leave"), i, room),
    st.tuples(st.just("update"), i, st.sampled_from(("online", "away", "busy"))),
    st.tuples(st.just("close"), i, st.booleans()),
    st.tuples(st.just("wait"), st.sampled_from((0.5, 3.0, 6.0))),
    st.tuples(st.just("die"), i),
    st.tuples(st.just("outage"), i, st.booleans()),
    st.tuples(st.just("beat")),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(steps, min_size=3, max_size=40), st.sampled_from((0.0, 5.0)))
def test_the_room_scripts_keep_the_model(
    redis: tuple[Resp, Resp], story: list[tuple[Any, ...]], grace: float
) -> None:
    twin = Twin(redis, grace)
    twin.open(0, "u")
    twin.open(1, "v")
    twin.join(0, "a", None)
    for step in story:
        getattr(twin, step[0])(*step[1:])


def test_a_room_pages_in_code_point_order_like_the_model(redis: tuple[Resp, Resp]) -> None:
    """Lua compares strings as bytes; for UTF-8 that is the code point order page_of uses."""
    r = redis[0]
    r.call("FLUSHALL")
    sha = {n: r.call("SCRIPT", "LOAD", load_script(n)) for n in ("room_join", "room_page")}
    users = ["a", "Z", "é", "ü", "日本", "zz", "\U0001f600", "a~"]
    for i, uid in enumerate(users):
        args = ["n1", f"c{i}", uid, "doc", "1", orjson.dumps({"i": i}).decode(), stamp(1.0), 0, TTL]
        assert r.call("EVALSHA", sha["room_join"], 0, *args)[0] == 1
    want = {uid: Member("offline", {"i": i}, 1) for i, uid in enumerate(users)}
    after: str | None = None
    pages = []
    while True:
        reply = r.call("EVALSHA", sha["room_page"], 0, "doc", 3, after or "")
        page = page_of(want, 3, after)
        assert int(reply[0]) == len(users) and reply[2::4] == list(page.members)
        assert [orjson.loads(m) for m in reply[5::4]] == [
            dict(m.metadata) for m in page.members.values()
        ]
        pages.append(reply[2::4])
        after = reply[1] or None
        assert after == page.next
        if after is None:
            break
    assert [u for p in pages for u in p] == sorted(users)
