"""GET /presence/online (paging, order, errors, grace, the access rule), GET /stats and
GET /dashboard, on the in-memory daemon."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import quote

import pytest

from tests.server.test_rooms_protocol import json_body
from tests.support.harness import Client, Harness

API = b"a" * 32
BEARER = {"Authorization": f"Bearer {API.decode()}"}


def header(client: Client, name: str) -> str:
    for line in client.response_headers.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name} header in {client.response_headers!r}")


def connected(h: Harness, user_id: str) -> Client:
    client = h.user(quote(user_id))
    assert client.read_message()["type"] == "CONNECT"
    return client


def online(h: Harness, query: str = "", headers: dict[str, str] | None = None) -> Any:
    answer = h.http("/presence/online" + query, headers)
    assert answer.status == 200, answer.body
    return json_body(answer)


def walk(h: Harness, limit: int, prefix: str = "") -> list[str]:
    """Every page, cursor after cursor."""
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        query = f"?limit={limit}" + (f"&prefix={prefix}" if prefix else "")
        body = online(h, query + (f"&cursor={cursor}" if cursor else ""))
        assert len(body["users"]) <= limit
        seen += list(body["users"])
        cursor = body["next"]
        if cursor is None:
            return seen
    raise AssertionError("the pages never ended")


def test_pages_through_every_present_user_once_in_user_id_order() -> None:
    h = Harness()
    names = ["zoe", "bob", "alice", "bo", "émile", "Bob", "al"]
    clients = {name: connected(h, name) for name in names}
    connected(h, "bob")  # a second tab: still one entry
    clients["alice"].send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    clients["zoe"].send(
        {"type": "PRESENCE_UPDATE", "payload": {"status": "away", "metadata": {"a": "<b>"}}}
    )
    want = sorted(names)
    assert want == ["Bob", "al", "alice", "bo", "bob", "zoe", "émile"]  # code point order
    for limit in (1, 2, 3, 7, 100):
        assert walk(h, limit) == want
    body = online(h)
    assert body["next"] is None
    assert body["users"]["alice"] == {
        "status": "busy",
        "metadata": {},
        "lastSeen": None,
        "connections": 1,
    }
    assert body["users"]["bob"]["connections"] == 2
    assert body["users"]["zoe"]["metadata"] == {"a": "<b>"}
    # the same object /presence/{userId} and /presence?userIds= answer
    single = json_body(h.http("/presence/zoe"))
    assert {"userId": "zoe", **body["users"]["zoe"]} == single
    first = online(h, "?limit=3")
    assert list(first["users"]) == want[:3]
    assert base64.urlsafe_b64decode(first["next"] + "==").decode() == "alice"


def test_prefix_narrows_the_listing_and_pages_within_it() -> None:
    h = Harness()
    for name in ["ann", "anna", "annie", "bob", "an", "ba"]:
        connected(h, name)
    assert walk(h, 2, prefix="ann") == ["ann", "anna", "annie"]
    assert walk(h, 1, prefix="b") == ["ba", "bob"]
    assert online(h, "?prefix=zz") == {"users": {}, "next": None}
    # a cursor from before the prefix's range starts at the prefix
    cursor = base64.urlsafe_b64encode(b"a").decode()
    assert list(online(h, f"?prefix=b&cursor={cursor}")["users"]) == ["ba", "bob"]
    everyone = sorted(["ann", "anna", "annie", "bob", "an", "ba"])
    assert list(online(h, "?prefix=")["users"]) == everyone


def test_a_user_leaving_stays_listed_through_the_grace_then_disappears() -> None:
    h = Harness(offline_grace=5)
    alice, _bob = connected(h, "alice"), connected(h, "bob")
    carol = connected(h, "carol")
    alice.drop()  # abrupt: the grace holds her
    carol.send({"type": "DISCONNECT"})  # clean: gone at once
    h.flush()
    users = online(h)["users"]
    assert list(users) == ["alice", "bob"]
    assert users["alice"]["connections"] == 0 and users["alice"]["status"] == "online"
    h.advance(6)
    assert list(online(h)["users"]) == ["bob"]


def test_empty_and_a_user_named_online() -> None:
    h = Harness()
    assert online(h) == {"users": {}, "next": None}
    connected(h, "online")
    assert list(online(h)["users"]) == ["online"]  # /presence/online is the listing
    body = json_body(h.http("/presence?userIds=online"))  # the user, looked up
    assert body["users"]["online"]["status"] == "online"
    assert h.http("/presence/online/x").status == 404


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?limit=0", "INVALID_LIMIT"),
        ("?limit=1001", "INVALID_LIMIT"),
        ("?limit=x", "INVALID_LIMIT"),
        ("?limit=1&limit=2", "INVALID_LIMIT"),
        ("?cursor=%%%", "INVALID_CURSOR"),
        ("?cursor=" + base64.urlsafe_b64encode(b"has space").decode(), "INVALID_CURSOR"),
        ("?cursor=" + base64.urlsafe_b64encode(b"\xff\xfe").decode(), "INVALID_CURSOR"),
        ("?cursor=a&cursor=b", "INVALID_CURSOR"),
        ("?prefix=a%20b", "INVALID_PREFIX"),
        ("?prefix=%ff", "INVALID_PREFIX"),
        ("?prefix=" + "x" * 129, "INVALID_PREFIX"),
    ],
)
def test_bad_queries_get_a_clear_json_error(query: str, code: str) -> None:
    h = Harness()
    connected(h, "alice")
    answer = h.http("/presence/online" + query)
    assert answer.status == 400
    body = json_body(answer)
    assert body["error"] == code and body["message"]
    assert online(h)["users"].keys() == {"alice"}  # and the daemon goes on serving


def test_limits_at_the_edges() -> None:
    h = Harness()
    for i in range(3):
        connected(h, f"u{i}")
    assert len(online(h, "?limit=1000")["users"]) == 3
    assert len(online(h, "?limit=1")["users"]) == 1


def test_online_and_stats_follow_the_presence_access_rule() -> None:
    h = Harness(api_token=API)
    connected(h, "alice")
    for path in ("/presence/online", "/stats"):
        assert h.http(path).status == 401
        assert h.http(path, {"Authorization": "Bearer wrong"}).status == 401
        assert h.http(path, BEARER).status == 200
    assert list(online(h, "", BEARER)["users"]) == ["alice"]
    assert Harness().http("/stats").status == 200  # no token configured: open


def test_stats_are_numbers_derived_from_the_registry() -> None:
    h = Harness()
    alice, _bob = connected(h, "alice"), connected(h, "bob")
    alice.send({"type": "HEARTBEAT"})
    alice.send({"type": "PRESENCE_UPDATE", "payload": {"status": "busy"}})
    alice.send_frame(b"not json")
    h.flush()
    body = json_body(h.http("/stats"))
    assert body["connections"] == 2 and body["usersOnline"] == 2
    assert body["timestamp"].endswith("Z")
    m = body["metrics"]
    assert m["ws_connections_current"] == 2
    assert m["ws_connections_total"] == h.sample("ws_connections_total")
    assert m["ws_messages_total"]["HEARTBEAT"] == 1
    assert m["ws_messages_total"]["PRESENCE_UPDATE"] == 1
    assert m["ws_errors_total"]["invalid_message"] == h.error_count("invalid_message") >= 1
    assert m["ws_latency_seconds"]["count"] == h.sample("ws_latency_seconds_count") >= 2
    assert m["ws_latency_seconds"]["sum"] >= 0
    assert m["presence_users_online"] == 2
    assert m["presence_transitions_total"]["busy"] == 1
    assert not any(name.startswith(("process_", "python_")) for name in m)
    # every ws_* / presence_* family of /metrics is here
    exposition = h.http("/metrics").body.decode()
    families = set(re.findall(r"^# TYPE ((?:ws|presence)_\w+) (\w+)", exposition, re.M))
    for name, kind in families:
        key = name.removesuffix("_total") + "_total" if kind == "counter" else name
        assert key in m, key

    def numbers(value: Any) -> bool:
        if isinstance(value, dict):
            return all(numbers(v) for v in value.values())
        return isinstance(value, int | float) and not isinstance(value, bool)

    assert numbers(m)


def test_dashboard_is_404_unless_enabled() -> None:
    answer = Harness().http("/dashboard")
    assert answer.status == 404 and json_body(answer)["error"] == "NOT_FOUND"


def test_dashboard_page_its_policy_and_nothing_external() -> None:
    h = Harness(dashboard=True)
    answer = h.http("/dashboard")
    assert answer.status == 200
    assert header(answer, "content-type") == "text/html; charset=utf-8"
    page = answer.body
    if b"transfer-encoding: chunked" in answer.response_headers.lower():
        page = h.daemon.site.resource.children[b"dashboard"].page
    assert b"<canvas" in page
    policy = dict(
        [*part.split(" ", 1), ""][:2]
        for part in (p.strip() for p in header(answer, "content-security-policy").split(";"))
    )
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in " ".join(policy.values())
    (script,) = re.findall(rb"<script>(.*?)</script>", page, re.S)
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["style-src"].startswith("'sha256-")
    # self-contained: no script, style or font from anywhere, no markup built from text
    assert not re.search(rb"<(script|link|img|iframe)[^>]*\s(src|href)=", page)
    assert b"http://" not in page and b"https://" not in page and b"@import" not in page
    assert b"innerHTML" not in page and b"insertAdjacentHTML" not in page
    assert header(answer, "x-content-type-options") == "nosniff"
    assert h.http("/dashboard/x").status == 404
