"""The Python client's reconnect rules: backoff schedule, close codes, token expiry."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from presence_client.reconnect import (
    Backoff,
    after_close,
    after_refused_handshake,
    refresh_at,
    token_expiry,
    valid_name,
)


def test_full_jitter_doubles_up_to_the_cap() -> None:
    backoff = Backoff()
    ceilings = [backoff.next_delay(lambda: 1.0) for _ in range(8)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert Backoff().next_delay(lambda: 0.0) == 0.0


@given(st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=40))
def test_every_delay_is_within_its_window(rands: list[float]) -> None:
    backoff = Backoff()
    for n, r in enumerate(rands):
        delay = backoff.next_delay(lambda r=r: r)  # type: ignore[misc]
        assert 0 <= delay <= min(30.0, 2.0**n)
    assert backoff.attempt == len(rands)


def test_the_first_retry_comes_within_a_second() -> None:
    assert Backoff().next_delay(lambda: 0.999) < 1.0


def test_a_connection_that_stayed_open_resets_the_schedule() -> None:
    backoff = Backoff()
    for _ in range(5):
        backoff.next_delay(lambda: 0.5)
    backoff.opened(100.0)
    backoff.closed(103.0)  # open 3 s: a server that accepts and drops keeps backing off
    assert backoff.attempt == 5
    backoff.opened(200.0)
    backoff.closed(210.0)
    assert backoff.attempt == 0
    backoff.closed(500.0)  # closed without having opened: no reset
    assert backoff.attempt == 0


@pytest.mark.parametrize(
    ("code", "reason", "can_get_token", "verdict"),
    [
        (1002, "missing userId", True, "stop"),
        (1002, "invalid userId", False, "stop"),
        (1008, "token signature invalid", False, "stop"),
        (1008, "token signature invalid", True, "new-token"),
        (1008, "token expired", True, "new-token"),
        (1008, "token expired", False, "stop"),
        (1008, "missing token", False, "stop"),
        (1008, "rate limit exceeded", False, "retry"),
        (1008, "send buffer full: client is not reading", False, "retry"),
        (1001, "server shutting down", False, "retry"),
        (1006, "", False, "retry"),
        (1011, "internal server error", False, "retry"),
        (1013, "too many connections for this user", False, "retry"),
        (4408, "heartbeat timeout", False, "retry"),
        (None, None, False, "retry"),
    ],
)
def test_what_a_close_means(
    code: int | None, reason: str | None, can_get_token: bool, verdict: str
) -> None:
    assert after_close(code, reason, can_get_token) == verdict


def test_refused_handshakes() -> None:
    assert after_refused_handshake(403) == "stop"  # origin not allowed
    assert after_refused_handshake(503) == "retry"  # too many connections
    assert after_refused_handshake(502) == "retry"


def jwt_with(claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


def test_token_expiry_is_read_without_verifying() -> None:
    assert token_expiry(jwt_with({"sub": "a", "exp": 1700000000})) == 1700000000.0
    assert token_expiry(jwt_with({"sub": "a", "exp": 1.5})) == 1.5
    assert token_expiry(jwt_with({"sub": "a"})) is None
    assert token_expiry(jwt_with({"exp": True})) is None
    assert token_expiry(jwt_with(["exp"])) is None
    assert token_expiry("opaque-token") is None
    assert token_expiry("a.!!!.c") is None


def test_refresh_comes_before_exp() -> None:
    assert refresh_at(1000.0, 0.0) == 940.0  # a long token: a minute before
    assert refresh_at(1000.0, 990.0) == 998.0  # a short one: a fifth of its life before
    assert refresh_at(1000.0, 1005.0) == 1000.0  # already past: now


def test_names_follow_the_daemon_rule() -> None:
    assert valid_name("doc:42") and valid_name("x" * 128)
    assert not valid_name("") and not valid_name("x" * 129)
    assert not valid_name("a b") and not valid_name("a\nb") and not valid_name("a\x00")
