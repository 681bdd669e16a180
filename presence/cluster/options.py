"""The cluster's options: the --redis family for twistd, and the one frozen config they make."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core import wire
from ..options import number


def default_node_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class RedisURL:
    host: str
    port: int
    db: int
    password: str | None
    username: str | None
    tls: bool

    @classmethod
    def parse(cls, url: str, password: str | None = None) -> RedisURL:
        """redis://[[user]:password@]host[:port][/db] or rediss:// for TLS."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"--redis must be redis://host:port/db or rediss://..., not {url!r}")
        if not parts.hostname:
            raise ValueError(f"--redis {url!r} has no host")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"--redis {url!r}: the port and database must be numbers") from None
        if parts.password is not None and password is None:
            password = unquote(parts.password)
        username = unquote(parts.username) if parts.username else None
        return cls(parts.hostname, port, db, password, username, parts.scheme == "rediss")

    def describe(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True)
class ClusterConfig:
    redis: RedisURL
    node_name: str
    node_timeout: float = 15.0
    last_seen_ttl: int = 30 * 86400

    @property
    def reply_timeout(self) -> float:
        """How long a Redis reply may take before the link is dropped: the detection time."""
        return max(0.5, min(5.0, self.node_timeout / 3))

    @property
    def max_backoff(self) -> float:
        return max(0.5, min(5.0, self.node_timeout / 2))


CLUSTER_OPTIONS: list[Sequence[Any]] = [
    [
        "redis",
        None,
        None,
        "Cluster on this Redis: redis://[:password@]host:port/db, or rediss:// for TLS. "
        "Without it, presence lives in this process only.",
    ],
    ["redis-password-file", None, None, "Read the Redis password from this file."],
    [
        "node-name",
        None,
        None,
        "This node's name in the cluster; keep it stable across restarts (default: hostname-pid).",
    ],
    [
        "node-timeout",
        None,
        15.0,
        "Seconds after which a silent node is taken for dead and its connections end.",
        number(float, 0.5, "--node-timeout"),
    ],
    [
        "last-seen-ttl",
        None,
        30 * 86400.0,
        "Seconds Redis keeps an offline user's lastSeen.",
        number(float, 1, "--last-seen-ttl"),
    ],
]


def cluster_config(options: Mapping[str, Any]) -> ClusterConfig | None:
    """The cluster's part of the command line, checked once (ValueError: the one-line
    message); None without --redis. The password file is read here, once."""
    if not options["redis"]:
        for name in ("redis-password-file", "node-name"):
            if options[name]:
                raise ValueError(f"--{name} needs --redis")
        return None
    password = None
    path = options["redis-password-file"]
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                password = f.read().strip() or None  # an empty file: no password
        except OSError as e:
            raise ValueError(f"--redis-password-file: cannot read {path!r}: {e.strerror}") from None
    url = RedisURL.parse(options["redis"], password)
    name = options["node-name"]
    if name is not None and (not name or "#" in name or not wire.valid_user_id(name)):
        raise ValueError(f"--node-name {name!r}: printable, no spaces, no '#'")
    return ClusterConfig(
        redis=url,
        node_name=name or default_node_name(),
        node_timeout=options["node-timeout"],
        last_seen_ttl=max(1, int(options["last-seen-ttl"])),
    )
