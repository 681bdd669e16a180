"""The Lua scripts keep the pure model's presence: hypothesis tells both the same story and,
after every step, they must show the same statuses, metadata, connection counts and
lastSeen, and each user's published diffs must be the model's changes. Metadata is what its
JSON encodes: the same object with its keys in another order is no change. Redis is real; time
is passed in as ``now`` (nothing sleeps, nothing reads a clock).

The stories: opens, updates and closes of two users' connections on several nodes, clean
or not; time passing and offline graces running out (expire.lua vs ``model.expire``);
a node dying (another node's sweep.lua ends its connections uncleanly, from when it was
last seen; the model closes them uncleanly at that time); a node re-registering after an
outage (resync.lua with its live connections and the ones that ended meanwhile; the model
closes those at their time, clean or not).

A step is one script, whose diffs must be exactly the model's changes; or a batch: a sweep
or re-registration followed by expire.lua (the model: its closes, then ``expire(now)``).
A batch settles each user once, so it publishes a user's net change, if any, where the
model may report several. And when a batch ends all of a user's connections into the
grace, the grace keeps showing what watchers saw before the batch, not the last
connection's own view the model passed through on its way (see ``keep_seen_in_grace``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from presence.cluster.store import (
    encode_metadata,
    load_script,
    parse_message,
    parse_view,
    stamp,
)
from presence.core import wire
from presence.core.model import OFFLINE, Change, PresenceModel, UserView
from tests.support.redis_fixture import REDIS_SERVER, RedisServer, Resp, needs_redis

pytestmark = needs_redis

STATUSES = ("online", "away", "busy")
USERS = ("u", "v")
TTL = 3600
NODE_TTL_MS = 3_600_000  # liveness keys never run out by themselves: a node dies when told
SCRIPTS = ("open", "update", "close", "snapshot", "heartbeat", "sweep", "expire", "resync")

Seen = tuple[str, dict[str, Any], float | None, int]


class Nobody:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: wire.Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


def seen(view: UserView) -> Seen:
    return (view.status, dict(view.metadata), view.last_seen, view.connections)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Resp, Resp]]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    r, sub = Resp(server.port), Resp(server.port)
    for uid in USERS:
        assert sub.call("SUBSCRIBE", f"presence:ch:{uid}")[0] == "subscribe"
    yield r, sub
    r.close()
    sub.close()
    server.stop()


class Twin:
    """The model and Redis, told the same story; every step checks they still agree."""

    def __init__(self, redis: tuple[Resp, Resp], grace: float) -> None:
        self.r, self.sub = redis
        self.r.call("FLUSHALL")
        self.published()  # nothing left over from an earlier example
        self.sha = {n: self.r.call("SCRIPT", "LOAD", load_script(n)) for n in SCRIPTS}
        self.grace = grace
        self.model = PresenceModel(offline_grace=grace)
        self.now = 100.0
        self.versions = dict.fromkeys(USERS, 0)
        self.nodes: dict[str, float] = {}  # alive node -> when it was last seen (heartbeat)
        self.conns: dict[str, tuple[str, str]] = {}  # open connection -> (node, user)
        self.serial = 0
        self.node_serial = 0
        self.left: str | None = None  # the user whose connection closed last
        self.add_node()
        self.add_node()

    # -- the two sides ---------------------------------------------------------------------

    def lua(self, name: str, *args: object) -> Any:
        return self.r.call("EVALSHA", self.sha[name], 0, *args)

    def published(self) -> dict[str, list[tuple[int, UserView]]]:
        """What was published on the users' channels since the last call."""
        out: dict[str, list[tuple[int, UserView]]] = {uid: [] for uid in USERS}
        self.sub.send("PING")
        while True:
            reply: Any = self.sub.read()
            if reply[0] == "pong":
                return out
            assert reply[0] == "message"
            out[reply[1].removeprefix("presence:ch:")].append(parse_message(reply[2]))

    def check(
        self, before: dict[str, UserView], changes: list[Change], batch: bool = False
    ) -> None:
        """Both sides agree after a step; ``changes`` are the model's for it. One script
        publishes each of its changes; a batch (a sweep or re-registration) publishes a user's
        net change once, if what watchers see changed at all."""
        want: dict[str, list[Seen]] = {uid: [] for uid in USERS}
        if batch:
            for uid in {change.user_id for change in changes}:
                view = self.model.view(uid)
                if not view.looks_like(before[uid]):
                    want[uid] = [seen(view)]
        else:
            for change in changes:
                want[change.user_id].append(seen(change.view))
        got = self.published()
        for uid, diffs in got.items():
            versions = [version for version, _ in diffs]
            assert versions == list(
                range(self.versions[uid] + 1, self.versions[uid] + 1 + len(diffs))
            )
            self.versions[uid] += len(diffs)
        assert {uid: [seen(view) for _, view in diffs] for uid, diffs in got.items()} == want
        snapshot = self.lua("snapshot", *USERS)
        for i, uid in enumerate(USERS):
            version, status, count, last_seen, metadata = snapshot[i * 5 : i * 5 + 5]
            assert int(version) == self.versions[uid]
            assert (uid, seen(parse_view(status, count, last_seen, metadata))) == (
                uid,
                seen(self.model.view(uid)),
            )
        assert self.r.call("SCARD", "presence:present") == self.model.online_user_count
        assert self.r.call("ZRANGE", "presence:online", 0, -1) == sorted(self.model.present())

    def keep_seen_in_grace(self, before: dict[str, UserView]) -> None:
        """A batch that ended all of a user's connections and left them in the grace: the
        model went through its closes one at a time, and what it keeps for the grace is the
        last connection's own view; watchers elsewhere saw none of those steps, and the
        scripts keep showing them what they saw before the batch (``before``, with no
        connections). Hand the model the same view, so the rest of the story agrees."""
        for uid in USERS:
            view = self.model.view(uid)
            in_grace = view.status != OFFLINE and self.model.connections_of(uid) == 0
            if in_grace and not view.looks_like(before[uid]):
                event("batch: the grace keeps what watchers saw before it")
                user = self.model._users[uid]
                user.view = UserView(before[uid].status, before[uid].metadata, None, 0)

    def views(self) -> dict[str, UserView]:
        return {uid: self.model.view(uid) for uid in USERS}

    def pick_node(self, i: int, holding: bool = False) -> str:
        """The i-th node; with ``holding``, of those that hold connections if any do."""
        nodes = sorted(self.nodes)
        if holding:
            nodes = sorted({node for node, _ in self.conns.values()}) or nodes
        return nodes[i % len(nodes)]

    def pick_conn(self, i: int) -> str | None:
        conns = list(self.conns)
        return conns[i % len(conns)] if conns else None

    def add_node(self) -> str:
        self.node_serial += 1
        node = f"n{self.node_serial}"
        fresh = not self.nodes  # the first node finds Redis empty
        args = (node, stamp(self.now), TTL, self.grace, NODE_TTL_MS, 0)
        assert self.lua("resync", *args) == [0, int(fresh)]  # as a node starts
        self.nodes[node] = self.now
        return node

    # -- the story -------------------------------------------------------------------------

    def wait(self, dt: float) -> None:
        self.now += dt

    def open(self, i: int, uid: str) -> None:
        before = self.views()
        node = self.pick_node(i)
        self.serial += 1
        cid = f"c{self.serial}"
        suppressed = self.model.stats.offline_suppressed
        _, changes = self.model.open(cid, uid, Nobody(), self.now)
        if self.model.stats.offline_suppressed > suppressed:
            event("open: back within the grace")
        count = self.lua("open", node, cid, uid, stamp(self.now), TTL)
        assert count == self.model.connections_of(uid)
        self.conns[cid] = (node, uid)
        self.check(before, changes)

    def reconnect(self, i: int) -> None:
        """The client whose connection closed last comes back (on any node)."""
        if self.left is not None:
            self.open(i, self.left)

    def update(self, i: int, status: str, metadata: dict[str, int] | None) -> None:
        cid = self.pick_conn(i)
        if cid is None:
            return
        before = self.views()
        node, uid = self.conns[cid]
        conn = self.model.connection(cid)
        assert conn is not None
        changes = self.model.update(conn, status, metadata, self.now)
        md = "" if metadata is None else encode_metadata(metadata)
        has = "0" if metadata is None else "1"
        got = self.lua("update", node, cid, uid, status, has, md, stamp(self.now), TTL)
        assert got == (1 if changes else 0)
        self.check(before, changes)

    def close(self, i: int, clean: bool) -> None:
        cid = self.pick_conn(i)
        if cid is None:
            return
        before = self.views()
        node, uid = self.conns.pop(cid)
        self.left = uid
        conn = self.model.connection(cid)
        assert conn is not None
        changes = self.model.close(conn, self.now, clean)
        if not clean and self.model.connections_of(uid) == 0 and self.grace > 0:
            event("close: into the grace")
        args = (node, cid, uid, stamp(self.now), int(clean), self.grace, TTL)
        assert self.lua("close", *args) == (1 if changes else 0)
        self.check(before, changes)

    def expire(self) -> None:
        before = self.views()
        changes = self.model.expire(self.now)
        event(f"expire: {len(changes)} offline")
        assert self.lua("expire", stamp(self.now), TTL, 100) == len(changes)
        self.check(before, changes)

    def beat(self, i: int) -> None:
        node = self.pick_node(i)
        assert self.lua("heartbeat", node, stamp(self.now), NODE_TTL_MS) == 0
        self.nodes[node] = self.now

    def die(self, i: int) -> None:
        """A node dies; a node started in its place sweeps, then expires the graces due."""
        before = self.views()
        node = self.pick_node(i, holding=True)
        last_seen = self.nodes.pop(node)
        self.r.call("DEL", f"presence:alive:{node}")
        sweeper = self.add_node()
        mine = [cid for cid, (n, _) in self.conns.items() if n == node]
        running = "runs on" if last_seen + self.grace > self.now else "is over"
        event(f"die: {min(len(mine), 2)}+ connections, their grace {running}")
        changes: list[Change] = []
        for cid in mine:
            del self.conns[cid]
            conn = self.model.connection(cid)
            assert conn is not None
            changes += self.model.close(conn, last_seen, clean=False)
        changes += self.model.expire(self.now)
        alive, ended, conns, _ = self.lua("sweep", sweeper, stamp(self.now), TTL, self.grace, "")
        assert (alive, ended, conns) == (len(self.nodes), 1, len(mine))
        self.lua("expire", stamp(self.now), TTL, 100)
        self.keep_seen_in_grace(before)
        self.check(before, changes, batch=True)

    def outage(self, i: int, duration: float, fates: list[tuple[str, int, bool]]) -> None:
        """Redis was away from the node for ``duration``: some of its connections ended
        meanwhile (at a time it knows, clean or not), some vanished (a close that never
        reached Redis: the end is unknown), the others live on. It re-registers."""
        before = self.views()
        node = self.pick_node(i, holding=True)
        start = self.now
        self.now += duration
        live: list[tuple[str, str, str, str]] = []
        ended: list[tuple[float, str, str, bool]] = []
        vanished: list[str] = []
        mine = [cid for cid, (n, _) in self.conns.items() if n == node]
        for j, cid in enumerate(mine):
            kind, k, clean = fates[j % len(fates)]
            uid = self.conns[cid][1]
            conn = self.model.connection(cid)
            assert conn is not None
            if kind == "live":
                md = encode_metadata(conn.metadata) if conn.metadata_seq else ""
                live.append((cid, uid, conn.status, md))
                continue
            del self.conns[cid]
            if kind == "ended":
                ended.append((min(start + k * 0.5, self.now), cid, uid, clean))
            else:
                vanished.append(cid)
        event(f"outage: {len(live)} live, {len(ended)} ended, {len(vanished)} vanished")
        ended.sort(key=lambda e: e[0])  # stable: the order they ended in, as the hub keeps it
        changes: list[Change] = []
        for at, cid, _, clean in ended:
            conn = self.model.connection(cid)
            assert conn is not None
            changes += self.model.close(conn, at, clean)
        for cid in vanished:
            conn = self.model.connection(cid)
            assert conn is not None
            changes += self.model.close(conn, self.now, clean=False)
        changes += self.model.expire(self.now)

        def seq(item: tuple[str, str, str, str]) -> int:
            conn = self.model.connection(item[0])
            assert conn is not None
            return conn.metadata_seq

        args: list[object] = [node, stamp(self.now), TTL, self.grace, NODE_TTL_MS, len(live)]
        for item in sorted(live, key=seq):  # as the hub sends them: oldest metadata first
            args.extend(item)
        for at, cid, uid, clean in ended:
            args.extend((cid, uid, stamp(at), int(clean)))
        assert self.lua("resync", *args) == [len(live), 0]
        self.nodes[node] = self.now
        self.lua("expire", stamp(self.now), TTL, 100)
        self.keep_seen_in_grace(before)
        self.check(before, changes, batch=True)

    def run(self, story: tuple[list[Any], list[Any]]) -> None:
        """A few opens to begin with, then the steps."""
        opens, steps = story
        for dt, name, *args in opens + steps:
            self.wait(dt)
            getattr(self, name)(*args)


