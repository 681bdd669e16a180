"""Rooms over the real protocol, in memory: JOIN/ROOM_UPDATE/LEAVE, the diffs, errors,
the grace, batching on the clock, GET /rooms, and the watch/rooms grants of a token."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt

from presence.core.auth import verifier_from_secret
from tests.support.harness import T0, Client, Harness

SECRET = b"k" * 40
ORIGIN = ("https://app.example.com",)
HEADERS = {"Origin": ORIGIN[0]}


def join(client: Client, room: str, metadata: dict[str, Any] | None = None) -> None:
    payload: dict[str, Any] = {"room": room}
    if metadata is not None:
        payload["metadata"] = metadata
    client.send({"type": "JOIN", "payload": payload})


def member(status: str = "online", metadata: Any = None, connections: int = 1) -> Any:
    return {"status": status, "metadata": metadata or {}, "connections": connections}


def json_body(client: Client) -> Any:
    """The JSON body of an HTTP answer, chunked or not."""
    body = client.body
    if b"transfer-encoding: chunked" in client.response_headers.lower():
        data, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            data, rest = data + rest[:n], rest[n + 2 :]
        body = data
    return json.loads(body)


def connected(h: Harness, user_id: str) -> Client:
    client = h.user(user_id)
    assert client.read_message()["type"] == "CONNECT"
    return client


def test_two_users_in_one_room() -> None:
    h = Harness()
    alice, bob = connected(h, "alice"), connected(h, "bob")
    join(alice, "doc:42", {"cursor": [1, 2]})
    state = alice.read_message()
    assert state["type"] == "ROOM_STATE" and state["room"] == "doc:42"
    assert state["members"] == {"alice": member(metadata={"cursor": [1, 2]})}
    assert state["count"] == 1 and state["complete"] is True and state["timestamp"]
    join(bob, "doc:42")
    assert bob.read_message()["members"] == {
        "alice": member(metadata={"cursor": [1, 2]}),
        "bob": member(),
    }
    assert bob.read_messages() == []  # no diff of its own join
    diff = alice.read_message()
    assert diff["type"] == "ROOM_DIFF" and diff["joins"] == {"bob": member()}
    assert diff["leaves"] == {} and diff["updates"] == {} and diff["count"] == 2
    bob.send({"type": "ROOM_UPDATE", "payload": {"room": "doc:42", "metadata": {"c": 3}}})
    for client in (alice, bob):  # the changer's own connection included
        assert client.read_message()["updates"] == {"bob": member(metadata={"c": 3})}
    bob.send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    for client in (alice, bob):
        assert client.read_message()["updates"] == {"bob": member("busy", {"c": 3})}
    bob.send({"type": "LEAVE", "payload": {"room": "doc:42"}})
    diff = alice.read_message()
    assert list(diff["leaves"]) == ["bob"] and diff["leaves"]["bob"]["lastSeen"]
    assert diff["count"] == 1
    bob.send({"type": "PRESENCE_UPDATE", "payload": {"status": "away"}})
    bob.send({"type": "LEAVE", "payload": {"room": "doc:42"}})  # not in it: nothing
    h.settle()
    assert bob.read_messages() == [] and alice.read_messages() == []
    assert h.sample("presence_rooms_current") == 1
    assert h.sample("presence_room_members_current") == 1
    assert h.sample("presence_room_diffs_sent_total") == 6
    assert h.sample("ws_messages_total", type="JOIN") == 2


def test_errors_leave_the_connection_open() -> None:
    h = Harness(max_rooms_per_connection=1, max_room_members=1)
    alice, bob = connected(h, "alice"), connected(h, "bob")
    bad = [
        ({"type": "JOIN", "payload": {"room": "has space"}}, "INVALID_ROOM"),
        ({"type": "JOIN", "payload": {"room": ""}}, "INVALID_ROOM"),
        ({"type": "JOIN", "payload": {"room": "x" * 129}}, "INVALID_ROOM"),
        (
            {"type": "JOIN", "payload": {"room": "r", "metadata": {"b": "x" * 5000}}},
            "METADATA_TOO_LARGE",
        ),
        ({"type": "ROOM_UPDATE", "payload": {"room": "r", "metadata": {}}}, "NOT_IN_ROOM"),
        ({"type": "ROOM_UPDATE", "payload": {"room": "r"}}, "INVALID_PAYLOAD"),
        ({"type": "LEAVE", "payload": {}}, "INVALID_ROOM"),
    ]
    for message, code in bad:
        alice.send(message)
        error = alice.read_message()
        assert (error["type"], error["code"]) == ("ERROR", code), message
    join(alice, "r")
    assert alice.read_message()["type"] == "ROOM_STATE"
    join(alice, "r2")
    assert alice.read_message()["code"] == "TOO_MANY_ROOMS"
    join(bob, "r")
    assert bob.read_message()["code"] == "ROOM_FULL"
    assert h.hub.room_figures.membership_count == 1
    alice.send({"type": "HEARTBEAT"})
    assert alice.read_message()["type"] == "HEARTBEAT_ACK"


def test_an_abrupt_drop_leaves_after_the_grace_and_a_rejoin_is_never_seen_leaving() -> None:
    h = Harness(transport="pumped", offline_grace=10.0, heartbeat_timeout=600.0)
    alice, bob = connected(h, "alice"), connected(h, "bob")
    join(alice, "r")
    join(bob, "r")
    h.flush()
    alice.read_messages()
    bob.drop()
    h.flush()
    assert alice.read_message()["updates"] == {"bob": member(connections=0)}
    h.advance(9.0)
    again = connected(h, "bob")
    join(again, "r")
    h.flush()
    assert alice.read_message()["updates"] == {"bob": member()}
    h.advance(5.0)
    assert alice.read_messages() == []  # never a leave
    again.send({"type": "DISCONNECT"})
    h.flush()
    assert list(alice.read_message()["leaves"]) == ["bob"]  # a goodbye: at once


def test_the_grace_runs_out() -> None:
    h = Harness(transport="pumped", offline_grace=10.0, heartbeat_timeout=600.0)
    alice, bob = connected(h, "alice"), connected(h, "bob")
    join(alice, "r")
    join(bob, "r")
    h.flush()
    alice.read_messages()
    bob.drop()
    h.flush()
    alice.read_messages()
    h.advance(9.75)
    assert alice.read_messages() == []
    h.advance(0.5)
    kinds = [(m["type"], sorted(m.get("leaves", {}))) for m in alice.read_messages()]
    assert ("ROOM_DIFF", ["bob"]) in kinds


def test_a_large_room_is_told_once_per_interval_on_the_clock() -> None:
    h = Harness(room_batch_threshold=2, room_batch_interval=1.0, heartbeat_timeout=600.0)
    watcher = connected(h, "watcher")
    join(watcher, "big")
    others = [connected(h, f"u{i}") for i in range(4)]
    for client in others:
        join(client, "big")
    watcher.read_messages()
    h.advance(1.0)
    diffs = [m for m in watcher.read_messages() if m["type"] == "ROOM_DIFF"]
    assert len(diffs) <= 2 and diffs[-1]["count"] == 5
    joined = set().union(*(d["joins"] for d in diffs))
    assert {"u2", "u3"} <= joined
    others[0].send({"type": "LEAVE", "payload": {"room": "big"}})
    join(others[0], "big")  # left and came back the same inside the window: in none
    others[1].send({"type": "LEAVE", "payload": {"room": "big"}})
    assert watcher.read_messages() == []
    h.advance(1.0)
    (diff,) = watcher.read_messages()
    assert (diff["joins"], diff["updates"], list(diff["leaves"])) == ({}, {}, ["u1"])
    assert diff["count"] == 4


def test_room_state_past_the_list_limit_and_paging_over_http() -> None:
    h = Harness(room_list_limit=3, room_batch_threshold=1000)
    clients = [connected(h, f"user{i:02d}") for i in range(5)]
    for client in clients:
        join(client, "hall")
    state = clients[-1].read_message()
    assert (len(state["members"]), state["count"], state["complete"]) == (3, 5, False)
    diff = clients[0].of_type("ROOM_DIFF")[-1]
    assert (diff["joins"], diff["leaves"], diff["updates"], diff["count"]) == ({}, {}, {}, 5)
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        answer = h.http("/rooms/hall" + query)
        assert answer.status == 200
        body = json_body(answer)
        assert body["room"] == "hall" and body["count"] == 5
        seen += list(body["members"])
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [f"user{i:02d}" for i in range(5)]
    assert json_body(h.http("/rooms/empty")) == {
        "room": "empty",
        "count": 0,
        "members": {},
        "next": None,
    }
    bad_cursor = base64.urlsafe_b64encode(b"has space").decode()
    for path, code in [
        ("/rooms/hall?limit=0", "INVALID_LIMIT"),
        ("/rooms/hall?limit=1001", "INVALID_LIMIT"),
        ("/rooms/hall?limit=x", "INVALID_LIMIT"),
        ("/rooms/hall?cursor=%%%", "INVALID_CURSOR"),
        (f"/rooms/hall?cursor={bad_cursor}", "INVALID_CURSOR"),
        ("/rooms/has%20space", "INVALID_ROOM"),
    ]:
        answer = h.http(path)
        assert (answer.status, json_body(answer)["error"]) == (400, code), path


def token(sub: str, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": T0 + 600, **claims}, SECRET, algorithm="HS256")


def jwt_user(h: Harness, user_id: str, **claims: Any) -> Client:
    client = h.connect(f"/?userId={user_id}&token={token(user_id, **claims)}", HEADERS)
    assert client.read_message()["type"] == "CONNECT"
    return client


def test_grants_decide_who_may_be_watched_and_which_rooms_joined() -> None:
    h = Harness(verifier=verifier_from_secret(SECRET), allowed_origins=ORIGIN, auth="jwt")
    plain = jwt_user(h, "plain")
    plain.send({"type": "SUBSCRIBE", "payload": {"userIds": ["plain"]}})  # always themself
    assert plain.read_message()["type"] == "PRESENCE_STATE"
    plain.send({"type": "SUBSCRIBE", "payload": {"userIds": ["plain", "bob"]}})
    error = plain.read_message()
    assert (error["code"], "'bob'" in error["message"]) == ("FORBIDDEN", True)
    assert plain.ws.conn is not None and plain.ws.conn.watching == {"plain"}
    join(plain, "doc:1")
    assert plain.read_message()["code"] == "FORBIDDEN"
    agent = jwt_user(h, "agent", watch=["team-*", "bob"], rooms=["doc:*"])
    agent.send({"type": "SUBSCRIBE", "payload": {"userIds": ["team-7", "bob"]}})
    assert agent.read_message()["type"] == "PRESENCE_STATE"
    join(agent, "doc:1")
    assert agent.read_message()["type"] == "ROOM_STATE"
    join(agent, "chat:1")
    assert agent.read_message()["code"] == "FORBIDDEN"


def test_a_narrower_refresh_ends_what_it_no_longer_grants() -> None:
    h = Harness(verifier=verifier_from_secret(SECRET), allowed_origins=ORIGIN, auth="jwt")
    bob = jwt_user(h, "bob", rooms=["*"])
    join(bob, "doc:1")
    bob.read_messages()
    agent = jwt_user(h, "agent", watch=["*"], rooms=["*"])
    agent.send({"type": "SUBSCRIBE", "payload": {"userIds": ["bob", "carol", "agent"]}})
    join(agent, "doc:1")
    join(agent, "doc:2")
    agent.read_messages()
    bob.read_messages()
    narrower = token("agent", watch=["carol"], rooms=["doc:2"])
    agent.send({"type": "REFRESH_TOKEN", "payload": {"token": narrower}})
    (error,) = agent.read_messages()
    assert error["code"] == "FORBIDDEN"
    assert "bob" in error["message"] and "doc:1" in error["message"]
    assert agent.ws.conn is not None and agent.ws.conn.watching == {"carol", "agent"}
    assert set(agent.ws.conn.rooms or ()) == {"doc:2"}
    assert list(bob.read_message()["leaves"]) == ["agent"]
    bob.send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    assert agent.read_messages() == []  # nothing more of bob, nor of doc:1
    wider = token("agent", watch=["*"], rooms=["*"])
    agent.send({"type": "REFRESH_TOKEN", "payload": {"token": wider}})
    agent.send({"type": "SUBSCRIBE", "payload": {"userIds": ["bob"]}})
    assert agent.read_message()["type"] == "PRESENCE_STATE"
