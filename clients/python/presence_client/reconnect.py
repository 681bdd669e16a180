"""When to reconnect, and when not: the backoff schedule, what a close code means, when a
token needs refreshing. Pure: time is passed in as ``now``, randomness as ``rand``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

FIRST_DELAY: Final = 1.0  # the first retry comes within this many seconds
MAX_DELAY: Final = 30.0
RESET_AFTER: Final = 10.0  # a connection open this long resets the schedule
REFRESH_LEAD: Final = 60.0  # refresh a token at most this long before its exp

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_POLICY_VIOLATION: Final = 1008

Verdict = Literal["retry", "new-token", "stop"]


@dataclass
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in
    [0, min(cap, first * 2**n)]. ``opened(now)`` and ``closed(now)`` reset it once a
    connection has stayed open ``reset_after`` seconds."""

    first: float = FIRST_DELAY
    cap: float = MAX_DELAY
    reset_after: float = RESET_AFTER
    attempt: int = 0
    opened_at: float | None = None

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.first * 2.0 ** min(attempt, 64))

    def next_delay(self, rand: Callable[[], float]) -> float:
        """The wait before the next attempt (``rand()`` is uniform in [0, 1))."""
        delay = rand() * self.ceiling(self.attempt)
        self.attempt += 1
        return delay

    def opened(self, now: float) -> None:
        self.opened_at = now

    def closed(self, now: float) -> None:
        if self.opened_at is not None and now - self.opened_at >= self.reset_after:
            self.attempt = 0
        self.opened_at = None


def token_refused(code: int | None, reason: str | None) -> bool:
    """A 1008 for the token (the server's reasons: ``missing token``, ``token ...``), not
    for a rate limit or a client that does not read."""
    if code != CLOSE_POLICY_VIOLATION or not reason:
        return False
    return reason == "missing token" or reason.startswith("token ")


def after_close(code: int | None, reason: str | None, can_get_token: bool) -> Verdict:
    """What an unplanned close means: 1002 (missing/invalid userId) is final; a refused
    token is final unless ``get_token`` can produce a new one; anything else is retried."""
    if code == CLOSE_PROTOCOL_ERROR:
        return "stop"
    if token_refused(code, reason):
        return "new-token" if can_get_token else "stop"
    return "retry"


def after_refused_handshake(status: int) -> Verdict:
    """An HTTP answer instead of a WebSocket: 403 (origin not allowed) is final, others
    (503 too many connections, a proxy's 502) are retried."""
    return "stop" if status in (400, 401, 403, 404) else "retry"


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (the server does that)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def refresh_at(expires: float, now: float) -> float:
    """When to fetch a new token for one that expires at ``expires`` (seen at ``now``):
    a fifth of its remaining life before, at most ``REFRESH_LEAD`` seconds before."""
    return expires - min(REFRESH_LEAD, max(0.0, expires - now) / 5)


def valid_name(name: str) -> bool:
    """The daemon's rule for a userId and a room name."""
    return 0 < len(name) <= 128 and name.isprintable() and not any(c.isspace() for c in name)