# -- the strategies --------------------------------------------------------------------------

dt = st.sampled_from((0.0, 0.0, 0.5, 1.0, 2.5))
metadata = st.one_of(
    st.none(), st.dictionaries(st.sampled_from("xy"), st.integers(0, 3), max_size=2)
)
open_ = st.tuples(dt, st.just("open"), st.integers(0, 3), st.sampled_from(USERS))
reconnect = st.tuples(dt, st.just("reconnect"), st.integers(0, 3))
update = st.tuples(dt, st.just("update"), st.integers(0, 7), st.sampled_from(STATUSES), metadata)
clean_close = st.tuples(dt, st.just("close"), st.integers(0, 7), st.just(True))
any_close = st.tuples(dt, st.just("close"), st.integers(0, 7), st.booleans())
expire = st.tuples(st.sampled_from((0.5, 1.0, 2.0, 3.0, 5.0)), st.just("expire"))
beat = st.tuples(dt, st.just("beat"), st.integers(0, 3))
die = st.tuples(dt, st.just("die"), st.integers(0, 3))
# What became of each of the node's connections while Redis was away; when, in half seconds.
fate = st.tuples(
    st.sampled_from(("live", "ended", "ended", "vanished")), st.integers(0, 12), st.booleans()
)
outage = st.tuples(
    dt,
    st.just("outage"),
    st.integers(0, 3),
    st.sampled_from((0.5, 2.0, 6.0)),
    st.lists(fate, min_size=1, max_size=4),
)
grace = st.sampled_from((0.5, 1.0, 2.5, 4.0))


