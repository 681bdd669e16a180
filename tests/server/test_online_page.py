"""GET /presence/online: every present user once, paged in userId order, behind the same
token as the rest of /presence: the resync of a webhook receiver."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.core.model import PresenceModel, UserView
from presence.hub import LocalHub, online_page_of
from tests.server.test_rooms_protocol import json_body
from tests.support.harness import Harness


def pages(h: Harness, limit: int, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    out, cursor = [], None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        answer = h.http("/presence/online" + query, headers)
        assert answer.status == 200, answer.body
        body = json_body(answer)
        out.append(body)
        cursor = body["next"]
        if cursor is None:
            return out


def test_pages_every_present_user_once_in_order() -> None:
    h = Harness(offline_grace=10.0)
    users = ["zoe", "alice", "bob", "ürsula", "online", "carol"]
    clients = {u: h.user(quote(u)) for u in users}
    clients["carol"].send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    clients["bob"].send({"type": "DISCONNECT"})  # offline at once: not listed
    h.flush()
    clients["zoe"].drop()  # within the grace: still present, listed
    h.flush()
    listed = pages(h, 2)
    assert [len(p["users"]) for p in listed] == [2, 2, 1]
    order = [u for p in listed for u in p["users"]]
    assert order == sorted(["zoe", "alice", "ürsula", "online", "carol"])
    everyone = {u: v for p in listed for u, v in p["users"].items()}
    assert everyone["carol"] == {
        "status": "busy",
        "metadata": {},
        "lastSeen": None,
        "connections": 1,
    }
    assert everyone["zoe"]["connections"] == 0 and everyone["zoe"]["status"] == "online"
    (one,) = pages(h, 1000)
    assert list(one["users"]) == order and one["next"] is None
    # A user called "online" is still reached by name with ?userIds=.
    answer = json_body(h.http("/presence?userIds=online"))
    assert answer["users"]["online"]["status"] == "online"


def test_defaults_and_bad_queries() -> None:
    h = Harness()
    for i in range(120):
        h.user(f"u{i:03d}")
    body = json_body(h.http("/presence/online"))
    assert len(body["users"]) == 100 and body["next"] is not None  # the default limit
    cursor = base64.urlsafe_b64decode(body["next"] + "==").decode()
    assert cursor == "u099"
    bad_cursor = base64.urlsafe_b64encode(b"has space").decode()
    for query, code in [
        ("?limit=0", "INVALID_LIMIT"),
        ("?limit=1001", "INVALID_LIMIT"),
        ("?limit=1&limit=2", "INVALID_LIMIT"),
        ("?cursor=%%%", "INVALID_CURSOR"),
        (f"?cursor={bad_cursor}", "INVALID_CURSOR"),
    ]:
        answer = h.http("/presence/online" + query)
        assert (answer.status, json_body(answer)["error"]) == (400, code), query


def test_the_api_token_guards_it() -> None:
    token = b"t" * 32
    h = Harness(api_token=token)
    h.user("alice")
    assert h.http("/presence/online").status == 401
    (page,) = pages(h, 10, {"Authorization": "Bearer " + token.decode()})
    assert list(page["users"]) == ["alice"]


@settings(max_examples=100, deadline=None)
@given(
    st.sets(st.text(min_size=1, max_size=4), max_size=30),
    st.integers(min_value=1, max_value=7),
)
def test_paging_sees_each_user_once_in_utf8_byte_order(users: set[str], limit: int) -> None:
    """Code point order is UTF-8 byte order (the order Redis sorts in, for the cluster)."""
    view = UserView("online", {}, None, 1)
    seen: list[str] = []
    after = None
    while True:
        page = online_page_of(lambda _: view, users, limit, after)
        assert len(page.users) <= limit
        seen += page.users
        if page.next is None:
            break
        after = page.next
    assert seen == sorted(users, key=lambda u: u.encode("utf-8", "surrogatepass"))


def test_the_local_hub_answers_at_once() -> None:
    hub = LocalHub(PresenceModel())
    answered: list[Any] = []
    hub.online_page(10, None).addCallback(answered.append)
    assert answered[0].users == {} and answered[0].next is None
