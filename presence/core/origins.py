"""--allowed-origins: parse the operator's patterns and decide an Origin header with them.

Pure. A pattern is ``*`` (any origin), ``null`` (the opaque origin of sandboxed frames and
file:// pages) or ``scheme://host[:port]`` where ``*`` in the host or port matches anything
(``https://*.example.com``). Without a port a pattern means the scheme's default port, so
``https://app.example.com`` matches the origin ``https://app.example.com`` and
``https://app.example.com:443`` but not ``https://app.example.com:8443``.

A request without an ``Origin`` header is not a browser page and is not refused here (any
non-browser client can send whatever Origin it likes; authentication is what stops it).
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

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


class OriginPolicy:
    """Decides an ``Origin`` header against the patterns.

    Checked in the protocol's onConnect so a refusal is an HTTP 403 (Autobahn's own origin
    check answers 400) and happens before anything reaches the model."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.any = ANY in patterns
        self.null = NULL in patterns or self.any
        self._regexes = []
        for pattern in patterns:
            if pattern in (ANY, NULL):
                continue
            match = _PATTERN.match(pattern)
            assert match is not None  # validated by parse_origins
            scheme, host, port = match.groups()
            full = f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}"
            self._regexes.append(re.compile("^" + re.escape(full).replace(r"\*", ".*") + "$"))

    def allows(self, origin: str | None) -> bool:
        """No Origin header (not a browser page) is allowed; ``null`` and ``file:`` pages
        only when ``null`` (or ``*``) is listed."""
        if not origin:
            return True
        if self.any:
            return True
        origin = origin.strip().lower()
        if origin == NULL or origin.startswith("file:"):
            return self.null
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        scheme, host = parts.scheme, parts.hostname
        if scheme not in DEFAULT_PORTS or not host:
            return False
        key = f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}"
        return any(regex.match(key) for regex in self._regexes)