def story(*steps: st.SearchStrategy[Any], size: int = 30) -> st.SearchStrategy[Any]:
    """A few opens, then the steps; a step given twice is drawn twice as often (one_of
    draws each distinct strategy alike, hence the copies)."""
    return st.tuples(
        st.lists(open_, min_size=1, max_size=5),
        st.lists(st.one_of(*(step.map(tuple) for step in steps)), min_size=5, max_size=size),
    )


SETTINGS = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(story=story(open_, update, clean_close, size=25))
@example(story=([(0.0, "open", 0, "u")], [(0.0, "update", 0, "online", {"x": 0, "y": 0}),
         (0.0, "update", 0, "online", {"y": 0, "x": 0})]))  # fmt: skip
def test_lua_aggregate_matches_the_model(redis: tuple[Resp, Resp], story: Any) -> None:
    """Clean closes, no grace: the aggregate, newest metadata, every diff (the same metadata
    with its keys in another order is no change)."""
    opens, steps = story
    Twin(redis, grace=0).run((opens, [(1.0, *step[1:]) for step in steps]))


@SETTINGS
@given(grace=grace, story=story(open_, reconnect, update, any_close, any_close, expire, expire))
@example(grace=1.0, story=([(0.0, "open", 0, "u")], [(0.0, "close", 0, False), (0.5, "expire"),
         (0.5, "expire"), (0.0, "open", 0, "u"), (0.0, "close", 0, False), (0.5, "reconnect", 1),
         (0.0, "close", 0, False), (1.0, "expire")]))  # fmt: skip
