from __future__ import annotations

import pytest

from presence.core.origins import OriginPolicy, parse_origins


def test_parse() -> None:
    assert parse_origins("https://App.example.com/, null") == ("https://app.example.com", "null")
    assert parse_origins("*") == ("*",)
    for bad in ("", "ftp://x", "app.example.com", "https://a.com/path", "https://a.com:x"):
        with pytest.raises(ValueError):
            parse_origins(bad)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (None, True),
        ("", True),
        ("https://app.example.com", True),
        ("https://APP.example.com:443", True),
        ("https://app.example.com:8443", False),
        ("http://app.example.com", False),
        ("https://a.b.example.com", True),
        ("https://example.com", False),
        ("https://evil.com", False),
        ("https://app.example.com.evil.com", False),
        ("https://evilexample.com", False),
        ("http://localhost:5173", True),
        ("http://localhost:3000", True),
        ("null", False),
        ("file:///home/x.html", False),
        ("not a url", False),
        ("https://[::1", False),
    ],
)
def test_policy(origin: str | None, allowed: bool) -> None:
    policy = OriginPolicy(
        parse_origins("https://app.example.com,https://*.b.example.com,http://localhost:*")
    )
    assert policy.allows(origin) is allowed


def test_null_and_any() -> None:
    assert OriginPolicy(("null",)).allows("null")
    assert not OriginPolicy(("null",)).allows("https://a.com")
    assert OriginPolicy(("*",)).allows("null")
    assert OriginPolicy(("*",)).allows("https://whatever.test:1234")
