"""Webhooks, pure: the body, the Standard Webhooks signature (checked by the standardwebhooks
library itself), the secret's two forms and the retry schedule."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from presence.core import webhooks, wire
from presence.core.model import UserView
from presence.core.webhooks import Event

SECRET = b"0123456789abcdef0123456789abcdef"
T = 1_700_000_000.25


def event(kind: str = "user.online", data: dict[str, object] | None = None) -> Event:
    return Event("msg_1", kind, "u:alice", T, data or {"userId": "alice"})


def test_event_types_are_the_issues_list() -> None:
    assert webhooks.EVENT_TYPES == (
        "user.online",
        "user.offline",
        "user.updated",
        "room.joined",
        "room.left",
        "room.occupied",
        "room.vacated",
    )


def test_the_body_is_compact_json_with_the_wires_timestamp() -> None:
    body = webhooks.body(event(data={"userId": "alice", "metadata": {"é": 1}}))
    assert body == (
        b'{"type":"user.online","timestamp":"2023-11-14T22:13:20.250Z",'
        b'"data":{"userId":"alice","metadata":{"\xc3\xa9":1}}}'
    )
    assert json.loads(body)["timestamp"] == wire.iso(T)


def test_user_data_is_what_a_presence_diff_says() -> None:
    view = UserView("offline", {}, T, 0)
    diff = json.loads(_diff(view))
    data = webhooks.user_data("alice", view)
    assert data == {k: v for k, v in diff.items() if k not in ("type", "timestamp")}
    assert data == {
        "userId": "alice",
        "status": "offline",
        "metadata": {},
        "lastSeen": wire.iso(T),
        "connections": 0,
    }
    online = webhooks.user_data("bob", UserView("busy", {"a": 1}, None, 2))
    assert online["lastSeen"] is None and online["connections"] == 2


def _diff(view: UserView) -> bytes:
    from presence.hub import diff_message  # the hub's own encoder of PRESENCE_DIFF

    return diff_message("alice", view, T + 1)


def test_room_data() -> None:
    assert webhooks.member_data("doc:1", "alice", "online", {"c": 1}, 2) == {
        "room": "doc:1",
        "userId": "alice",
        "member": {"status": "online", "metadata": {"c": 1}, "connections": 2},
    }
    assert webhooks.room_data("doc:1") == {"room": "doc:1"}
    joined = webhooks.member_event("room.joined", "doc:1", "alice", "online", {}, 1, T)
    assert joined.key == "u:alice"  # ordered with the user's own events
    assert webhooks.room_event("room.vacated", "doc:1", T).key == "r:doc:1"


def test_ids_are_unique_and_prefixed() -> None:
    ids = {webhooks.new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("msg_") for i in ids)


@pytest.mark.parametrize("form", ["raw", "whsec"])
def test_the_signature_verifies_with_the_standardwebhooks_library(form: str) -> None:
    body = webhooks.body(event())
    now = int(time.time())
    headers = webhooks.headers(SECRET, "msg_1", now, body)
    as_text = {k.decode(): v.decode() for k, v in headers.items()}
    assert as_text["Content-Type"] == "application/json"
    assert as_text["webhook-timestamp"] == str(now)
    secret: str | bytes = SECRET
    if form == "whsec":
        secret = "whsec_" + base64.b64encode(SECRET).decode()
    assert standardwebhooks.Webhook(secret).verify(body, as_text) == json.loads(body)
    expected = standardwebhooks.Webhook(SECRET).sign(
        "msg_1", datetime.fromtimestamp(now, tz=UTC), body.decode()
    )
    assert webhooks.sign(SECRET, "msg_1", now, body) == expected


def test_a_changed_body_id_or_secret_does_not_verify() -> None:
    body = webhooks.body(event())
    now = int(time.time())
    headers = {k.decode(): v.decode() for k, v in webhooks.headers(SECRET, "m", now, body).items()}
    hook = standardwebhooks.Webhook(SECRET)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        hook.verify(body.replace(b"alice", b"bob"), headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        hook.verify(body, {**headers, "webhook-id": "other"})
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET[::-1]).verify(body, headers)


def test_parse_secret_forms() -> None:
    assert webhooks.parse_secret(SECRET + b"\n") == SECRET
    decoded = bytes(range(24))
    assert webhooks.parse_secret(b"whsec_" + base64.b64encode(decoded) + b"\n") == decoded
    unpadded = base64.b64encode(bytes(range(25))).rstrip(b"=")
    assert webhooks.parse_secret(b"whsec_" + unpadded) == bytes(range(25))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"short", "at least 32 bytes"),
        (b"   \n", "at least 32 bytes"),
        (b"whsec_!!!not-base64!!!", "not valid base64"),
        (b"whsec_" + base64.b64encode(b"x" * 10), "at least 24 bytes"),
    ],
)
def test_parse_secret_refuses(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        webhooks.parse_secret(raw)
    assert "\n" not in str(e.value)


def test_the_backoff_ceiling_doubles_from_one_second_to_five_minutes() -> None:
    ceilings = [webhooks.backoff(n, 1.0) for n in range(12)]
    assert ceilings == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert webhooks.backoff(10**6, 1.0) == 300  # no overflow however many attempts


@given(st.integers(min_value=0, max_value=10**9), st.floats(min_value=0, max_value=1))
def test_backoff_is_full_jitter_under_the_ceiling(attempt: int, rand: float) -> None:
    delay = webhooks.backoff(attempt, rand)
    ceiling = min(300.0, 2.0 ** min(attempt, 16))
    assert 0 <= delay <= ceiling
    assert delay == pytest.approx(rand * ceiling)


@given(st.integers(min_value=0, max_value=40), st.floats(min_value=0, max_value=1))
def test_backoff_never_shrinks_with_more_attempts(attempt: int, rand: float) -> None:
    assert webhooks.backoff(attempt + 1, rand) >= webhooks.backoff(attempt, rand)
