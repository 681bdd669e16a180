"""presence.core.policy: when an end is offline at once, and the connection caps. Pure."""

from __future__ import annotations

import pytest

from presence.core import wire
from presence.core.policy import OverCapacity, at_capacity, ends_at_once, over_user_cap


@pytest.mark.parametrize(
    ("said_goodbye", "closed_by_server", "remote_code", "at_once"),
    [
        # DISCONNECT: a goodbye, whoever then closed and with whatever code.
        (True, True, None, True),
        (True, False, wire.CLOSE_NORMAL, True),
        (True, True, wire.CLOSE_HEARTBEAT_TIMEOUT, True),
        # The client's own close 1000.
        (False, False, wire.CLOSE_NORMAL, True),
        # Any other client close: going away (a tab closed), no code, an error code.
        (False, False, wire.CLOSE_GOING_AWAY, False),
        (False, False, None, False),
        (False, False, wire.CLOSE_PROTOCOL_ERROR, False),
        (False, False, 4000, False),
        # The server closed (a timeout, a refusal, shutdown): the client's echo of 1000 is
        # no goodbye.
        (False, True, wire.CLOSE_NORMAL, False),
        (False, True, wire.CLOSE_HEARTBEAT_TIMEOUT, False),
        (False, True, None, False),
    ],
)
def test_ends_at_once_only_on_a_goodbye(
    said_goodbye: bool, closed_by_server: bool, remote_code: int | None, at_once: bool
) -> None:
    assert ends_at_once(said_goodbye, closed_by_server, remote_code) is at_once


@pytest.mark.parametrize(
    ("open_connections", "cap", "full"),
    [
        (0, 0, False),  # 0: no cap
        (10**6, 0, False),
        (0, 1, False),
        (1, 1, True),
        (1, 2, False),
        (2, 2, True),
        (3, 2, True),  # over it (the cap was lowered, or connections raced): still full
    ],
)
def test_at_capacity(open_connections: int, cap: int, full: bool) -> None:
    assert at_capacity(open_connections, cap) is full


@pytest.mark.parametrize(
    ("rank", "cap", "over"),
    [
        (1, 0, False),  # 0: no cap
        (10**6, 0, False),
        (1, 1, False),
        (2, 1, True),
        (16, 16, False),
        (17, 16, True),
        (18, 16, True),
    ],
)
def test_over_user_cap(rank: int, cap: int, over: bool) -> None:
    assert over_user_cap(rank, cap) is over


def test_racing_connections_only_those_ranked_past_the_cap_are_refused() -> None:
    """Each connection's rank is the user's count right after it registered."""
    cap = 3
    refused = [rank for rank in range(1, 7) if over_user_cap(rank, cap)]
    assert refused == [4, 5, 6]


def test_over_capacity_is_an_exception_with_its_reason() -> None:
    error = OverCapacity("too many connections for this user")
    assert isinstance(error, Exception) and str(error) == "too many connections for this user"
