"""Rooms against a from-scratch reference: for random joins, updates, leaves, clean and
abrupt closes and time passing, the members equal what the reference computes, and an
observer that applies every ROOM_DIFF it gets to its ROOM_STATE holds exactly them."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core import wire
from presence.core.model import Connection
from presence.core.rooms import Member, RoomDiff, Rooms

GRACE = 5.0
ROOMS = ("r1", "r2")
USERS = ("u1", "u2", "u3")


class Peer:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: wire.Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


class Reference:
    """Every connection's joins as plain records; members computed from scratch."""

    def __init__(self) -> None:
        self.joined: dict[tuple[str, str], dict[str, Any]] = {}  # (conn, room) -> record
        self.seq = 0

    def members(self, room: str, now: float, status: dict[str, str]) -> dict[str, Member]:
        users: dict[str, list[dict[str, Any]]] = {}
        for (_, r), rec in self.joined.items():
            if r == room and (rec["ended"] is None or rec["ended"] + GRACE > now):
                users.setdefault(rec["user"], []).append(rec)
        out = {}
        for user, recs in users.items():
            newest = max((r for r in recs if r["seq"]), key=lambda r: r["seq"], default=None)
            live = sum(1 for r in recs if r["ended"] is None)
            out[user] = Member(status.get(user, "online"), newest["md"] if newest else {}, live)
        return out


op = st.one_of(
    st.tuples(
        st.just("join"),
        st.integers(0, 5),
        st.sampled_from(ROOMS),
        st.one_of(st.none(), st.dictionaries(st.just("c"), st.integers(0, 2), min_size=1)),
    ),
    st.tuples(st.just("update"), st.integers(0, 5), st.sampled_from(ROOMS), st.integers(0, 2)),
    st.tuples(st.just("leave"), st.integers(0, 5), st.sampled_from(ROOMS)),
    st.tuples(st.just("close"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("status"), st.sampled_from(USERS), st.sampled_from(("online", "busy"))),
    st.tuples(st.just("wait"), st.floats(0.5, 4.0)),
)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=40))
def test_members_and_an_observers_replica_match_the_reference(ops: list[Any]) -> None:
    status: dict[str, str] = {}
    rooms = Rooms(lambda u: status.get(u, "online"), offline_grace=GRACE, batch_threshold=1000)
    ref = Reference()
    now = 0.0
    observers = {r: Connection(f"obs-{r}", f"obs-{r}", Peer(), 0) for r in ROOMS}
    replica: dict[str, dict[str, Member]] = {}
    for r, obs in observers.items():
        state, _ = rooms.join(obs, r, None, now)
        replica[r] = dict(state.members)
        ref.joined[(obs.id, r)] = {"user": obs.user_id, "md": {}, "seq": 0, "ended": None}
    conns: dict[int, Connection] = {}
    serial = itertools.count()

    def conn(i: int) -> Connection:
        if i not in conns:  # a fresh id: a closed connection's records may linger
            conns[i] = Connection(f"c{i}.{next(serial)}", USERS[i % 3], Peer(), now)
        return conns[i]

    def apply(diffs: list[RoomDiff]) -> None:
        for diff in diffs:
            if observers[diff.room].peer not in diff.recipients:
                continue
            members = replica[diff.room]
            assert not set(diff.joins) & set(diff.leaves) and not set(diff.joins) & set(
                diff.updates
            )
            for user in diff.leaves:
                members.pop(user)
            for user, member in {**diff.joins, **diff.updates}.items():
                members[user] = member
            assert diff.count == len(members)

    for item in ops:
        kind = item[0]
        if kind == "join":
            _, i, room, md = item
            c = conn(i)
            key = (c.id, room)
            for (cid, r), rec in list(ref.joined.items()):  # back within the grace
                if r == room and rec["user"] == c.user_id and rec["ended"] is not None:
                    del ref.joined[(cid, r)]
            rec = ref.joined.setdefault(key, {"user": c.user_id, "md": {}, "seq": 0, "ended": None})
            if md is not None:
                ref.seq += 1
                rec["md"], rec["seq"] = md, ref.seq
            state, diffs = rooms.join(c, room, md, now)
            assert dict(state.members) == ref.members(room, now, status)
            apply(diffs)
        elif kind == "update":
            _, i, room, v = item
            c = conn(i)
            if (c.id, room) in ref.joined:
                ref.seq += 1
                ref.joined[(c.id, room)].update(md={"c": v}, seq=ref.seq)
                apply(rooms.update(c, room, {"c": v}, now))
        elif kind == "leave":
            _, i, room = item
            c = conn(i)
            ref.joined.pop((c.id, room), None)
            apply(rooms.leave(c, room, now))
        elif kind == "close":
            _, i, clean = item
            c = conns.pop(i, None)
            if c is None:
                continue
            for key in [k for k in ref.joined if k[0] == c.id]:
                if clean:
                    del ref.joined[key]
                else:
                    ref.joined[key]["ended"] = now
            apply(rooms.closed(c, now, clean))
        elif kind == "status":
            _, user, value = item
            if status.get(user, "online") != value:
                status[user] = value
                apply(rooms.user_changed(user, now))
        else:
            now += item[1]
        apply(rooms.expire(now))
        for room in ROOMS:
            expected = ref.members(room, now, status)
            assert rooms.members(room) == expected
            assert replica[room] == expected


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=40), list_limit=st.integers(1, 3))
def test_the_kept_listing_is_what_the_room_would_list_now(ops: list[Any], list_limit: int) -> None:
    """ROOM_STATE's listing is kept between changes (a join storm past the list limit
    leaves it as it is): after any change it equals a listing made from scratch, and its
    encoding is the listed members'."""
    status: dict[str, str] = {}
    rooms = Rooms(lambda u: status.get(u, "online"), offline_grace=GRACE, list_limit=list_limit)
    conns: dict[int, Connection] = {}
    serial = itertools.count()
    now = 0.0

    def conn(i: int) -> Connection:
        if i not in conns:
            conns[i] = Connection(f"c{i}.{next(serial)}", USERS[i % 3], Peer(), now)
        return conns[i]

    for item in ops:
        kind = item[0]
        if kind == "join":
            rooms.join(conn(item[1]), item[2], item[3], now)
        elif kind == "update":
            c = conn(item[1])
            if c.rooms and item[2] in c.rooms:
                rooms.update(c, item[2], {"c": item[3]}, now)
        elif kind == "leave":
            rooms.leave(conn(item[1]), item[2], now)
        elif kind == "close":
            c = conns.pop(item[1], None)
            if c is not None:
                rooms.closed(c, now, item[2])
        elif kind == "status":
            status[item[1]] = item[2]
            rooms.user_changed(item[1], now)
        else:
            now += item[1]
        rooms.expire(now)
        for name in ROOMS:
            kept = rooms.state(name)
            room = rooms._rooms.get(name)
            if room is not None:
                room.listed = None  # what a listing made now says
            fresh = rooms.state(name)
            assert kept == fresh
            assert len(kept.members) == min(list_limit, kept.count)
            if kept.members_json is not None:
                assert wire.encode({"m": kept.members_json}) == wire.encode(
                    {
                        "m": {
                            u: wire.member_object(m.status, m.metadata, m.connections)
                            for u, m in kept.members.items()
                        }
                    }
                )
