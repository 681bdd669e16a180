from __future__ import annotations

import pytest

from presence.core.ratelimit import ALLOWED, EXCEEDED, LIMITED, TokenBucket, parse_rate


def test_parse_rate() -> None:
    assert parse_rate("20/10") == (20, 10.0)
    assert parse_rate("1000000/1") == (1_000_000, 1.0)
    for bad in ("20", "x/1", "0/1", "1/0", "1/-1", "1/inf", "1/nan", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_burst_then_refused_then_closed() -> None:
    bucket = TokenBucket(20, 10, now=0.0)
    verdicts = [bucket.take(0.0) for _ in range(61)]
    assert verdicts[:20] == [ALLOWED] * 20
    assert verdicts[20:60] == [LIMITED] * 40
    assert verdicts[60] == EXCEEDED  # the 61st message in a burst is past 3x the limit


def test_recovery() -> None:
    bucket = TokenBucket(20, 10, now=0.0)
    for _ in range(30):
        bucket.take(0.0)
    assert bucket.take(0.0) == LIMITED
    assert bucket.take(0.5) == ALLOWED  # one token back after half a second (2/s)
    assert bucket.take(0.5) == LIMITED
    # After a full window the client may burst again and the refusals are forgotten.
    assert [bucket.take(20.0) for _ in range(20)] == [ALLOWED] * 20
    assert bucket.excess == 0


def test_steady_client_within_the_rate_is_never_refused() -> None:
    bucket = TokenBucket(20, 10, now=0.0)
    assert all(bucket.take(i * 0.5) == ALLOWED for i in range(1000))
