"""A per-connection token bucket. Pure: time comes in as ``now``.

``MSGS/SECONDS``: a full bucket holds MSGS messages and refills at MSGS per SECONDS. A
message over the limit is refused (the caller answers RATE_LIMITED and drops it); the
refusals are counted in a second bucket that drains at the same rate, and once a client
has sent more than 3x the limit without slowing down (2x MSGS refusals outstanding) the
verdict is EXCEEDED and the caller closes the connection.
"""

from __future__ import annotations

import math
from typing import Final

ALLOWED: Final = 0
LIMITED: Final = 1
EXCEEDED: Final = 2

OVERRUN_FACTOR: Final = 3  # closed after 3x the limit


def parse_rate(text: str) -> tuple[int, float]:
    """``"20/10"`` -> (20, 10.0); ValueError with a readable message otherwise."""
    messages_text, slash, seconds_text = text.partition("/")
    try:
        if not slash:
            raise ValueError
        messages = int(messages_text)
        seconds = float(seconds_text)
    except ValueError:
        raise ValueError(f"must look like MSGS/SECONDS (e.g. 20/10), not {text!r}") from None
    if messages < 1 or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"needs MSGS >= 1 and SECONDS > 0, not {text!r}")
    return messages, seconds


class TokenBucket:
    __slots__ = ("capacity", "excess", "limit", "rate", "stamp", "tokens")

    def __init__(self, messages: int, seconds: float, now: float) -> None:
        self.capacity = float(messages)
        self.rate = messages / seconds
        self.tokens = self.capacity
        self.excess = 0.0
        self.limit = (OVERRUN_FACTOR - 1) * self.capacity
        self.stamp = now

    def take(self, now: float) -> int:
        """ALLOWED, LIMITED (refuse this one) or EXCEEDED (close the connection)."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.stamp = now
            refill = elapsed * self.rate
            self.tokens = min(self.capacity, self.tokens + refill)
            if self.excess:
                self.excess = max(0.0, self.excess - refill)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return ALLOWED
        self.excess += 1.0
        return EXCEEDED if self.excess > self.limit else LIMITED
