"""Random sequences of connect / update / close / time passing keep the model consistent
with a reference that recomputes every user's visible state from scratch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core.model import PresenceModel, UserView
from tests.support.peers import FakePeer

USERS = ["u0", "u1", "u2"]
GRACE = 5.0


@dataclass
class RefConn:
    user: str
    status: str = "online"
    metadata: dict[str, Any] = field(default_factory=dict)
    seq: int = 0


class Reference:
    """The presence rules, written as plainly as possible."""

    def __init__(self) -> None:
        self.conns: dict[str, RefConn] = {}
        self.grace: dict[str, tuple[float, float, UserView]] = {}  # deadline, ended, view
        self.last_seen: dict[str, float] = {}
        self.seq = 0

    def view(self, user: str, now: float) -> UserView:
        mine = [c for c in self.conns.values() if c.user == user]
        if mine:
            statuses = {c.status for c in mine}
            status = "busy" if "busy" in statuses else "online" if "online" in statuses else "away"
            newest = max(mine, key=lambda c: c.seq)
            return UserView(status, newest.metadata if newest.seq else {}, None, len(mine))
        if user in self.grace:
            deadline, ended, view = self.grace[user]
            if deadline > now:
                return UserView(view.status, view.metadata, None, 0)
            return UserView("offline", {}, ended, 0)
        return UserView("offline", {}, self.last_seen.get(user), 0)

    def close(self, conn_id: str, now: float, clean: bool) -> None:
        user = self.conns[conn_id].user
        before = self.view(user, now)
        del self.conns[conn_id]
        if any(c.user == user for c in self.conns.values()):
            return
        if clean:
            self.grace.pop(user, None)
            self.last_seen[user] = now
        else:
            self.grace[user] = (now + GRACE, now, before)

    def settle(self, now: float) -> None:
        for user, (deadline, ended, _) in list(self.grace.items()):
            if deadline <= now:
                del self.grace[user]
                self.last_seen[user] = ended

    def open(self, conn_id: str, user: str) -> None:
        self.grace.pop(user, None)
        self.conns[conn_id] = RefConn(user)


operation = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(USERS)),
    st.tuples(
        st.just("update"),
        st.integers(0, 10),
        st.sampled_from(["online", "away", "busy"]),
        st.one_of(st.none(), st.fixed_dictionaries({"k": st.integers(0, 2)})),
    ),
    st.tuples(st.just("close"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("wait"), st.floats(0, 8, allow_nan=False)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_model_matches_reference(ops: list[tuple[Any, ...]]) -> None:
    model = PresenceModel(offline_grace=GRACE)
    ref = Reference()
    watcher_peer = FakePeer()
    watcher, _ = model.open("watcher", "watcher", watcher_peer, now=0)
    model.subscribe(watcher, USERS)
    told: dict[str, list[UserView]] = {u: [] for u in USERS}
    seen: dict[str, list[UserView]] = {u: [model.view(u)] for u in USERS}
    conns: dict[str, Any] = {}
    now = 0.0
    counter = 0

    for op in ops:
        changes = model.expire(now)
        ref.settle(now)
        if op[0] == "open":
            counter += 1
            conn_id = f"c{counter}"
            conn, more = model.open(conn_id, op[1], FakePeer(), now)
            conns[conn_id] = conn
            ref.open(conn_id, op[1])
            changes += more
        elif op[0] == "update" and conns:
            conn_id = sorted(conns)[op[1] % len(conns)]
            changes += model.update(conns[conn_id], op[2], op[3], now)
            ref_conn = ref.conns[conn_id]
            ref_conn.status = op[2]
            if op[3] is not None:
                ref.seq += 1
                ref_conn.metadata, ref_conn.seq = op[3], ref.seq
        elif op[0] == "close" and conns:
            conn_id = sorted(conns)[op[1] % len(conns)]
            changes += model.close(conns.pop(conn_id), now, clean=op[2])
            ref.close(conn_id, now, clean=op[2])
        elif op[0] == "wait":
            now += op[1]
            changes += model.expire(now)
            ref.settle(now)

        for change in changes:
            assert change.watchers == (watcher_peer,)
            told[change.user_id].append(change.view)
        for user in USERS:
            expected = ref.view(user, now)
            actual = model.view(user)
            assert actual == expected, (user, now)
            if not expected.looks_like(seen[user][-1]):
                seen[user].append(expected)

    # The watcher was told every visible change of every user, in order, exactly once.
    for user in USERS:
        assert [(v.status, v.metadata, v.last_seen) for v in told[user]] == [
            (v.status, v.metadata, v.last_seen) for v in seen[user][1:]
        ]
    assert model.connection_count == len(conns) + 1