def test_lua_grace_matches_the_model(redis: tuple[Resp, Resp], grace: float, story: Any) -> None:
    """Unclean closes keep the user present for the grace; a reconnect within it is never
    seen leaving; once it runs out the offline carries when the presence ended."""
    Twin(redis, grace).run(story)


@SETTINGS
@given(
    grace=grace, story=story(open_, open_, reconnect, update, any_close, expire, beat, beat, die)
)
def test_lua_node_cleanup_matches_the_model(
    redis: tuple[Resp, Resp], grace: float, story: Any
) -> None:
    """A dead node's connections end uncleanly when it was last seen, the grace from then."""
    Twin(redis, grace).run(story)


@SETTINGS
@given(grace=grace, story=story(open_, open_, reconnect, update, any_close, expire, outage))
def test_lua_resync_matches_the_model(redis: tuple[Resp, Resp], grace: float, story: Any) -> None:
    """After an outage the connections that ended meanwhile end at their time, clean or
    not; the ones whose end never reached Redis end now, uncleanly; the rest live on."""
    Twin(redis, grace).run(story)


# Metadata as JSON can spell one value many ways; the scripts compare what it encodes, as the
# model compares its dicts. Integers within a double's precision and no booleans: Python
# holds True == 1 (the model's dicts), JSON does not (the scripts).
json_leaf = st.one_of(
    st.none(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.floats(-1e15, 1e15, allow_nan=False),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=3),
)
json_key = st.text(st.characters(blacklist_categories=("Cs",)), max_size=2)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(json_key, kids, max_size=3),
    max_leaves=8,
)
rich_metadata = st.dictionaries(json_key, json_value, max_size=4)


