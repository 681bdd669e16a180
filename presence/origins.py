"""--allowed-origins: parse the operator's patterns and turn them into Autobahn's policy.

Pure. A pattern is ``*`` (any origin), ``null`` (the opaque origin of sandboxed frames and
file:// pages) or ``scheme://host[:port]`` where ``*`` in the host or port matches anything
(``https://*.example.com``). Without a port a pattern means the scheme's default port:
Autobahn matches the origin as ``scheme://host:port``, so ``https://app.example.com``
becomes ``https://app.example.com:443`` (written as is, it would never match).

A request without an ``Origin`` header is not a browser page and is not refused here (any
non-browser client can send whatever Origin it likes; authentication is what stops it).
"""

from __future__ import annotations

import re
from typing import Final

ANY: Final = "*"
NULL: Final = "null"
DEFAULT_PORTS: Final = {"http": "80", "https": "443"}
_PATTERN = re.compile(r"^(https?)://([a-z0-9*.\-]+)(?::([0-9]+|\*))?$")


def parse_origins(text: str) -> tuple[str, ...]:
    """Comma-separated patterns, validated and lower-cased; ValueError for a bad one."""
    patterns = []
    for raw in text.split(","):
        pattern = raw.strip().lower().rstrip("/")
        if not pattern:
            continue
        if pattern not in (ANY, NULL) and not _PATTERN.match(pattern):
            raise ValueError(
                f"{raw.strip()!r} is not an origin pattern like https://app.example.com, "
                "https://*.example.com:8443, null or *"
            )
        patterns.append(pattern)
    if not patterns:
        raise ValueError("needs at least one origin pattern")
    return tuple(dict.fromkeys(patterns))


def autobahn_policy(patterns: tuple[str, ...]) -> tuple[list[str], bool]:
    """(allowedOrigins wildcards for Autobahn, allowNullOrigin)."""
    allow_null = NULL in patterns or ANY in patterns
    wildcards = []
    for pattern in patterns:
        if pattern == NULL:
            continue
        if pattern == ANY:
            wildcards.append(ANY)
            continue
        match = _PATTERN.match(pattern)
        assert match is not None  # validated by parse_origins
        scheme, host, port = match.groups()
        wildcards.append(f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}")
    return wildcards, allow_null