def respelled(value: Any) -> st.SearchStrategy[Any]:
    """The same value spelled otherwise: objects' keys in another order. (3 and 3.0 are
    one value to the model but two texts to the scripts: the cluster then sends one diff
    too many, never one too few; not generated here.)"""
    if isinstance(value, dict):
        items = [st.tuples(st.just(k), respelled(v)) for k, v in value.items()]
        return st.tuples(*items).flatmap(st.permutations).map(dict)
    if isinstance(value, list):
        return st.tuples(*map(respelled, value)).map(list)
    return st.just(value)


@SETTINGS
@given(first=rich_metadata, data=st.data())
def test_lua_sees_metadata_as_the_model_does(
    redis: tuple[Resp, Resp], first: dict[str, Any], data: st.DataObject
) -> None:
    """A diff is published exactly when the model sees the metadata change, however it is
    spelled; what watchers are sent and shown decodes to the model's metadata."""
    second = data.draw(st.one_of(respelled(first), rich_metadata), label="second")
    event("the same metadata" if second == first else "other metadata")
    Twin(redis, grace=0).run(
        (
            [(0.0, "open", 0, "u"), (0.0, "open", 1, "u")],
            [(0.0, "update", 0, "online", first), (0.0, "update", 0, "online", second),
             (0.0, "update", 1, "away", None), (0.0, "update", 0, "online", first)],
        )
    )  # fmt: skip
